"""`RedisCooldowns`: the cooldowns of `asgi_llmguard.forward.cooldowns`, shared by replicas.

One Redis hash holds every (credential, model) entry; atomic scripts apply the escalation and
pruning rules there, and each replica mirrors the hash locally so the hot path
(`cooling_until`) never waits on Redis. When Redis is unreachable a replica works from its own
state, logs once per outage, and pushes what changed when Redis returns.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from asgi_llmguard.errors import ConfigurationError
from asgi_llmguard.forward.cooldowns.base import (
    _PRUNE_EVERY,
    Cooldown,
    CooldownPolicy,
    _Entry,
    _forget_at,
    classify_failure,
)
from asgi_llmguard.forward.cooldowns.memory import MemoryCooldowns

if TYPE_CHECKING:
    import redis.asyncio as aioredis
    from redis.asyncio.cluster import RedisCluster

logger = logging.getLogger("asgi_llmguard.forward")

# One hash; field "credential\x1fmodel", value "until|reason|failures|set_at" (epoch seconds of
# the callers' clocks). ARGV[1] is the operation, ARGV[2] the caller's now, ARGV[3] the field.
# Every write keeps the hash alive at least as long as the entry it wrote is remembered.
_SCRIPT = """
local key, op, now, field = KEYS[1], ARGV[1], tonumber(ARGV[2]), ARGV[3]
local function parse(v)
  local u, r, f, s = string.match(v or '', '^([^|]+)|([^|]*)|([^|]+)|([^|]+)$')
  return tonumber(u), r, tonumber(f), tonumber(s)
end
local function forget_at(u, s, forget) return u + math.min(forget, math.max(u - s, 0)) end
local function keep(u, forget)
  local ttl = math.ceil(u - now + forget) + 1
  if redis.call('TTL', key) < ttl then redis.call('EXPIRE', key, ttl) end
end
local function put(u, r, f, s)
  redis.call('HSET', key, field, string.format('%.6f|%s|%d|%.6f', u, r, f, s))
end
local function prune(forget, limit)
  local all, live, dropped = redis.call('HGETALL', key), {}, 0
  for i = 1, #all, 2 do
    local u, _, _, s = parse(all[i + 1])
    if not (u and s) or (u <= now and forget_at(u, s, forget) <= now) then
      redis.call('HDEL', key, all[i])
      dropped = dropped + 1
    elseif all[i] ~= field then
      live[#live + 1] = {u, all[i]}
    end
  end
  if #live >= limit then
    table.sort(live, function(a, b) return a[1] < b[1] end)
    for i = 1, #live - limit + math.max(1, math.floor(limit / 10)) do
      redis.call('HDEL', key, live[i][2])
      dropped = dropped + 1
    end
  end
  return dropped
end
if op == 'fail' then
  local reason, fixed, hint = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
  local started, base, cap = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
  local jitter, forget, limit = tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[12])
  local full = redis.call('HEXISTS', key, field) == 0 and redis.call('HLEN', key) >= limit
  if ARGV[13] == '1' or full then
    prune(forget, limit)
  end
  local u, r, f, s = parse(redis.call('HGET', key, field))
  if not (u and f and s) then u, r, f, s = 0, reason, 0, 0 end
  if f > 0 and forget_at(u, s, forget) <= now then f = 0 end
  local cooling = u > now
  local stale = started and started < s
  if f == 0 or not (cooling or stale) then f = f + 1 end
  if cooling then
    if hint and now + hint > u then u, r = now + hint, reason end
  else
    if not fixed then fixed = math.min(cap, base * 2 ^ math.min(f - 1, 32)) * jitter end
    u, r, s = now + fixed, reason, now
  end
  put(u, r, f, s)
  keep(u, forget)
  return string.format('%.6f|%s|%d|%.6f', u, r, f, s)
elseif op == 'success' then
  local u = parse(redis.call('HGET', key, field))
  if u and u <= now then return redis.call('HDEL', key, field) end
  return 0
elseif op == 'merge' then
  local u = parse(redis.call('HGET', key, field))
  local mine, r, f, s = parse(ARGV[4])
  if u and u >= mine then return 0 end
  put(mine, r, f, s)
  keep(mine, tonumber(ARGV[5]))
  return 1
elseif op == 'prune' then
  return prune(tonumber(ARGV[4]), tonumber(ARGV[5]))
elseif op == 'reset' then
  local cred, model, n = ARGV[4], ARGV[5], 0
  for _, name in ipairs(redis.call('HKEYS', key)) do
    local at = string.find(name, '\\31', 1, true)
    if at and (cred == '\\0' or string.sub(name, 1, at - 1) == cred)
        and (model == '\\0' or string.sub(name, at + 1) == model) then
      redis.call('HDEL', key, name)
      n = n + 1
    end
  end
  return n
end
return redis.error_reply('unknown op')
"""

_ANY = "\x00"  # "any credential/model" in a reset: no configured id or model name is a NUL


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _value(entry: _Entry) -> str:
    return f"{entry.until:.6f}|{entry.reason}|{entry.failures}|{entry.set_at:.6f}"


class RedisCooldowns(MemoryCooldowns):
    """Cooldowns shared by replicas through one Redis hash (``{prefix}active``), mirrored here.

    Failures, successes and resets run as one atomic script (the escalation rule applied inside
    it, so failures on several replicas at once escalate once) and update the mirror at once; a
    background task started on first use refreshes the mirror every ``refresh`` seconds with one
    ``HGETALL``, so `cooling_until` stays a dict lookup. Times are epoch seconds of the callers'
    clocks: keep replicas NTP-synced.

    Redis unreachable (or slower than ``timeout``): nothing raises into the request path. One
    warning per outage (host and port only: the URL may hold a password), then this replica works
    from its local state and stops waiting on Redis until the refresher reaches it again; it then
    pushes the cooldowns it set meanwhile and shares again.
    """

    def __init__(
        self,
        url_or_client: str | aioredis.Redis | RedisCluster,
        policy: CooldownPolicy | None = None,
        *,
        prefix: str = "llmguard:cooldown:",
        refresh: float = 0.5,
        clock: Callable[[], float] = time.time,
        timeout: float = 0.5,
        max_connections: int = 64,
        **tls_options: str,
    ) -> None:
        super().__init__(policy, clock=clock)
        if not (0 < refresh < math.inf) or not (0 < timeout < math.inf):
            raise ConfigurationError("cooldown store refresh and timeout must be positive")
        if isinstance(url_or_client, str):
            from asgi_llmguard._redis import parse_redis_url, redis_client, split_tls

            tls, unknown = split_tls(tls_options)
            if unknown:
                raise TypeError(f"unexpected keyword arguments: {', '.join(sorted(unknown))}")
            target = parse_redis_url(url_or_client)
            self._where = target.where.split("://", 1)[1].split("/", 1)[0]
            self._redis: aioredis.Redis | RedisCluster = redis_client(
                target, timeout=timeout, max_connections=max_connections, **tls
            )
            self._owned = True
        else:
            kwargs = getattr(url_or_client, "connection_pool", None)
            options = kwargs.connection_kwargs if kwargs is not None else {}
            self._where = f"{options.get('host', 'localhost')}:{options.get('port', 6379)}"
            self._redis = url_or_client
            self._owned = False
        self._key = prefix + "active"
        self._refresh = refresh
        self._timeout = timeout
        self._script: Any = self._redis.register_script(_SCRIPT)
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._down = False
        self._dirty = False
        self._fails = 0

    @classmethod
    def from_url(
        cls, url: str, policy: CooldownPolicy | None = None, **kwargs: Any
    ) -> RedisCooldowns:
        """A store with its own client for ``url`` (``redis://127.0.0.1:6379/0``, ``rediss://``,
        ``redis+cluster://``); ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile`` and
        ``ssl_cert_reqs`` go to the client (`asgi_llmguard._redis.redis_client`)."""
        return cls(url, policy, **kwargs)

    def __repr__(self) -> str:
        return f"RedisCooldowns({self._where!r}, key={self._key!r})"

    # -- the mirror ---------------------------------------------------------------------------

    def _ensure_task(self) -> None:
        if self._task is None and not self._closed:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # no loop yet: started by the first call from one
            self._task = loop.create_task(self._refresher(), name="llmguard-cooldowns-refresh")

    def cooling_until(self, credential_id: str, model: str) -> float | None:
        if self._task is None:
            self._ensure_task()
        return super().cooling_until(credential_id, model)

    async def _call(self, *args: str) -> Any:
        async with asyncio.timeout(self._timeout):
            return await self._script(keys=[self._key], args=list(args))

    def _failed(self, exc: BaseException) -> None:
        if not self._down:
            self._down = True
            logger.warning(
                "cooldown store %s unreachable (%s); using this replica's cooldowns until it "
                "answers again",
                self._where,
                type(exc).__name__,
            )

    async def _refresher(self) -> None:
        me = asyncio.current_task()
        while not self._closed:
            try:
                if self._dirty:
                    await self._push()
                await self.pull()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any Redis or network failure: log once, keep going
                self._failed(exc)
            else:
                if self._down:
                    self._down = False
                    logger.warning("cooldown store %s reachable again", self._where)
            # A cancel that raced with a call's own timeout can surface as TimeoutError (and
            # redis-py may swallow one): check, so that aclose() always ends this loop.
            if self._closed or (me is not None and me.cancelling()):
                return
            await asyncio.sleep(self._refresh)

    async def _push(self) -> None:
        """Share the cooldowns set here while Redis was unreachable (a later one there wins)."""
        self._dirty = False
        forget = repr(self._forget)
        try:
            for credential, models in list(self._entries.items()):
                for model, entry in list(models.items()):
                    if entry.dirty:
                        field = f"{credential}\x1f{model}"
                        now = repr(self._clock())
                        await self._call("merge", now, field, _value(entry), forget)
                        entry.dirty = False
        except BaseException:
            self._dirty = True
            raise

    async def pull(self) -> None:
        """Refresh the mirror from Redis once (the background task does this every
        ``refresh`` seconds). Raises on Redis errors."""
        mark = self._writes
        async with asyncio.timeout(self._timeout):
            data = await self._redis.hgetall(self._key)
        if self._reset_at > mark:
            return  # a reset ran meanwhile: this answer may predate it; the next one will not
        now = self._clock()
        seen: set[tuple[str, str]] = set()
        forgotten = 0
        for raw_field, raw_value in data.items():
            credential, sep, model = _text(raw_field).partition("\x1f")
            try:
                until_s, reason, failures_s, set_at_s = _text(raw_value).split("|")
                until, failures, set_at = float(until_s), int(failures_s), float(set_at_s)
            except ValueError:
                forgotten += 1
                continue
            if not sep or (until <= now and _forget_at(until, set_at, self._forget) <= now):
                forgotten += 1
                continue
            seen.add((credential, model))
            models = self._entries.get(credential)
            entry = models.get(model) if models is not None else None
            if entry is None:
                entry = self._slot(credential, model, now)
            elif entry.stamp > mark or entry.dirty or entry.pending:
                continue  # changed here after the read began, or being written: ours is newer
            entry.until, entry.reason, entry.failures, entry.set_at = (
                until,
                reason,
                failures,
                set_at,
            )
            entry.stamp = mark
        # Entries gone from Redis were reset or pruned there: drop them here too.
        gone = [
            (c, m)
            for c, models in self._entries.items()
            for m, e in models.items()
            if (c, m) not in seen and e.stamp <= mark and not (e.dirty or e.pending)
        ]
        for c, m in gone:
            self._drop(c, m)
        if forgotten:  # Redis prunes when failures are recorded; a quiet hash is pruned here
            await self._call(
                "prune", repr(now), "", repr(self._forget), str(self.policy.max_entries)
            )

    # -- writes -------------------------------------------------------------------------------

    async def record_failure(
        self,
        credential_id: str,
        model: str,
        *,
        status: int | None,
        kind: str | None = None,
        retry_after: float | None = None,
        started: float | None = None,
    ) -> Cooldown | None:
        reason = classify_failure(status, kind)
        if reason is None:
            return None
        self._ensure_task()
        now = self._clock()
        if reason == "auth":
            model = ""
        # Locally first, so this replica stops choosing the pair before Redis answers.
        entry = self._slot(credential_id, model, now)
        fixed = self._fixed(reason, retry_after)
        hint = None if reason == "auth" or retry_after is None else fixed
        jitter = random.uniform(0.9, 1.1)
        self._apply(entry, reason, fixed, hint, started, now, jitter)
        if self._down:
            entry.dirty = self._dirty = True
        else:
            self._fails += 1
            policy = self.policy
            entry.pending += 1
            try:
                answer = await self._call(
                    "fail",
                    repr(now),
                    f"{credential_id}\x1f{model}",
                    reason,
                    "" if fixed is None else repr(fixed),
                    "" if hint is None else repr(hint),
                    "" if started is None else repr(started),
                    repr(policy.base),
                    repr(policy.cap),
                    repr(jitter),
                    repr(self._forget),
                    str(policy.max_entries),
                    "1" if self._fails % _PRUNE_EVERY == 0 else "0",
                )
                until_s, shared_reason, failures_s, set_at_s = _text(answer).split("|")
            except asyncio.CancelledError:
                entry.dirty = self._dirty = True
                raise
            except Exception as exc:  # never into the request path
                entry.dirty = self._dirty = True
                self._failed(exc)
            else:
                entry.dirty = False
                # Newer than any refresh that read Redis before this write landed.
                self._writes += 1
                entry.stamp = self._writes
                # Redis holds the replicas' agreed state: the mirror takes it as it is.
                entry.until, entry.failures = float(until_s), int(failures_s)
                entry.reason, entry.set_at = shared_reason, float(set_at_s)
            finally:
                entry.pending -= 1
        return Cooldown(credential_id, model, entry.until, entry.reason, entry.failures)

    async def _forget_success(self, credential_id: str, model: str, entry: _Entry) -> None:
        self._drop(credential_id, model)
        if self._down:
            return
        try:
            await self._call("success", repr(self._clock()), f"{credential_id}\x1f{model}")
        except Exception as exc:  # not fatal: the count is then forgotten by time
            self._failed(exc)

    async def reset(self, credential_id: str | None = None, model: str | None = None) -> int:
        count = await super().reset(credential_id, model)
        if self._down:
            return count
        try:
            cleared = await self._call(
                "reset",
                repr(self._clock()),
                "",
                _ANY if credential_id is None else credential_id,
                _ANY if model is None else model,
            )
        except Exception as exc:
            self._failed(exc)
            return count
        return max(count, int(cleared))

    async def start(self) -> None:
        """Learn a cluster's slot map ahead of the first failure to share (nothing on one
        server)."""
        from asgi_llmguard._redis import warm_up

        await warm_up(self._redis, within=self._timeout, where=self._where)

    async def aclose(self) -> None:
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._owned:
            await self._redis.aclose()
