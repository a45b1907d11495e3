"""The limiter interface every engine implements, its counters, and how store failures surface.

A shared store (Redis) can be down or slow. The engines never turn that into an answer of their
own: every failure, a timeout included, raises `StoreUnavailable`, so the only place that decides
between admitting and refusing is the caller's per-limit ``on_error`` policy. A timeout can
therefore never read as "allowed" by accident.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod

from asgi_llmguard.lifecycle import Resource
from asgi_llmguard.ratelimit.spec import Decision, ParsedLimit

logger = logging.getLogger("asgi_llmguard.ratelimit")


class StoreUnavailable(Exception):
    """The limiter's store could not answer in time; the caller applies the limit's policy.

    The message names the store by its location and the error by its class only: no URI
    password, no server reply.
    """


class LimiterStats:
    """Plain counters, cheap enough for the hot path; a metrics exporter can read them.

    - ``store_errors``: store calls that failed or timed out (checks and charges);
    - ``fail_open`` / ``fail_closed``: requests admitted / refused because of such a failure;
    - ``rejected``: requests refused with 429 because a limit was reached.
    """

    __slots__ = ("fail_closed", "fail_open", "rejected", "store_errors")

    def __init__(self) -> None:
        self.store_errors = 0
        self.fail_open = 0
        self.fail_closed = 0
        self.rejected = 0

    def snapshot(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}

    def __repr__(self) -> str:
        return f"LimiterStats({self.snapshot()})"


class FailureLog:
    """One warning per burst of store failures, not one per request.

    When Redis goes away under load every request fails; a line each would flood the log exactly
    when an operator needs to read it. The first failure after a healthy period is logged, then
    at most one summary per ``interval`` while it lasts, and one line when the store answers
    again.
    """

    __slots__ = ("_count", "_failing", "_last", "interval", "where")

    def __init__(self, where: str, interval: float = 30.0) -> None:
        self.where = where
        self.interval = interval
        self._failing = False
        self._count = 0
        self._last = 0.0

    @property
    def failing(self) -> bool:
        return self._failing

    def failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        self._count += 1
        if not self._failing:
            self._failing = True
            self._last = now
            logger.warning(
                "rate-limit store %s unavailable (%s); limits follow their on_error policy",
                self.where,
                type(exc).__name__,
            )
        elif now - self._last >= self.interval:
            logger.warning(
                "rate-limit store %s still unavailable (%s): %d failures so far",
                self.where,
                type(exc).__name__,
                self._count,
            )
            self._last = now

    def succeeded(self) -> None:
        if self._failing:
            logger.warning(
                "rate-limit store %s answers again after %d failures", self.where, self._count
            )
            self._failing = False
            self._count = 0


class Limiter(Resource, ABC):
    """Buckets keyed by string, checked and charged in units of a `ParsedLimit`.

    - `acquire`: take ``cost`` if the bucket holds it, atomically; refused requests take nothing.
    - `charge`: add ``cost`` after the fact without a check (the LLM tokens a request actually
      used). It may drive the bucket into debt, so later requests wait; a negative cost gives
      units back where the algorithm can (the token bucket), and is ignored where it cannot.
    - `peek`: whether one unit could be taken now, without taking it.
    - `reset` / `forget`: an operator's reset of one bucket / of every bucket under a prefix.

    Every method raises `StoreUnavailable` when the store fails or is slower than the timeout.
    """

    #: The algorithm's name, as given to `create_limiter`.
    algorithm: str
    #: The store answers without I/O: `acquire_now`, `peek_now` and `charge_now` do what the
    #: coroutines do, without one coroutine per bucket per request (the in-memory token bucket).
    immediate: bool = False

    def acquire_now(self, key: str, limit: ParsedLimit, cost: float) -> Decision:
        raise NotImplementedError

    def peek_now(self, key: str, limit: ParsedLimit) -> Decision:
        raise NotImplementedError

    def charge_now(self, key: str, limit: ParsedLimit, cost: float) -> None:
        raise NotImplementedError

    def __init__(self) -> None:
        self.stats = LimiterStats()

    @abstractmethod
    async def acquire(self, key: str, limit: ParsedLimit, cost: float) -> Decision: ...

    @abstractmethod
    async def charge(self, key: str, limit: ParsedLimit, cost: float) -> None: ...

    @abstractmethod
    async def peek(self, key: str, limit: ParsedLimit) -> Decision: ...

    async def reset(self, key: str, limit: ParsedLimit) -> None:
        """Forget one bucket, so it is full again (an operator's action, not the hot path)."""
        raise NotImplementedError(f"{type(self).__name__} cannot reset a bucket")

    async def forget(self, prefix: str) -> int | None:
        """Forget every bucket whose key starts with ``prefix``; how many were held, or
        ``None`` when the engine cannot list its buckets (then reset them one by one)."""
        return None

    async def aclose(self) -> None:
        """Release the store's connections; the limiter must not be used afterwards."""
        return None
