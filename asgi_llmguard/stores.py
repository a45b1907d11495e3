"""Shared-state stores chosen by URL, through one registry (as ``limits.storage_from_string``).

=====================================  ===========================================================
URL                                    store
=====================================  ===========================================================
``memory://`` (also ``memory``)        this process only
``redis://host:port/db``               one Redis server, shared by every worker and replica
``rediss://host:port/db``              the same over TLS (``?ssl_ca_certs=...`` and the
                                       ``ssl_certfile``, ``ssl_keyfile``, ``ssl_cert_reqs``
                                       options, in the URL or as keyword arguments)
``unix:///path/redis.sock?db=0``       Redis on a local socket
``redis+cluster://host:port``          a Redis Cluster (``rediss+cluster://`` over TLS), found
                                       from any one of its nodes
=====================================  ===========================================================

Every Redis store uses the one client policy of `asgi_llmguard._redis.redis_client`. The kinds:
``"budgets"`` (`budget_store`), ``"cooldowns"`` (`cooldown_store`) and ``"rate_limits"``
(`rate_limiter`); `store_from_url` takes the kind by name, and also builds ``"keys"``, the key
databases of `asgi_llmguard.keys.store_from_url` (``sqlite://``, ``postgresql://``).
"""

from __future__ import annotations

import urllib.parse
from typing import TYPE_CHECKING, Any, Literal

from asgi_llmguard._redis import REDIS_SCHEMES
from asgi_llmguard.errors import ConfigurationError

if TYPE_CHECKING:
    from asgi_llmguard.forward.cooldowns import CooldownPolicy, MemoryCooldowns
    from asgi_llmguard.ratelimit.base import Limiter
    from asgi_llmguard.usage.budgets import BudgetStore

__all__ = ["KINDS", "SCHEMES", "budget_store", "cooldown_store", "rate_limiter", "store_from_url"]

Kind = Literal["budgets", "cooldowns", "keys", "rate_limits"]
#: The kinds of store `store_from_url` builds.
KINDS: tuple[Kind, ...] = ("budgets", "cooldowns", "keys", "rate_limits")

#: URL scheme -> backend (``async+`` in front of a scheme is accepted too).
SCHEMES: dict[str, Literal["memory", "redis"]] = {
    "memory": "memory",
    **dict.fromkeys(REDIS_SCHEMES, "redis"),
}


def backend(url: str) -> Literal["memory", "redis"]:
    """The backend ``url`` names; raises `ConfigurationError` for any other."""
    if not isinstance(url, str):
        raise ConfigurationError(f"a store URL must be a string, not {type(url).__name__}")
    if url.strip().lower() == "memory":  # the bare word, as older configs spell it
        return "memory"
    scheme = urllib.parse.urlsplit(url).scheme.lower().removeprefix("async+")
    found = SCHEMES.get(scheme)
    if found is None:
        raise ConfigurationError(
            "a store URL must be memory://, redis://, rediss://, unix:// or redis+cluster://, "
            f"not a {scheme or 'scheme-less'} URL"
        )
    return found


def budget_store(url: str, **options: Any) -> BudgetStore:
    """The budget store ``url`` names. ``options`` go to the backend: ``prefix``, ``timeout``,
    ``grace``, ``clock``, ``max_connections`` and the ``ssl_*`` options for Redis (a memory
    store ignores those it has no use for)."""
    if backend(url) == "memory":
        from asgi_llmguard.usage.budgets.memory import MemoryBudgetStore

        return MemoryBudgetStore.from_url(url, **options)
    from asgi_llmguard.usage.budgets.redis import RedisBudgetStore

    return RedisBudgetStore.from_url(url, **options)


def cooldown_store(
    url: str, policy: CooldownPolicy | None = None, **options: Any
) -> MemoryCooldowns:
    """The cooldown store ``url`` names, applying ``policy``. ``options`` go to the backend:
    ``prefix``, ``refresh``, ``timeout``, ``clock``, ``max_connections`` and the ``ssl_*``
    options for Redis."""
    if backend(url) == "memory":
        from asgi_llmguard.forward.cooldowns.memory import MemoryCooldowns

        return MemoryCooldowns.from_url(url, policy, **options)
    from asgi_llmguard.forward.cooldowns.redis import RedisCooldowns

    return RedisCooldowns.from_url(url, policy, **options)


def rate_limiter(url: str, **options: Any) -> Limiter:
    """The rate limiter whose buckets live where ``url`` says; ``options`` are the other fields
    of `asgi_llmguard.ratelimit.RateLimitConfig` (``algorithm``, ``redis_timeout``,
    ``key_prefix``, ``redis_max_connections``, ...)."""
    backend(url)
    from asgi_llmguard.ratelimit.config import RateLimitConfig, create_limiter

    return create_limiter(RateLimitConfig(storage=url, **options))


def store_from_url(kind: Kind, url: str, **options: Any) -> Any:
    """The store of ``kind`` (one of `KINDS`) that ``url`` names; see `budget_store`,
    `cooldown_store` and `rate_limiter` for the options (a key store takes none)."""
    if kind == "budgets":
        return budget_store(url, **options)
    if kind == "cooldowns":
        return cooldown_store(url, **options)
    if kind == "rate_limits":
        return rate_limiter(url, **options)
    if kind == "keys":
        from asgi_llmguard.keys import store_from_url as key_store

        if options:
            raise TypeError(f"a key store takes no options: {', '.join(sorted(options))}")
        return key_store(url)
    raise ConfigurationError(f"unknown kind of store {kind!r}: one of {', '.join(KINDS)}")
