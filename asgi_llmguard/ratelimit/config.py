"""`RateLimitConfig` and `create_limiter`: the algorithm and the store, chosen by name and URI;
`RateLimitOptions`: every setting of `RateLimitMiddleware`, as the config file's
``[rate_limit]`` section decodes it."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, cast

import msgspec

from asgi_llmguard._redis import is_cluster, redis_client
from asgi_llmguard.errors import ConfigurationError
from asgi_llmguard.policy import RateLimit
from asgi_llmguard.ratelimit._store import parse_storage
from asgi_llmguard.ratelimit.base import Limiter
from asgi_llmguard.ratelimit.gcra import MemoryGcra, RedisGcra
from asgi_llmguard.ratelimit.windows import WINDOW_ALGORITHMS, WindowLimiter

#: Every algorithm name `create_limiter` accepts; ``"token-bucket"`` is another name for GCRA.
ALGORITHMS = frozenset({"gcra", "token-bucket", *WINDOW_ALGORITHMS})


class RateLimitConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How the limiter stores its buckets.

    - ``algorithm``: ``"gcra"`` (token bucket, the default), ``"fixed-window"``,
      ``"moving-window"`` or ``"sliding-window-counter"``.
    - ``storage``: ``"memory://"`` (one process) or ``"redis://host:port/db"`` (also
      ``rediss://``, ``redis+cluster://`` and ``async+redis://``), shared by every worker and
      replica; see `asgi_llmguard._redis` for TLS options in the URL.
    - ``redis_timeout``: seconds a Redis call may take, connecting included, before it counts
      as a store failure and the limit's ``on_error`` policy applies.
    - ``key_prefix``: prefix of every Redis key, so several gateways can share one server.
    - ``max_memory_keys``: hard cap on in-memory token buckets (see `MemoryGcra`).
    - ``redis_max_connections``: the Redis connection pool's size per process.
    """

    algorithm: str = "gcra"
    storage: str = "memory://"
    redis_timeout: float = 0.25
    key_prefix: str = "llmguard:rl:"
    max_memory_keys: int = 100_000
    redis_max_connections: int = 64

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ConfigurationError(
                f"algorithm must be one of {', '.join(sorted(ALGORITHMS))}, not {self.algorithm!r}"
            )
        parse_storage(self.storage)
        timeout = self.redis_timeout
        if isinstance(timeout, bool) or not isinstance(timeout, int | float):
            raise ConfigurationError(f"redis_timeout must be seconds, not {timeout!r}")
        if not 0 < timeout < math.inf:
            raise ConfigurationError(f"redis_timeout must be positive seconds, not {timeout!r}")
        for name in ("max_memory_keys", "redis_max_connections"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"{name} must be a positive integer, not {value!r}")
        if not isinstance(self.key_prefix, str):
            raise ConfigurationError("key_prefix must be a string")

    def __repr__(self) -> str:  # the storage URI may hold a password
        return (
            f"RateLimitConfig(algorithm={self.algorithm!r}, "
            f"storage={parse_storage(self.storage).where!r}, redis_timeout={self.redis_timeout!r})"
        )


class RateLimitOptions(RateLimitConfig, frozen=True, forbid_unknown_fields=True):
    """The settings of `RateLimitMiddleware` (its keyword arguments, apart from the ``limiter``
    and ``identity`` objects): the store's (`RateLimitConfig`) and these. The config file's
    ``[rate_limit]`` section is this struct.

    - ``limits``: gateway-wide `RateLimit` specs, applied to every request.
    - ``reserve_tokens``: admit a token-limited request only if the bucket holds its estimate.
    - ``default_max_output_tokens``: the output assumed when a request sets no maximum.
    - ``trusted_proxies``: peers whose ``X-Forwarded-For`` names the client.
    - ``max_key_specs``: how many distinct per-key limit sets are kept parsed.
    """

    limits: tuple[RateLimit, ...] = ()
    reserve_tokens: bool = False
    default_max_output_tokens: int = 1024
    trusted_proxies: tuple[str, ...] = ()
    max_key_specs: int = 10_000


def create_limiter(
    config: RateLimitConfig | None = None, *, clock: Callable[[], float] = time.monotonic
) -> Limiter:
    """Build the limiter ``config`` describes. Nothing connects until the first call.

    ``clock`` drives the in-memory token bucket only (tests move it by hand); Redis uses the
    server's clock and the ``limits`` strategies their own.
    """
    config = config or RateLimitConfig()
    target = parse_storage(config.storage)
    gcra = config.algorithm in ("gcra", "token-bucket")
    if target.kind == "memory":
        if gcra:
            return MemoryGcra(clock=clock, max_keys=config.max_memory_keys)
        from limits.aio.storage import MemoryStorage

        return WindowLimiter(config.algorithm, MemoryStorage())
    assert target.redis is not None
    client = redis_client(
        target.redis, timeout=config.redis_timeout, max_connections=config.redis_max_connections
    )
    if gcra:
        return RedisGcra(
            client, timeout=config.redis_timeout, prefix=config.key_prefix, where=target.where
        )
    from limits.aio.storage import RedisClusterStorage, RedisStorage

    # limits' redis-py bridge on our client: the same timeouts and retry policy, and one set of
    # connections per process for both algorithms. limits adds its own ":" after the prefix.
    prefix = config.key_prefix.rstrip(":")
    storage: RedisStorage
    if not is_cluster(client):
        options = cast(dict[str, Any], {"connection_pool": cast(Any, client).connection_pool})
        storage = RedisStorage(
            "async+" + target.url.split("://", 1)[0].replace("unix", "redis+unix") + "://",
            wrap_exceptions=True,
            implementation="redispy",
            key_prefix=prefix,
            **options,
        )
    else:
        # limits builds a cluster client of its own (nothing connects yet); ours replaces it,
        # and the scripts are registered again on ours.
        storage = RedisClusterStorage(
            "async+redis+cluster://" + target.where.split("://", 1)[1],
            wrap_exceptions=True,
            implementation="redispy",
            key_prefix=prefix,
        )
        bridge = cast(Any, storage.bridge)
        bridge.storage = client
        bridge.connection_getter = lambda _readonly: client
        bridge.register_scripts()
    return WindowLimiter(
        config.algorithm,
        storage,
        timeout=config.redis_timeout,
        where=target.where,
        client=client,
    )
