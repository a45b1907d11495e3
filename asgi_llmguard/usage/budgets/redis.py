"""`RedisBudgetStore`: budgets in Redis, shared by every worker and replica."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from asgi_llmguard.policy import Budget
from asgi_llmguard.redis_batch import ScriptBatcher
from asgi_llmguard.usage.budgets.base import (
    _PERIODS,
    BudgetExceeded,
    BudgetStore,
    BudgetStoreError,
    Period,
    PeriodUsage,
    Reservation,
    _check,
    _limits,
    _new_id,
    _usage,
    _windows,
)

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster


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
        from redis.exceptions import RedisClusterException, RedisError

        self._redis = redis
        # Concurrent requests' reservations and settlements share pipelines.
        self._batch = ScriptBatcher(redis, timeout=timeout)
        self._script = self._batch.register(_SCRIPT)
        self._prefix = prefix
        self._timeout = timeout
        self._grace_ms = str(int(grace * 1000))
        self._clock = clock
        self._owns = owns_client
        self._errors: tuple[type[BaseException], ...] = (
            RedisError,
            RedisClusterException,  # a cluster's own failures, e.g. no node reachable
            OSError,
            TimeoutError,
        )

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

    async def start(self) -> None:
        """Learn a cluster's slot map ahead of the first reservation (nothing on one server)."""
        from asgi_llmguard._redis import warm_up

        await warm_up(self._redis, within=self._timeout, where="the budget store")

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
