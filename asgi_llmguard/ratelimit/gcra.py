"""The token bucket, as GCRA: one number per bucket, in memory or in Redis.

GCRA (the generic cell rate algorithm) keeps a bucket as its *theoretical arrival time* (TAT):
the moment the bucket would be full again. Spending ``cost`` pushes the TAT ``cost x interval``
further; a request is admitted when the pushed TAT stays within ``tolerance`` (burst x
interval) of now. So a bucket is one float, not a count plus a timestamp, updated in one step,
and a TAT in the past means "full": such entries carry no information and may be dropped. A
charge after the fact may push the TAT past the tolerance: the bucket is then in debt, and
requests wait until it has dripped back.

Both variants share the arithmetic below and work on how far the TAT is *ahead* of now, so the
in-memory one (any clock) and the Redis one (the server's clock) answer alike.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final

from asgi_llmguard.errors import ConfigurationError
from asgi_llmguard.ratelimit._store import Guard
from asgi_llmguard.ratelimit.base import Limiter
from asgi_llmguard.ratelimit.spec import Decision, ParsedLimit
from asgi_llmguard.redis_batch import ScriptBatcher

if TYPE_CHECKING:
    import redis.asyncio
    import redis.asyncio.cluster

#: Characters that are special in a Redis SCAN pattern (a key id may contain them).
_GLOB = re.compile(r"[\\*?\[\]^-]")
#: Float slack when comparing times, so that exactly-full buckets are not refused by rounding.
EPS: Final = 1e-9


def decide(limit: ParsedLimit, allowed: bool, ahead: float, cost: float) -> Decision:
    """The decision for a bucket whose TAT is ``ahead`` seconds after now (after the update
    when allowed, unchanged when refused)."""
    ahead = max(ahead, 0.0)
    # Whole units, forgiving the float noise of sums like 0.1 x 30 (29.999999999999996).
    remaining = max(0, math.floor((limit.tolerance - ahead) / limit.interval + 1e-9))
    retry = 0.0 if allowed else max(ahead + cost * limit.interval - limit.tolerance, 0.0)
    return Decision(allowed, limit.amount, remaining, ahead, retry)


class MemoryGcra(Limiter):
    """GCRA in a dict of TATs: one process, no I/O, atomic because nothing in it awaits.

    The dict is bounded two ways (RELIABILITY M1): entries whose TAT has passed are swept out
    whenever the dict has doubled since the last sweep (amortised O(1) per request), and
    ``max_keys`` is a hard cap: past it the least recently touched buckets are forgotten, which
    lets those keys start again with a full bucket. Size it above the number of keys active
    within one limit period.
    """

    algorithm = "gcra"

    def __init__(
        self, *, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000
    ) -> None:
        super().__init__()
        if isinstance(max_keys, bool) or not isinstance(max_keys, int) or max_keys < 1:
            raise ConfigurationError(f"max_keys must be a positive integer, not {max_keys!r}")
        self._clock = clock
        self._max_keys = max_keys
        self._floor = min(1024, max_keys)
        self._sweep_at = self._floor
        # key -> TAT; insertion order is last-touched order (entries are re-inserted on update).
        self._tat: dict[str, float] = {}

    @property
    def size(self) -> int:
        """How many buckets are held (full buckets not yet swept included)."""
        return len(self._tat)

    def _ahead(self, key: str, now: float) -> float:
        tat = self._tat.get(key)
        return tat - now if tat is not None and tat > now else 0.0

    def _store(self, key: str, now: float, ahead: float) -> None:
        table = self._tat
        table.pop(key, None)
        if ahead <= 0.0:
            return
        table[key] = now + ahead
        if len(table) >= self._sweep_at:
            self._sweep(now)

    def _sweep(self, now: float) -> None:
        table = self._tat
        for key in [k for k, tat in table.items() if tat <= now]:
            del table[key]
        if len(table) >= self._max_keys:
            # Forget the least recently touched buckets, down to 7/8 of the cap, so the next
            # few new keys do not each pay for a full sweep.
            excess = len(table) - self._max_keys * 7 // 8
            for key in list(table)[:excess]:
                del table[key]
        self._sweep_at = min(max(2 * len(table), self._floor), self._max_keys)

    immediate = True

    def acquire_now(self, key: str, limit: ParsedLimit, cost: float) -> Decision:
        now = self._clock()
        ahead = self._ahead(key, now)
        new = ahead + cost * limit.interval
        if new - limit.tolerance > EPS:
            return decide(limit, False, ahead, cost)
        self._store(key, now, new)
        return decide(limit, True, new, cost)

    def charge_now(self, key: str, limit: ParsedLimit, cost: float) -> None:
        now = self._clock()
        self._store(key, now, self._ahead(key, now) + cost * limit.interval)

    def peek_now(self, key: str, limit: ParsedLimit) -> Decision:
        ahead = self._ahead(key, self._clock())
        allowed = ahead + limit.interval - limit.tolerance <= EPS
        return decide(limit, allowed, ahead, 1.0)

    async def acquire(self, key: str, limit: ParsedLimit, cost: float) -> Decision:
        return self.acquire_now(key, limit, cost)

    async def charge(self, key: str, limit: ParsedLimit, cost: float) -> None:
        self.charge_now(key, limit, cost)

    async def peek(self, key: str, limit: ParsedLimit) -> Decision:
        return self.peek_now(key, limit)

    async def reset(self, key: str, limit: ParsedLimit) -> None:
        self._tat.pop(key, None)

    async def forget(self, prefix: str) -> int:
        table = self._tat
        held = [key for key in table if key.startswith(prefix)]
        for key in held:
            del table[key]
        return len(held)

    def __repr__(self) -> str:
        return f"<MemoryGcra buckets={len(self._tat)} max_keys={self._max_keys}>"


# One atomic step, in milliseconds of the server's clock (TIME), so every replica and worker
# shares one clock and no client's clock skew matters. Mode: "a" acquire (check, then update),
# "c" charge (update without a check; a negative cost gives units back), "p" peek (no write).
# Returns {allowed, ms the TAT is ahead of now}: after the update when allowed, else unchanged.
# The key expires when its TAT passes: a full bucket needs no entry. Floats are returned as
# strings because Redis truncates Lua numbers to integers.
_LUA = """
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local mode = ARGV[4]
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + tonumber(clock[2]) / 1000
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then tat = now end
local new = tat + cost * interval
if mode == 'p' then
  local ok = 0
  if new - tolerance <= now + 1e-6 then ok = 1 end
  return {ok, string.format('%.17g', tat - now)}
end
if mode == 'a' and new - tolerance > now + 1e-6 then
  return {0, string.format('%.17g', tat - now)}
end
if new <= now then
  redis.call('DEL', KEYS[1])
  return {1, '0'}
end
redis.call('SET', KEYS[1], string.format('%.17g', new), 'PX', math.ceil(new - now))
return {1, string.format('%.17g', new - now)}
"""


# Several buckets for one request in one atomic step: every bucket is checked first (mode "a"
# takes ``cost``, "p" only looks, with a cost of one unit), and only if all pass are the takes
# written; a refusal writes nothing, so nothing has to be given back. Returns, per bucket,
# {allowed, ms the TAT is ahead of now} as `_LUA` does. On a Redis Cluster the keys of one call
# must share a slot: `RedisGcra` then puts every bucket under one hash tag (`cluster_prefix`).
_LUA_MANY = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + tonumber(clock[2]) / 1000
local out = {}
local tats = {}
local news = {}
local passed = true
for i = 1, #KEYS do
  local base = (i - 1) * 4
  local interval = tonumber(ARGV[base + 1])
  local tolerance = tonumber(ARGV[base + 2])
  local cost = tonumber(ARGV[base + 3])
  local tat = tonumber(redis.call('GET', KEYS[i]))
  if tat == nil or tat < now then tat = now end
  local new = tat + cost * interval
  tats[i] = tat
  news[i] = new
  if new - tolerance > now + 1e-6 then
    out[2 * i - 1] = 0
    passed = false
  else
    out[2 * i - 1] = 1
  end
end
for i = 1, #KEYS do
  local tat, new = tats[i], news[i]
  if passed and ARGV[(i - 1) * 4 + 4] == 'a' then
    if new <= now then
      redis.call('DEL', KEYS[i])
      out[2 * i] = '0'
    else
      redis.call('SET', KEYS[i], string.format('%.17g', new), 'PX', math.ceil(new - now))
      out[2 * i] = string.format('%.17g', new - now)
    end
  else
    out[2 * i] = string.format('%.17g', tat - now)
  end
end
return out
"""


def cluster_prefix(prefix: str) -> str:
    """``prefix`` as a hash tag (``llmguard:rl:`` -> ``{llmguard:rl}:``), unless it holds one.

    One request's buckets (its key's, its model's, the gateway-wide ones) are checked by one
    script, all or nothing, and a script's keys must share a cluster slot: so every bucket of a
    limiter lives in the slot of its prefix. Gateways with different prefixes spread over nodes.
    """
    start = prefix.find("{")
    if start >= 0 and prefix.find("}", start + 1) > start + 1:
        return prefix
    return "{" + prefix.rstrip(":") + "}:"


class RedisGcra(Limiter):
    """GCRA in Redis: one Lua script per check, atomic across every worker and replica.

    Keys are ``<prefix><bucket>`` strings holding the TAT in milliseconds, with a ``PEXPIRE``
    at the TAT, so idle buckets vanish on their own and the keyspace stays bounded. On a Redis
    Cluster the prefix becomes a hash tag (see `cluster_prefix`).
    """

    algorithm = "gcra"

    def __init__(
        self,
        client: redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster,
        *,
        timeout: float = 0.25,
        prefix: str = "llmguard:rl:",
        where: str = "redis",
    ) -> None:
        from asgi_llmguard._redis import is_cluster

        super().__init__()
        if is_cluster(client):
            prefix = cluster_prefix(prefix)
        self._client = client
        # Concurrent requests' checks share pipelines (see `asgi_llmguard.redis_batch`).
        self._batch = ScriptBatcher(client, timeout=timeout)
        self._script = self._batch.register(_LUA)
        self._script_many = self._batch.register(_LUA_MANY)
        self._prefix = prefix
        self._guard = Guard(where, timeout, self.stats)
        self.where = where

    async def _run(
        self, key: str, limit: ParsedLimit, cost: float, mode: str
    ) -> tuple[bool, float]:
        reply = await self._guard.bounded(
            self._batch.call(
                self._script,
                [self._prefix + key],
                [repr(limit.interval * 1000.0), repr(limit.tolerance * 1000.0), repr(cost), mode],
                timeout=self._guard.timeout,
            )
        )
        allowed, ahead_ms = reply
        return bool(allowed), float(ahead_ms) / 1000.0

    async def acquire(self, key: str, limit: ParsedLimit, cost: float) -> Decision:
        allowed, ahead = await self._run(key, limit, cost, "a")
        return decide(limit, allowed, ahead, cost)

    async def charge(self, key: str, limit: ParsedLimit, cost: float) -> None:
        await self._run(key, limit, cost, "c")

    async def admit(self, checks: Sequence[tuple[str, ParsedLimit, float, bool]]) -> list[Decision]:
        """Check every bucket of one request in one round trip: ``(key, limit, cost, take)``
        takes ``cost`` where ``take``, else looks whether one unit is there. All or nothing: when
        any bucket refuses, nothing is taken. One decision per check, in order."""
        keys: list[str] = []
        args: list[str] = []
        for key, limit, cost, take in checks:
            keys.append(self._prefix + key)
            args += (
                repr(limit.interval * 1000.0),
                repr(limit.tolerance * 1000.0),
                repr(cost if take else 1.0),
                "a" if take else "p",
            )
        reply = await self._guard.bounded(
            self._batch.call(self._script_many, keys, args, timeout=self._guard.timeout)
        )
        decisions = []
        for index, (_, limit, cost, take) in enumerate(checks):
            allowed, ahead_ms = reply[2 * index], reply[2 * index + 1]
            decisions.append(
                decide(limit, bool(allowed), float(ahead_ms) / 1000.0, cost if take else 1.0)
            )
        return decisions

    async def peek(self, key: str, limit: ParsedLimit) -> Decision:
        allowed, ahead = await self._run(key, limit, 1.0, "p")
        return decide(limit, allowed, ahead, 1.0)

    async def reset(self, key: str, limit: ParsedLimit) -> None:
        await self._guard(self._client.delete(self._prefix + key))

    async def forget(self, prefix: str) -> int:
        """SCAN (never KEYS: it would block Redis) for the prefix's buckets and delete them."""
        pattern = _GLOB.sub(r"\\\g<0>", self._prefix + prefix) + "*"

        async def scan_and_delete() -> int:
            found = [key async for key in self._client.scan_iter(match=pattern, count=500)]
            for start in range(0, len(found), 500):
                await self._client.delete(*found[start : start + 500])
            return len(found)

        return await self._guard(scan_and_delete())

    async def start(self) -> None:
        """Learn a cluster's slot map ahead of the first check (nothing on one server)."""
        from asgi_llmguard._redis import warm_up

        await warm_up(self._client, within=self._guard.timeout, where=self.where)

    async def aclose(self) -> None:
        await self._batch.aclose()
        await self._client.aclose()

    def __repr__(self) -> str:
        return f"<RedisGcra {self.where}>"
