"""Storage URIs and the guard every store call goes through (the Redis client policy is
`asgi_llmguard._redis`)."""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Literal, TypeVar

import limits.errors

from asgi_llmguard._redis import RedisTarget, parse_redis_url
from asgi_llmguard.errors import ConfigurationError
from asgi_llmguard.ratelimit.base import FailureLog, LimiterStats, StoreUnavailable

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class StorageTarget:
    kind: Literal["memory", "redis"]
    #: The Redis server or cluster; ``None`` for memory.
    redis: RedisTarget | None
    #: Where the store is, for logs and ``repr``: scheme, host, port and db, never a password.
    where: str

    @property
    def url(self) -> str:
        """The URL redis-py takes; empty for memory."""
        return self.redis.url if self.redis is not None else ""


def parse_storage(uri: str) -> StorageTarget:
    if not isinstance(uri, str):
        raise ConfigurationError(f"storage must be a URI string, not {type(uri).__name__}")
    scheme = urllib.parse.urlsplit(uri).scheme.lower()
    if scheme in ("memory", "async+memory") or uri == "memory":
        return StorageTarget("memory", None, "memory://")
    try:
        target = parse_redis_url(uri)
    except ConfigurationError as exc:
        if "invalid port" in str(exc):
            raise ConfigurationError("storage URI has an invalid port") from None
        raise ConfigurationError(
            f"storage must be 'memory://' or 'redis://host:port/db' (also 'rediss://', "
            f"'redis+cluster://', 'async+redis://'), not a {scheme or 'scheme-less'} URI"
        ) from None
    return StorageTarget("redis", target, target.where)


def _store_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [TimeoutError, OSError, limits.errors.StorageError]
    try:
        import redis.exceptions

        # A cluster's own failures (no node reachable, keys of one call in two slots) are not
        # RedisErrors.
        errors += (redis.exceptions.RedisError, redis.exceptions.RedisClusterException)
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
