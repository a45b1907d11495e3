"""The ``limits`` library's window strategies behind the same interface as the token bucket.

``fixed-window``, ``moving-window`` and ``sliding-window-counter`` are ``limits.aio``'s own
strategies and storages; this adapter only maps their ``hit`` / ``get_window_stats`` onto a
`Decision` and routes every store call through the same timeout guard as the token bucket.

What windows cannot do, compared with the token bucket: costs are whole units (rounded up); a
charge cannot give units back (a negative cost is ignored); and the moving and sliding windows
never run into debt: a charge larger than what is left fills the window instead.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, TypeVar

from limits.aio.strategies import (
    FixedWindowRateLimiter,
    MovingWindowRateLimiter,
    SlidingWindowCounterRateLimiter,
)

from asgi_llmguard.ratelimit._store import Guard
from asgi_llmguard.ratelimit.base import Limiter
from asgi_llmguard.ratelimit.spec import Decision, ParsedLimit

if TYPE_CHECKING:
    import limits.aio.storage
    import redis.asyncio
    import redis.asyncio.cluster
    from limits.util import WindowStats

T = TypeVar("T")

_STRATEGIES: dict[
    str,
    type[FixedWindowRateLimiter | MovingWindowRateLimiter | SlidingWindowCounterRateLimiter],
] = {
    "fixed-window": FixedWindowRateLimiter,
    "moving-window": MovingWindowRateLimiter,
    "sliding-window-counter": SlidingWindowCounterRateLimiter,
}
#: The names `create_limiter` accepts for these strategies.
WINDOW_ALGORITHMS = frozenset(_STRATEGIES)


def _units(cost: float) -> int:
    return math.ceil(cost - 1e-9) if cost > 0 else 0


class WindowLimiter(Limiter):
    """One of ``limits.aio.strategies`` on one ``limits.aio.storage`` storage."""

    def __init__(
        self,
        algorithm: str,
        storage: limits.aio.storage.Storage,
        *,
        timeout: float | None = None,
        where: str = "memory://",
        client: redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster | None = None,
    ) -> None:
        super().__init__()
        strategy = _STRATEGIES.get(algorithm)
        if strategy is None:  # pragma: no cover - checked by create_limiter
            raise ValueError(algorithm)
        self.algorithm = algorithm
        self.where = where
        self._strategy = strategy(storage)
        # In-process storage cannot fail or stall: no guard, no timer on its hot path.
        self._guard = Guard(where, timeout, self.stats) if timeout is not None else None
        self._client = client

    async def _call(self, op: Awaitable[T]) -> T:
        return await op if self._guard is None else await self._guard(op)

    async def _stats(self, key: str, limit: ParsedLimit) -> WindowStats:
        return await self._call(self._strategy.get_window_stats(limit.item, key))

    @staticmethod
    def _decision(limit: ParsedLimit, allowed: bool, stats: WindowStats) -> Decision:
        reset_after = max(0.0, float(stats.reset_time) - time.time())
        remaining = max(0, int(stats.remaining))
        return Decision(
            allowed, limit.amount, remaining, reset_after, 0.0 if allowed else reset_after
        )

    async def acquire(self, key: str, limit: ParsedLimit, cost: float) -> Decision:
        units = _units(cost)
        allowed = True
        if units:
            allowed = await self._call(self._strategy.hit(limit.item, key, cost=units))
        return self._decision(limit, allowed, await self._stats(key, limit))

    async def charge(self, key: str, limit: ParsedLimit, cost: float) -> None:
        units = _units(cost)
        if not units:
            return
        if await self._call(self._strategy.hit(limit.item, key, cost=units)):
            return
        if self.algorithm != "fixed-window":  # a fixed window counts past its limit by itself
            left = (await self._stats(key, limit)).remaining
            if left > 0:
                await self._call(self._strategy.hit(limit.item, key, cost=int(left)))

    async def peek(self, key: str, limit: ParsedLimit) -> Decision:
        stats = await self._stats(key, limit)
        return self._decision(limit, stats.remaining >= 1, stats)

    async def reset(self, key: str, limit: ParsedLimit) -> None:
        await self._call(self._strategy.clear(limit.item, key))

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    def __repr__(self) -> str:
        return f"<WindowLimiter {self.algorithm} {self.where}>"
