"""Cooldowns per (credential, model): a credential that failed rests before it is tried again.

- ``429``: as long as the provider says (``Retry-After`` in seconds or as a date,
  ``retry-after-ms``, OpenAI's ``x-ratelimit-reset-*``, Anthropic's
  ``anthropic-ratelimit-*-reset``), else exponential backoff from ``base`` up to ``cap``;
- ``401``/``402``/``403``: ``auth``, long (the key is wrong, revoked or out of credit);
- ``5xx``: ``server_error``; connection errors and timeouts: ``timeout``.

Failures that arrive together while a cooldown is open do not escalate it twice: only a failure
of an attempt that started after the cooldown was set raises the level. The model ``""`` stands
for every model of the credential.

`MemoryCooldowns` keeps the state in a bounded dict; `RedisCooldowns` shares it between replicas
through one Redis hash, mirrored locally so the hot path (`cooling_until`) never waits on Redis.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from asgi_llmguard.errors import ConfigurationError

if TYPE_CHECKING:
    import redis.asyncio as aioredis

logger = logging.getLogger("asgi_llmguard.forward")

_DAY = 86_400.0
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_RESET_HEADERS = (b"x-ratelimit-reset-requests", b"x-ratelimit-reset-tokens")
_ANTHROPIC_RESETS = (
    b"anthropic-ratelimit-requests-reset",
    b"anthropic-ratelimit-tokens-reset",
    b"anthropic-ratelimit-input-tokens-reset",
    b"anthropic-ratelimit-output-tokens-reset",
)


@dataclass(frozen=True, slots=True)
class CooldownPolicy:
    base: float = 1.0
    cap: float = 300.0
    auth: float = 3600.0
    server_error: float = 5.0
    timeout: float = 5.0
    max_entries: int = 10_000

    def __post_init__(self) -> None:
        for name in ("base", "cap", "auth", "server_error", "timeout"):
            if getattr(self, name) <= 0:
                raise ConfigurationError(f"cooldown {name} must be positive")
        if self.cap < self.base:
            raise ConfigurationError("cooldown cap must be at least base")
        if self.max_entries < 1:
            raise ConfigurationError("cooldown max_entries must be at least 1")


@dataclass(frozen=True, slots=True)
class Cooldown:
    credential_id: str
    model: str
    until: float
    reason: str
    failures: int


def _duration(text: str) -> float | None:
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    total = 0.0
    position = 0
    for match in _DURATION.finditer(text):
        if match.start() != position:
            return None
        value, unit = float(match.group(1)), match.group(2)
        total += value * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]
        position = match.end()
    return total if position == len(text) and position else None


def retry_after_hint(headers: Iterable[tuple[bytes, bytes]], now: float) -> float | None:
    """Seconds to wait as the provider says, the largest of its hints, within [0, 24 h]; ``None``
    when it gave none that parses. Never raises on garbage."""
    best: float | None = None
    for name, raw in headers:
        seconds: float | None = None
        try:
            value = raw.decode("latin-1").strip()
            if name == b"retry-after":
                if value.isdigit() or _is_float(value):
                    seconds = float(value)
                else:
                    parsed = email.utils.parsedate_to_datetime(value)
                    seconds = parsed.timestamp() - now
            elif name == b"retry-after-ms":
                seconds = float(value) / 1000
            elif name in _RESET_HEADERS:
                seconds = _duration(value)
            elif name in _ANTHROPIC_RESETS:
                seconds = datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() - now
        except (ValueError, TypeError, OverflowError, IndexError):
            seconds = None
        if seconds is not None and seconds == seconds:  # not NaN
            seconds = min(max(seconds, 0.0), _DAY)
            if best is None or seconds > best:
                best = seconds
    return best


def _is_float(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def classify_failure(status: int | None, kind: str | None) -> str | None:
    """The reason a failed attempt cools its credential, or ``None`` (not the credential's
    fault: another 4xx, or a success)."""
    if status is None or status == 0:
        return "timeout" if kind in ("connect", "timeout", "broken") else None
    if status == 429:
        return "rate_limited"
    if status in (401, 402, 403):
        return "auth"
    if status >= 500:
        return "server_error"
    return None


class _Entry:
    __slots__ = ("failures", "last_failure", "reason", "set_at", "until")

    def __init__(self) -> None:
        self.until = 0.0
        self.set_at = 0.0
        self.failures = 0
        self.reason = ""
        self.last_failure = 0.0


class MemoryCooldowns:
    """Cooldowns in this process only. Bounded by ``policy.max_entries``; expired entries and
    failure counts nobody refreshed for ``2 * cap`` are pruned as the map is used."""

    def __init__(
        self, policy: CooldownPolicy | None = None, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.policy = policy if policy is not None else CooldownPolicy()
        self._clock = clock
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._operations = 0

    # -- the hot path -------------------------------------------------------------------------

    def cooling_until(self, credential_id: str, model: str) -> float | None:
        entries = self._entries
        if not entries:
            return None
        now = self._clock()
        best: float | None = None
        for key in ((credential_id, model), (credential_id, "")):
            entry = entries.get(key)
            if entry is not None and entry.until > now and (best is None or entry.until > best):
                best = entry.until
        return best

    # -- recording ----------------------------------------------------------------------------

    def _duration(self, reason: str, failures: int, retry_after: float | None) -> float:
        policy = self.policy
        if reason == "rate_limited":
            if retry_after is not None:
                return retry_after
            backoff = min(policy.cap, policy.base * 2.0 ** min(failures - 1, 32))
            return backoff * random.uniform(0.9, 1.1)
        if reason == "auth":
            return policy.auth
        if reason == "server_error":
            return policy.server_error
        return policy.timeout

    def _apply(
        self,
        entry: _Entry,
        reason: str,
        retry_after: float | None,
        started: float | None,
        now: float,
    ) -> None:
        cooling = entry.until > now
        overlapping = cooling or (started is not None and started < entry.set_at)
        if not overlapping or entry.failures == 0:
            entry.failures += 1
        until = now + self._duration(reason, entry.failures, retry_after)
        if not cooling or until > entry.until:
            if not cooling:
                entry.set_at = now
            entry.until = max(until, entry.until)
            entry.reason = reason
        entry.last_failure = now

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
        now = self._clock()
        key = (credential_id, "" if reason == "auth" else model)
        entry = self._entries.get(key)
        if entry is None:
            self._maybe_prune(now, force=len(self._entries) >= self.policy.max_entries)
            entry = self._entries[key] = _Entry()
        self._apply(entry, reason, retry_after, started, now)
        return Cooldown(key[0], key[1], entry.until, entry.reason, entry.failures)

    async def record_success(self, credential_id: str, model: str) -> None:
        entries = self._entries
        if entries:
            entry = entries.get((credential_id, model))
            if entry is not None and entry.until <= self._clock():
                del entries[(credential_id, model)]

    # -- operators ----------------------------------------------------------------------------

    def snapshot(self) -> list[Cooldown]:
        now = self._clock()
        self._maybe_prune(now, force=True)
        active = [
            Cooldown(c, m, e.until, e.reason, e.failures)
            for (c, m), e in self._entries.items()
            if e.until > now
        ]
        return sorted(active, key=lambda c: c.until)

    async def reset(self, credential_id: str | None = None, model: str | None = None) -> int:
        doomed = [
            key
            for key in self._entries
            if (credential_id is None or key[0] == credential_id)
            and (model is None or key[1] == model)
        ]
        for key in doomed:
            del self._entries[key]
        return len(doomed)

    def __len__(self) -> int:
        return len(self._entries)

    async def aclose(self) -> None:
        return None

    def _maybe_prune(self, now: float, *, force: bool = False) -> None:
        self._operations += 1
        if not force and self._operations % 256:
            return
        forget = 2 * self.policy.cap
        entries = self._entries
        stale = [
            key
            for key, e in entries.items()
            if e.until <= now and now - e.last_failure >= min(forget, max(e.until - e.set_at, 0))
        ]
        for key in stale:
            del entries[key]
        overflow = len(entries) - self.policy.max_entries + 1
        if overflow > 0:
            for key in sorted(entries, key=lambda k: entries[k].until)[:overflow]:
                del entries[key]


# The Redis hash field is "credential\x1fmodel"; its value "until|reason|failures|set_at".
_RECORD = """
local now = tonumber(ARGV[1])
local field = ARGV[2]
local until_new = now + tonumber(ARGV[3])
local reason = ARGV[4]
local started = tonumber(ARGV[5])
local hint = ARGV[6]
local base = tonumber(ARGV[7])
local cap = tonumber(ARGV[8])
local ttl = tonumber(ARGV[9])
local cur = redis.call('HGET', KEYS[1], field)
local until_old, failures, set_at = 0, 0, 0
if cur then
  local a, b, c, d = string.match(cur, '([^|]*)|([^|]*)|([^|]*)|([^|]*)')
  until_old, failures, set_at = tonumber(a) or 0, tonumber(c) or 0, tonumber(d) or 0
end
local cooling = until_old > now
if (not cooling and not (started >= 0 and started < set_at)) or failures == 0 then
  failures = failures + 1
end
if reason == 'rate_limited' and hint == '' then
  local backoff = base * 2 ^ math.min(failures - 1, 32)
  if backoff > cap then backoff = cap end
  until_new = now + backoff
end
if not cooling then set_at = now end
local until_final = math.max(until_new, until_old)
redis.call('HSET', KEYS[1], field, until_final .. '|' .. reason .. '|' .. failures .. '|' .. set_at)
redis.call('EXPIRE', KEYS[1], ttl)
return tostring(until_final) .. '|' .. failures
"""


class RedisCooldowns(MemoryCooldowns):
    """Cooldowns shared by replicas through one Redis hash, mirrored in memory.

    Failures and resets go to Redis at once (an atomic script applies the escalation rule there)
    and to the local mirror; a background task refreshes the mirror every ``refresh`` seconds
    with one ``HGETALL``. When Redis is unreachable the replica keeps its local state, logs once
    per outage, and shares again when Redis is back.
    """

    def __init__(
        self,
        url_or_client: str | aioredis.Redis,
        policy: CooldownPolicy | None = None,
        *,
        prefix: str = "llmguard:cooldown:",
        refresh: float = 0.5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(policy, clock=clock)
        import redis.asyncio as aioredis

        if isinstance(url_or_client, str):
            parts = urlsplit(url_or_client)
            self._where = f"{parts.hostname or 'localhost'}:{parts.port or 6379}"
            self._redis: aioredis.Redis = aioredis.Redis.from_url(
                url_or_client, socket_timeout=0.5, socket_connect_timeout=0.5
            )
            self._owned = True
        else:
            self._where = "redis"
            self._redis = url_or_client
            self._owned = False
        self._key = prefix + "active"
        self._refresh = refresh
        self._task: asyncio.Task[None] | None = None
        self._down = False
        self._script: Any = self._redis.register_script(_RECORD)

    @classmethod
    def from_url(cls, url: str, policy: CooldownPolicy | None = None) -> RedisCooldowns:
        return cls(url, policy)

    def _ensure_task(self) -> None:
        if self._task is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self._task = loop.create_task(self._refresher())

    def cooling_until(self, credential_id: str, model: str) -> float | None:
        self._ensure_task()
        return super().cooling_until(credential_id, model)

    def _failed(self, exc: Exception) -> None:
        if not self._down:
            self._down = True
            logger.warning(
                "cooldown store %s unreachable (%s); using local cooldowns",
                self._where,
                type(exc).__name__,
            )

    def _recovered(self) -> None:
        if self._down:
            self._down = False
            logger.warning("cooldown store %s reachable again", self._where)

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
        self._ensure_task()
        local = await super().record_failure(
            credential_id,
            model,
            status=status,
            kind=kind,
            retry_after=retry_after,
            started=started,
        )
        if local is None:
            return None
        now = self._clock()
        policy = self.policy
        duration = max(local.until - now, 0.0)
        try:
            answer = await self._script(
                keys=[self._key],
                args=[
                    repr(now),
                    f"{local.credential_id}\x1f{local.model}",
                    repr(duration),
                    local.reason,
                    repr(started if started is not None else -1),
                    "" if retry_after is None else repr(retry_after),
                    repr(policy.base),
                    repr(policy.cap),
                    int(max(policy.cap, policy.auth) * 2) + 1,
                ],
            )
        except Exception as exc:  # redis errors, timeouts, closed connections
            self._failed(exc)
            return local
        self._recovered()
        text = answer.decode() if isinstance(answer, bytes) else str(answer)
        until_s, failures_s = text.split("|")
        entry = self._entries.get((local.credential_id, local.model))
        if entry is not None:
            entry.until = max(entry.until, float(until_s))
            entry.failures = int(failures_s)
        return Cooldown(
            local.credential_id, local.model, float(until_s), local.reason, int(failures_s)
        )

    async def reset(self, credential_id: str | None = None, model: str | None = None) -> int:
        count = await super().reset(credential_id, model)
        try:
            fields = await self._redis.hkeys(self._key)
            doomed = []
            for raw in fields:
                field = raw.decode() if isinstance(raw, bytes) else str(raw)
                cred, _, mod = field.partition("\x1f")
                if (credential_id is None or cred == credential_id) and (
                    model is None or mod == model
                ):
                    doomed.append(field)
            if doomed:
                await self._redis.hdel(self._key, *doomed)
            count = max(count, len(doomed))
        except Exception as exc:
            self._failed(exc)
        return count

    async def pull(self) -> None:
        """Refresh the local mirror from Redis once (the background task does this)."""
        data = await self._redis.hgetall(self._key)
        now = self._clock()
        seen = set()
        expired = []
        for raw_field, raw_value in data.items():
            field = raw_field.decode() if isinstance(raw_field, bytes) else str(raw_field)
            value = raw_value.decode() if isinstance(raw_value, bytes) else str(raw_value)
            try:
                until_s, reason, failures_s, set_at_s = value.split("|")
                until, failures, set_at = float(until_s), int(failures_s), float(set_at_s)
            except ValueError:
                continue
            if until <= now:
                expired.append(field)
                continue
            cred, _, model = field.partition("\x1f")
            key = (cred, model)
            seen.add(key)
            entry = self._entries.get(key)
            if entry is None:
                if len(self._entries) >= self.policy.max_entries:
                    continue
                entry = self._entries[key] = _Entry()
            if until > entry.until:
                entry.until = until
                entry.reason = reason
                entry.set_at = set_at
                entry.last_failure = set_at
            entry.failures = max(entry.failures, failures)
        # Cooldowns cleared elsewhere (an operator's reset) end here too.
        for key, entry in list(self._entries.items()):
            if key not in seen and entry.until > now and entry.set_at < now - self._refresh * 2:
                entry.until = now
        if expired:
            await self._redis.hdel(self._key, *expired)

    async def _refresher(self) -> None:
        while True:
            try:
                await self.pull()
                self._recovered()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._failed(exc)
            await asyncio.sleep(self._refresh)

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._owned:
            await self._redis.aclose()
