"""Spending budgets: atomic reservations against per-period dollar limits, in memory or in Redis.

A *subject* is whose money it is: ``key:<key_id>``, ``tag:team:ml``, ... Its `Budget` limits the
total ever spent and the spend of the current UTC hour, day and calendar month. Amounts are
integer nano-dollars.

The protocol (RELIABILITY B1, B2):

1. ``reserve(subject, budget, estimate)`` admits the request only if, for every limited period,
   ``spent + reserved + estimate <= limit``, and then adds ``estimate`` to ``reserved`` - one
   atomic step, so concurrent requests cannot all see the same remaining money.
2. ``settle(reservation, actual)`` replaces the estimate by the actual cost (``reserved -=
   estimate``, ``spent += actual``); ``release(reservation)`` gives the estimate back (error,
   cancel). Each happens at most once per reservation id; repeats return ``False``.
3. A reservation nobody settles (its process died) stops counting when its TTL passes; it is
   dropped by the next operation on the subject. Settling it later still records the spend, for
   ``grace`` seconds after it expired.

Periods are UTC calendar periods; a reservation belongs to the windows current when it was made,
and its settlement counts in those windows only while they are still current (spend settled after
its hour ended belongs to a window nobody checks any more). Over-spend is bounded: what admission
guarantees is ``spent + reserved <= limit``; a settlement whose actual cost exceeds its estimate,
a reservation that expired while its request still ran, and requests admitted while the store was
unreachable under a fail-open policy can push ``spent`` past the limit by at most the sum of those
excesses. The next request is then refused until the period resets.
"""

from __future__ import annotations

import abc
import asyncio
import functools
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from asgi_llmguard.context import UniqueIds
from asgi_llmguard.policy import Budget
from asgi_llmguard.redis_batch import ScriptBatcher
from asgi_llmguard.usage.pricing import usd_to_nanos

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

__all__ = [
    "BudgetExceeded",
    "BudgetStore",
    "BudgetStoreError",
    "MemoryBudgetStore",
    "Period",
    "PeriodUsage",
    "RedisBudgetStore",
    "Reservation",
]

Period = Literal["total", "hourly", "daily", "monthly"]
_PERIODS: dict[str, Period] = {"t": "total", "h": "hourly", "d": "daily", "m": "monthly"}


class Reservation(msgspec.Struct, frozen=True, kw_only=True):
    """Money held for one request. ``windows`` are the period windows it was counted in."""

    id: str
    subject: str
    amount_nanos: int
    #: When the hold lapses, seconds since the epoch (Redis applies it on its own clock).
    expires_at: float
    windows: tuple[str, ...]


class BudgetExceeded(msgspec.Struct, frozen=True, kw_only=True):
    """A refusal: the first period whose limit the request would pass."""

    subject: str
    period: Period
    limit_nanos: int
    spent_nanos: int
    reserved_nanos: int
    requested_nanos: int
    #: When the period's window ends (seconds since the epoch); ``None`` for ``total``.
    resets_at: float | None


class PeriodUsage(msgspec.Struct, frozen=True, kw_only=True):
    """One limited period of a subject's budget, in its current window."""

    period: Period
    window: str
    limit_nanos: int
    spent_nanos: int
    reserved_nanos: int
    remaining_nanos: int
    resets_at: float | None


class BudgetStoreError(Exception):
    """The store could not answer (Redis down, slow or erroring). The caller decides whether that
    admits the request (fail-open) or refuses it (fail-closed)."""


_window_cache: tuple[int, dict[str, tuple[str, float | None]]] = (-1, {})


def _windows(now: float) -> dict[str, tuple[str, float | None]]:
    """Each period's current window id (fixed width, so ids compare as strings) and its end.

    Every window starts on a UTC hour, so the answer is the same for a whole hour: it is
    computed once per hour (one entry, shared; callers must not modify it)."""
    global _window_cache
    hour_number = int(now // 3600)
    cached_hour, cached = _window_cache
    if hour_number == cached_hour:
        return cached
    result = _compute_windows(now)
    _window_cache = (hour_number, result)
    return result


def _compute_windows(now: float) -> dict[str, tuple[str, float | None]]:
    dt = datetime.fromtimestamp(now, UTC)
    hour = dt.replace(minute=0, second=0, microsecond=0)
    day = hour.replace(hour=0)
    month = day.replace(day=1)
    if month.month == 12:
        following = month.replace(year=month.year + 1, month=1)
    else:
        following = month.replace(month=month.month + 1)
    return {
        "t": ("0", None),
        "h": (hour.strftime("%Y%m%d%H"), hour.timestamp() + 3600),
        "d": (day.strftime("%Y%m%d"), day.timestamp() + 86400),
        "m": (month.strftime("%Y%m"), following.timestamp()),
    }


@functools.lru_cache(maxsize=1024)
def _limits(budget: Budget) -> tuple[tuple[str, int], ...]:
    """``(period code, limit in nanos)`` for each period the budget limits; negative = 0."""
    values = {"t": budget.total, "h": budget.hourly, "d": budget.daily, "m": budget.monthly}
    return tuple(
        (code, usd_to_nanos(max(0.0, usd))) for code, usd in values.items() if usd is not None
    )


def _check(amount: int, ttl: float) -> None:
    if amount < 0:
        raise ValueError("amount_nanos must be >= 0")
    if not ttl > 0:
        raise ValueError("ttl must be > 0")


#: Reservation ids: unique across processes (forked workers included), no ``urandom`` per call.
_new_id = UniqueIds("")


class BudgetStore(abc.ABC):
    """Where budgets are kept. Every method raises `BudgetStoreError` when the store fails."""

    @abc.abstractmethod
    async def reserve(
        self, subject: str, budget: Budget, amount_nanos: int, *, ttl: float = 600.0
    ) -> Reservation | BudgetExceeded:
        """Hold ``amount_nanos`` for ``ttl`` seconds if every limit allows it, atomically."""

    @abc.abstractmethod
    async def settle(self, reservation: Reservation, actual_nanos: int) -> bool:
        """Replace the reservation by the actual cost; ``False`` if it was already closed."""

    @abc.abstractmethod
    async def release(self, reservation: Reservation) -> bool:
        """Give the reservation back, spending nothing; ``False`` if it was already closed."""

    @abc.abstractmethod
    async def spent(self, subject: str, budget: Budget) -> dict[Period, PeriodUsage]:
        """Spent, reserved and remaining money of each period ``budget`` limits."""

    @abc.abstractmethod
    async def reset(self, subject: str) -> None:
        """Forget everything about ``subject`` (an operator's action)."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections the store owns."""


def _usage(
    code: str, limit: int, window: str, spent: int, reserved: int, ends: float | None
) -> PeriodUsage:
    return PeriodUsage(
        period=_PERIODS[code],
        window=window,
        limit_nanos=limit,
        spent_nanos=spent,
        reserved_nanos=reserved,
        remaining_nanos=max(0, limit - spent - reserved),
        resets_at=ends,
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


# One script for every operation, so each is atomic in Redis. Per subject (one hash slot, thanks
# to the {subject} hash tag): C, a hash of counters "<code>:w" (current window id), "<code>:s"
# (spent) and "<code>:r" (reserved) for each limited period; L, a sorted set of live reservation
# ids scored by expiry; D, a hash id -> "<amount> <code:window> ..."; X, a sorted set of
# reservations dropped at expiry but still settleable, scored by when they were dropped. Times
# are the Redis server's (milliseconds), so TTLs do not depend on the gateways' clocks. Amounts
# stay strings on their way to HINCRBY (exact int64); only comparisons use Lua numbers.
_SCRIPT = """
local C, L, D, X = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local op, grace = ARGV[1], tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function apply(field, delta, wins)
  if delta == '0' or delta == '-0' then return end
  for _, w in ipairs(wins) do
    local code, win = string.match(w, '^([^:]+):(.*)$')
    if code and redis.call('HGET', C, code .. ':w') == win then
      if redis.call('HINCRBY', C, code .. ':' .. field, delta) < 0 then
        redis.call('HSET', C, code .. ':' .. field, 0)
      end
    end
  end
end

local function unreserve(record)
  local wins = {}
  for part in string.gmatch(record, '%S+') do wins[#wins + 1] = part end
  local amount = table.remove(wins, 1)
  apply('r', '-' .. amount, wins)
end

local function purge()
  local ids = redis.call('ZRANGEBYSCORE', L, '-inf', now)
  for _, id in ipairs(ids) do
    local record = redis.call('HGET', D, id)
    if record then unreserve(record) end
    redis.call('HDEL', D, id)
    redis.call('ZREM', L, id)
    redis.call('ZADD', X, now, id)
  end
  if #ids > 0 then
    local ttl = redis.call('PTTL', C)
    if ttl > 0 then redis.call('PEXPIRE', X, ttl) end
  end
  redis.call('ZREMRANGEBYSCORE', X, '-inf', now - grace)
end

local function close(id)
  local record = redis.call('HGET', D, id)
  if record then
    unreserve(record)
    redis.call('HDEL', D, id)
    redis.call('ZREM', L, id)
    return 1
  end
  return redis.call('ZREM', X, id)
end

purge()
if op == 'reserve' then
  local id, amount, ttl, keep, n = ARGV[3], ARGV[4], ARGV[5], ARGV[6], tonumber(ARGV[7])
  local wins = {}
  for i = 0, n - 1 do
    local code, win, limit = ARGV[8 + 3 * i], ARGV[9 + 3 * i], tonumber(ARGV[10 + 3 * i])
    local stored = redis.call('HGET', C, code .. ':w')
    if (not stored) or win > stored then
      redis.call('HSET', C, code .. ':w', win, code .. ':s', 0, code .. ':r', 0)
      stored = win
    end
    local s = tonumber(redis.call('HGET', C, code .. ':s'))
    local r = tonumber(redis.call('HGET', C, code .. ':r'))
    if s + r + tonumber(amount) > limit then
      return {0, code, s, r, stored}
    end
    wins[#wins + 1] = code .. ':' .. stored
  end
  for _, w in ipairs(wins) do
    redis.call('HINCRBY', C, string.match(w, '^[^:]+') .. ':r', amount)
  end
  redis.call('HSET', D, id, amount .. ' ' .. table.concat(wins, ' '))
  redis.call('ZADD', L, now + tonumber(ttl), id)
  for _, k in ipairs(KEYS) do
    if keep == '0' then redis.call('PERSIST', k) else redis.call('PEXPIRE', k, keep) end
  end
  return {1, unpack(wins)}
elseif op == 'settle' then
  local found = close(ARGV[3])
  if found == 1 then apply('s', ARGV[4], {unpack(ARGV, 5)}) end
  return found
elseif op == 'release' then
  return close(ARGV[3])
elseif op == 'status' then
  local out = {}
  for i = 3, #ARGV, 2 do
    local code, win = ARGV[i], ARGV[i + 1]
    local stored = redis.call('HGET', C, code .. ':w')
    if stored and stored >= win then
      out[#out + 1] = stored
      out[#out + 1] = redis.call('HGET', C, code .. ':s')
      out[#out + 1] = redis.call('HGET', C, code .. ':r')
    else
      out[#out + 1] = win
      out[#out + 1] = '0'
      out[#out + 1] = '0'
    end
  end
  return out
end
return redis.error_reply('unknown op')
"""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisBudgetStore(BudgetStore):
    """Budgets in Redis (5 or newer), shared by every worker and replica (``redis.asyncio``).

    Each operation is one Lua script run, atomic across processes. Keys are
    ``<prefix>{<subject>}:c|l|d|x`` (one hash slot per subject). When the budget has no ``total``
    limit the subject's keys expire after the longest current period window (plus the TTL);
    with a ``total`` they are kept. Every call is bounded by ``timeout`` seconds; a Redis error
    or timeout raises `BudgetStoreError`. A ``reserve`` that timed out may still have been
    applied: its hold then lapses after its TTL.

    Reservation TTLs run on the Redis server's clock. Period windows come from this process's
    ``clock`` (injectable for tests): keep hosts NTP-synced, since skew moves a window's boundary
    by the skew. Amounts are exact 64-bit integers in Redis; the limit comparison itself is exact
    up to 2**53 nano-dollars (about $9M).
    """

    def __init__(
        self,
        redis: Redis | RedisCluster,
        *,
        prefix: str = "llmguard:budget:",
        timeout: float = 0.5,
        grace: float = 86400.0,
        clock: Callable[[], float] = time.time,
        owns_client: bool = False,
    ) -> None:
        from redis.exceptions import RedisError

        self._redis = redis
        # Concurrent requests' reservations and settlements share pipelines.
        self._batch = ScriptBatcher(redis, timeout=timeout)
        self._script = self._batch.register(_SCRIPT)
        self._prefix = prefix
        self._timeout = timeout
        self._grace_ms = str(int(grace * 1000))
        self._clock = clock
        self._owns = owns_client
        self._errors: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)

    @classmethod
    def from_url(cls, url: str, *, max_connections: int = 64, **kwargs: Any) -> RedisBudgetStore:
        """A store with its own client for ``url`` (``redis://127.0.0.1:6379/0``, ``rediss://``,
        ``redis+cluster://``), on the client policy of `asgi_llmguard._redis.redis_client`
        (bounded by ``timeout``); ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile`` and
        ``ssl_cert_reqs`` go to the client, the other keyword arguments to the store."""
        from asgi_llmguard._redis import redis_client, split_tls

        tls, kwargs = split_tls(kwargs)
        timeout = kwargs.get("timeout", 0.5)
        client = redis_client(url, timeout=timeout, max_connections=max_connections, **tls)
        return cls(client, owns_client=True, **kwargs)

    async def aclose(self) -> None:
        await self._batch.aclose()
        if self._owns:
            await self._redis.aclose()

    def _keys(self, subject: str) -> list[str]:
        base = f"{self._prefix}{{{subject}}}:"
        return [base + "c", base + "l", base + "d", base + "x"]

    async def _run(self, subject: str, op: str, *args: str | int) -> Any:
        try:
            return await self._batch.call(
                self._script,
                self._keys(subject),
                [op, self._grace_ms, *args],
                timeout=self._timeout,
            )
        except self._errors as exc:
            raise BudgetStoreError(f"budget store: {type(exc).__name__}: {exc}") from exc

    async def reserve(
        self, subject: str, budget: Budget, amount_nanos: int, *, ttl: float = 600.0
    ) -> Reservation | BudgetExceeded:
        _check(amount_nanos, ttl)
        now = self._clock()
        limits = _limits(budget)
        windows = _windows(now)
        # The keys live as long as the longest limited window, plus the TTL; a total is kept.
        keep = 0
        if not any(code == "t" for code, _ in limits):
            longest = max((windows[code][1] or now for code, _ in limits), default=now)
            keep = max(1, int((longest - now + ttl) * 1000))
        args: list[str | int] = []
        for code, limit in limits:
            args += [code, windows[code][0], limit]
        rid = _new_id()
        ttl_ms = max(1, int(ttl * 1000))
        reply = await self._run(
            subject, "reserve", rid, amount_nanos, ttl_ms, keep, len(limits), *args
        )
        if int(reply[0]) == 0:
            code = _text(reply[1])
            return BudgetExceeded(
                subject=subject,
                period=_PERIODS[code],
                limit_nanos=dict(limits)[code],
                spent_nanos=int(reply[2]),
                reserved_nanos=int(reply[3]),
                requested_nanos=amount_nanos,
                resets_at=windows[code][1],
            )
        held = tuple(_text(w) for w in reply[1:])
        return Reservation(
            id=rid, subject=subject, amount_nanos=amount_nanos, expires_at=now + ttl, windows=held
        )

    async def settle(self, reservation: Reservation, actual_nanos: int) -> bool:
        actual = max(0, actual_nanos)
        reply = await self._run(
            reservation.subject, "settle", reservation.id, actual, *reservation.windows
        )
        return int(reply) == 1

    async def release(self, reservation: Reservation) -> bool:
        reply = await self._run(reservation.subject, "release", reservation.id)
        return int(reply) == 1

    async def spent(self, subject: str, budget: Budget) -> dict[Period, PeriodUsage]:
        windows = _windows(self._clock())
        limits = _limits(budget)
        args: list[str | int] = []
        for code, _ in limits:
            args += [code, windows[code][0]]
        reply = await self._run(subject, "status", *args)
        result: dict[Period, PeriodUsage] = {}
        for i, (code, limit) in enumerate(limits):
            window, spent, reserved = reply[3 * i : 3 * i + 3]
            result[_PERIODS[code]] = _usage(
                code, limit, _text(window), int(spent), int(reserved), windows[code][1]
            )
        return result

    async def reset(self, subject: str) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                await self._redis.delete(*self._keys(subject))
        except self._errors as exc:
            raise BudgetStoreError(f"budget store: {type(exc).__name__}: {exc}") from exc
