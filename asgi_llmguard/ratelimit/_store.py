"""Storage URIs, the Redis connection pool, and the guard every store call goes through."""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypeVar

import limits.errors

from asgi_llmguard.errors import ConfigurationError
from asgi_llmguard.ratelimit.base import FailureLog, LimiterStats, StoreUnavailable

if TYPE_CHECKING:
    import redis.asyncio

T = TypeVar("T")

_REDIS_SCHEMES = {"redis", "rediss", "async+redis", "async+rediss"}


@dataclass(frozen=True, slots=True)
class StorageTarget:
    kind: Literal["memory", "redis"]
    #: The URL redis-py takes (``async+`` removed); empty for memory.
    url: str
    #: Where the store is, for logs and ``repr``: scheme, host, port and db, never a password.
    where: str


def parse_storage(uri: str) -> StorageTarget:
    if not isinstance(uri, str):
        raise ConfigurationError(f"storage must be a URI string, not {type(uri).__name__}")
    parsed = urllib.parse.urlsplit(uri)
    scheme = parsed.scheme.lower()
    if scheme in ("memory", "async+memory"):
        return StorageTarget("memory", "", "memory://")
    if scheme in _REDIS_SCHEMES:
        try:
            host = parsed.hostname or "localhost"
            port = parsed.port or 6379
        except ValueError:
            raise ConfigurationError("storage URI has an invalid port") from None
        url = uri[len("async+") :] if scheme.startswith("async+") else uri
        plain = scheme.removeprefix("async+")
        return StorageTarget("redis", url, f"{plain}://{host}:{port}{parsed.path or ''}")
    raise ConfigurationError(
        f"storage must be 'memory://' or 'redis://host:port/db' (also 'rediss://', "
        f"'async+redis://'), not a {scheme or 'scheme-less'} URI"
    )


def redis_client(
    target: StorageTarget, *, timeout: float, max_connections: int
) -> redis.asyncio.Redis:
    """A client over a bounded pool with short timeouts and at most one immediate retry.

    redis-py retries three times with backoff by default: that would turn a 0.25 s budget into
    seconds. One immediate retry still rides over a pooled connection that went stale while
    Redis restarted. Waiting for a free pooled connection is bounded by the same timeout (the
    blocking pool), so a burst of traffic queues briefly instead of opening a connection per
    request, and a slow Redis cannot pile them up.
    """
    try:
        import redis.asyncio
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
    except ImportError:  # pragma: no cover - the redis extra
        raise ConfigurationError(
            "Redis storage needs redis-py: pip install 'asgi-llmguard[redis]'"
        ) from None
    try:
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            target.url,
            max_connections=max_connections,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1),
        )
    except ValueError:
        raise ConfigurationError(f"invalid Redis storage URI for {target.where}") from None
    return redis.asyncio.Redis.from_pool(pool)


def _store_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [TimeoutError, OSError, limits.errors.StorageError]
    try:
        import redis.exceptions

        errors.append(redis.exceptions.RedisError)
    except ImportError:  # pragma: no cover - the redis extra
        pass
    return tuple(errors)


class Guard:
    """Run a store call under the timeout; turn any store failure into `StoreUnavailable`.

    ``asyncio.timeout`` bounds the whole call, connection set-up and redis-py's retry included;
    only the guard's own timer becomes `TimeoutError`, so a caller's cancellation (a client that
    went away) still propagates as cancellation.
    """

    __slots__ = ("_errors", "log", "stats", "timeout", "where")

    def __init__(self, where: str, timeout: float, stats: LimiterStats) -> None:
        self.where = where
        self.timeout = timeout
        self.stats = stats
        self.log = FailureLog(where)
        self._errors = _store_errors()

    async def __call__(self, op: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(self.timeout):
                result = await op
        except self._errors as exc:
            raise self._unavailable(exc) from exc
        if self.log.failing:
            self.log.succeeded()
        return result

    async def bounded(self, op: Awaitable[T]) -> T:
        """As calling the guard, for an ``op`` that already fails with `TimeoutError` after
        ``timeout`` seconds on its own (a `ScriptBatcher` call): no second timer."""
        try:
            result = await op
        except self._errors as exc:
            raise self._unavailable(exc) from exc
        if self.log.failing:
            self.log.succeeded()
        return result

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        """Count and log a store failure; the error the caller raises for it."""
        self.stats.store_errors += 1
        self.log.failed(exc)
        return StoreUnavailable(f"rate-limit store {self.where} unavailable ({type(exc).__name__})")
