"""`MemoryBudgetStore`: budgets in this process's memory."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from asgi_llmguard.policy import Budget
from asgi_llmguard.usage.budgets.base import (
    _PERIODS,
    BudgetExceeded,
    BudgetStore,
    Period,
    PeriodUsage,
    Reservation,
    _check,
    _limits,
    _new_id,
    _usage,
    _windows,
)


class _Counter:
    __slots__ = ("reserved", "spent", "window")

    def __init__(self, window: str) -> None:
        self.window = window
        self.spent = 0
        self.reserved = 0


class _Subject:
    __slots__ = ("counters", "expired", "live", "next_expiry")

    def __init__(self) -> None:
        self.counters: dict[str, _Counter] = {}
        # id -> (amount, windows, expires_at)
        self.live: dict[str, tuple[int, tuple[str, ...], float]] = {}
        # ids of reservations dropped at expiry, still settleable: id -> when dropped
        self.expired: dict[str, float] = {}
        self.next_expiry = float("inf")

    def counter(self, code: str, window: str) -> _Counter:
        """The counter of ``code``'s window, rolled over when ``window`` is newer."""
        counter = self.counters.get(code)
        if counter is None or window > counter.window:
            counter = self.counters[code] = _Counter(window)
        return counter

    def apply(self, windows: tuple[str, ...], spent: int, reserved: int) -> None:
        """Add to the counters of those windows that are still current."""
        for item in windows:
            code, _, window = item.partition(":")
            counter = self.counters.get(code)
            if counter is not None and counter.window == window:
                counter.spent += spent
                counter.reserved = max(0, counter.reserved + reserved)

    def purge(self, now: float, grace: float, max_expired: int) -> None:
        if now >= self.next_expiry:
            soonest = float("inf")
            for rid, (amount, windows, expires_at) in list(self.live.items()):
                if expires_at <= now:
                    del self.live[rid]
                    self.apply(windows, 0, -amount)
                    self.expired[rid] = now
                else:
                    soonest = min(soonest, expires_at)
            self.next_expiry = soonest
        expired = self.expired
        while expired:
            oldest = next(iter(expired))
            if expired[oldest] > now - grace and len(expired) <= max_expired:
                break
            del expired[oldest]

    def stale(self, windows: dict[str, tuple[str, float | None]]) -> bool:
        """Nothing here matters any more: no reservation, nothing in a current window."""
        if self.live or self.expired:
            return False
        return all(
            (c.spent == 0 and c.reserved == 0) or (code != "t" and c.window < windows[code][0])
            for code, c in self.counters.items()
        )


class MemoryBudgetStore(BudgetStore):
    """Budgets in this process's memory: for one worker, or for tests.

    Every operation runs without awaiting, so check-and-reserve is atomic with respect to other
    coroutines (and a lock makes it so for threads). ``clock`` gives wall-clock seconds since the
    epoch (injectable for tests). Subjects with nothing current - no reservation, no spend in a
    current window, no ``total`` spend - are evicted once more than ``max_subjects`` are held;
    a subject with ``total`` spend is kept for the life of the process. ``grace`` is how long
    an expired reservation can still be settled; at most ``max_expired`` such are kept per
    subject.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        grace: float = 86400.0,
        max_subjects: int = 100_000,
        max_expired: int = 10_000,
    ) -> None:
        self._clock = clock
        self._grace = grace
        self._max_subjects = max_subjects
        self._max_expired = max_expired
        self._sweep_at = max_subjects
        self._subjects: dict[str, _Subject] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, **options: Any) -> MemoryBudgetStore:
        """The store for ``memory://``, as `asgi_llmguard.stores.budget_store` builds it: its own
        options are used, those only a shared store has (``prefix``, ``timeout``, ...) ignored."""
        own = ("clock", "grace", "max_subjects", "max_expired")
        return cls(**{name: value for name, value in options.items() if name in own})

    def __len__(self) -> int:
        return len(self._subjects)

    async def reserve(
        self, subject: str, budget: Budget, amount_nanos: int, *, ttl: float = 600.0
    ) -> Reservation | BudgetExceeded:
        _check(amount_nanos, ttl)
        now = self._clock()
        limits = _limits(budget)
        windows = _windows(now)
        with self._lock:
            state = self._subjects.get(subject)
            if state is None:
                if len(self._subjects) >= self._sweep_at:
                    self._sweep(windows)
                state = self._subjects[subject] = _Subject()
            state.purge(now, self._grace, self._max_expired)
            counters = []
            for code, limit in limits:
                counter = state.counter(code, windows[code][0])
                if counter.spent + counter.reserved + amount_nanos > limit:
                    return BudgetExceeded(
                        subject=subject,
                        period=_PERIODS[code],
                        limit_nanos=limit,
                        spent_nanos=counter.spent,
                        reserved_nanos=counter.reserved,
                        requested_nanos=amount_nanos,
                        resets_at=windows[code][1],
                    )
                counters.append((code, counter))
            held = tuple(f"{code}:{counter.window}" for code, counter in counters)
            for _, counter in counters:
                counter.reserved += amount_nanos
            rid = _new_id()
            expires_at = now + ttl
            state.live[rid] = (amount_nanos, held, expires_at)
            state.next_expiry = min(state.next_expiry, expires_at)
        return Reservation(
            id=rid, subject=subject, amount_nanos=amount_nanos, expires_at=expires_at, windows=held
        )

    async def settle(self, reservation: Reservation, actual_nanos: int) -> bool:
        return self._close(reservation, max(0, actual_nanos))

    async def release(self, reservation: Reservation) -> bool:
        return self._close(reservation, None)

    def _close(self, reservation: Reservation, actual: int | None) -> bool:
        now = self._clock()
        with self._lock:
            state = self._subjects.get(reservation.subject)
            if state is None:
                return False
            state.purge(now, self._grace, self._max_expired)
            live = state.live.pop(reservation.id, None)
            if live is not None:
                state.apply(live[1], 0, -live[0])
            elif state.expired.pop(reservation.id, None) is None:
                return False
            if actual:
                state.apply(reservation.windows, actual, 0)
            return True

    async def spent(self, subject: str, budget: Budget) -> dict[Period, PeriodUsage]:
        now = self._clock()
        windows = _windows(now)
        result: dict[Period, PeriodUsage] = {}
        with self._lock:
            state = self._subjects.get(subject)
            if state is not None:
                state.purge(now, self._grace, self._max_expired)
            for code, limit in _limits(budget):
                window, ends = windows[code]
                counter = state.counters.get(code) if state is not None else None
                if counter is not None and counter.window >= window:
                    result[_PERIODS[code]] = _usage(
                        code, limit, counter.window, counter.spent, counter.reserved, ends
                    )
                else:
                    result[_PERIODS[code]] = _usage(code, limit, window, 0, 0, ends)
        return result

    async def reset(self, subject: str) -> None:
        with self._lock:
            self._subjects.pop(subject, None)

    def _sweep(self, windows: dict[str, tuple[str, float | None]]) -> None:
        now = self._clock()
        for name, state in list(self._subjects.items()):
            state.purge(now, self._grace, self._max_expired)
            if state.stale(windows):
                del self._subjects[name]
        self._sweep_at = max(self._max_subjects, 2 * len(self._subjects))
