"""Cooldowns per (credential, model): a credential that failed rests before it is tried again.

- ``429``: as long as the provider says (``Retry-After`` in seconds or as a date,
  ``retry-after-ms``, OpenAI's ``x-ratelimit-reset-*``, Anthropic's
  ``anthropic-ratelimit-*-reset``), else exponential backoff from ``base`` up to ``cap``, with
  +-10 % jitter so replicas and credentials do not all come back in the same instant;
- ``401``/``402``/``403``: ``auth``, long, and for every model of the credential (model ``""``):
  a key that is wrong, revoked or out of credit is so whatever the model;
- ``5xx``: ``server_error`` (or the provider's ``Retry-After``, which a 503 may carry);
  connection errors, timeouts and broken connections: ``timeout``.

Failures that arrive together do not escalate twice: a failure while the pair is cooling, or of
an attempt that began before the current cooldown was set, keeps the level and can only lengthen
the cooldown when the provider's hint says later. The level is remembered after the cooldown ends
(so the next ``429`` backs off longer) for as long as that cooldown lasted, at most ``2 * cap``;
a success forgets it at once.

`MemoryCooldowns` keeps the state in a bounded dict; `RedisCooldowns`
(`asgi_llmguard.forward.shared_cooldowns`) shares it between replicas through one Redis hash,
mirrored locally so the hot path (`cooling_until`) never waits on Redis.
"""

from __future__ import annotations

import email.utils
import heapq
import logging
import math
import random
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import msgspec

from asgi_llmguard.errors import ConfigurationError

if TYPE_CHECKING:
    pass

__all__ = [
    "Cooldown",
    "CooldownPolicy",
    "MemoryCooldowns",
    "classify_failure",
    "retry_after_hint",
]

logger = logging.getLogger("asgi_llmguard.forward")

_DAY = 86_400.0
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_RESET_HEADERS = (b"x-ratelimit-reset-requests", b"x-ratelimit-reset-tokens")
_ANTHROPIC_RESETS = (
    b"anthropic-ratelimit-requests-reset",
    b"anthropic-ratelimit-tokens-reset",
    b"anthropic-ratelimit-input-tokens-reset",
    b"anthropic-ratelimit-output-tokens-reset",
)
# Full prunes run at least this often (in recorded failures), so memory of old failures fades
# even while the map is far below its bound.
_PRUNE_EVERY = 1024


class CooldownPolicy(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How long a credential rests after each kind of failure, in seconds
    (``[routing.cooldowns]``)."""

    base: float = 1.0
    cap: float = 300.0
    auth: float = 3600.0
    server_error: float = 5.0
    timeout: float = 5.0
    max_entries: int = 10_000

    def __post_init__(self) -> None:
        for name in ("base", "cap", "auth", "server_error", "timeout"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not (0 < value < math.inf):
                raise ConfigurationError(
                    f"cooldown {name} must be a positive number of seconds, not {value!r}"
                )
        if self.cap < self.base:
            raise ConfigurationError(
                f"cooldown cap ({self.cap}) must be at least base ({self.base})"
            )
        if not isinstance(self.max_entries, int) or self.max_entries < 1:
            raise ConfigurationError(
                f"cooldown max_entries must be a positive integer, not {self.max_entries!r}"
            )


@dataclass(frozen=True, slots=True)
class Cooldown:
    credential_id: str
    #: The model without thinking suffix; ``""`` = every model of the credential.
    model: str
    #: Seconds since the epoch.
    until: float
    #: ``rate_limited``, ``auth``, ``server_error`` or ``timeout``.
    reason: str
    #: Consecutive failures: the escalation level.
    failures: int


# ------------------------------------------------------------------------ the provider's hints


def _go_duration(text: str) -> float | None:
    """OpenAI's reset durations (Go's ``time.Duration`` format): ``1s``, ``6m0s``, ``20ms``."""
    total = 0.0
    position = 0
    for match in _DURATION.finditer(text):
        if match.start() != position:
            return None
        total += float(match.group(1)) * _UNITS[match.group(2)]
        position = match.end()
    return total if position and position == len(text) else None


def _hint(name: bytes, value: str, now: float) -> float | None:
    if name == b"retry-after":
        try:
            return float(value)
        except ValueError:
            return email.utils.parsedate_to_datetime(value).timestamp() - now
    if name == b"retry-after-ms":
        return float(value) / 1000
    if name in _RESET_HEADERS:
        try:
            return float(value)
        except ValueError:
            return _go_duration(value)
    if name in _ANTHROPIC_RESETS:
        stamp = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if stamp.tzinfo is None:
            return None  # RFC 3339 requires an offset; a naive time would be read as local
        return stamp.timestamp() - now
    return None


def retry_after_hint(headers: Iterable[tuple[bytes, bytes]], now: float) -> float | None:
    """Seconds to wait as the provider says: the largest of its hints, within [0, 24 h]; ``None``
    when it gave none that parses. ``now`` is epoch seconds (for dates). Never raises on garbage:
    a provider's malformed header must not fail the request that carried it."""
    best: float | None = None
    for name, raw in headers:
        try:
            seconds = _hint(name, raw.decode("latin-1").strip(), now)
        except (ValueError, TypeError, OverflowError, IndexError, AttributeError):
            continue
        if seconds is None or seconds != seconds:  # NaN
            continue
        seconds = min(max(seconds, 0.0), _DAY)
        if best is None or seconds > best:
            best = seconds
    return best


def classify_failure(status: int | None, kind: str | None) -> str | None:
    """The reason a failed attempt cools its credential, or ``None``: not the credential's fault
    (another 4xx is the request's fault; a success is none)."""
    if status is None or status == 0:
        return "timeout" if kind in ("connect", "timeout", "broken") else None
    if status == 429:
        return "rate_limited"
    if status in (401, 402, 403):
        return "auth"
    if 500 <= status <= 599:
        return "server_error"
    return None


# ----------------------------------------------------------------------------- in memory


class _Entry:
    __slots__ = ("dirty", "failures", "pending", "reason", "set_at", "stamp", "until")

    def __init__(self) -> None:
        self.until = 0.0
        self.set_at = 0.0
        self.failures = 0
        self.reason = ""
        #: The store's write counter when this entry last changed here (see RedisCooldowns).
        self.stamp = 0
        #: Changed here while the shared store was unreachable: to be pushed to it.
        self.dirty = False
        #: Writes of this entry to the shared store still in flight.
        self.pending = 0


def _forget_at(until: float, set_at: float, forget: float) -> float:
    """When an expired entry's failure count stops mattering: it is remembered for as long as
    its cooldown lasted, at most ``forget`` (``2 * cap``). The same rule runs in Redis."""
    return until + min(forget, max(until - set_at, 0.0))


class MemoryCooldowns:
    """Cooldowns in this process only. At most ``policy.max_entries`` entries; expired ones are
    pruned as the map is used (every so many failures, when it is full, and by `snapshot`), and
    when it is still full the soonest-expiring are evicted.

    The map is ``credential -> model -> entry``: the hot-path lookups need no key tuple, so they
    allocate nothing. ``clock`` gives epoch seconds (injectable for tests).
    """

    def __init__(
        self, policy: CooldownPolicy | None = None, *, clock: Callable[[], float] = time.time
    ) -> None:
        if policy is not None and not isinstance(policy, CooldownPolicy):
            raise ConfigurationError(f"policy must be a CooldownPolicy, not {type(policy)!r}")
        self.policy = policy if policy is not None else CooldownPolicy()
        self._clock = clock
        self._forget = 2 * self.policy.cap
        self._entries: dict[str, dict[str, _Entry]] = {}
        self._count = 0
        self._ops = 0
        self._writes = 0
        self._reset_at = 0

    # -- the hot path -------------------------------------------------------------------------

    def cooling_until(self, credential_id: str, model: str) -> float | None:
        """Until when (epoch) ``(credential, model)`` rests, counting a credential-wide entry;
        ``None`` when it does not. Synchronous and allocation-free: called per candidate."""
        models = self._entries.get(credential_id)
        if models is None:
            return None
        now = self._clock()
        best: float | None = None
        entry = models.get(model)
        if entry is not None and entry.until > now:
            best = entry.until
        if model:
            entry = models.get("")
            if entry is not None and entry.until > now and (best is None or entry.until > best):
                best = entry.until
        return best

    # -- recording ----------------------------------------------------------------------------

    def _fixed(self, reason: str, retry_after: float | None) -> float | None:
        """The duration the policy or the provider sets; ``None``: exponential backoff."""
        if reason == "auth":
            return self.policy.auth
        if retry_after is not None:
            return min(max(retry_after, 0.0), _DAY)
        if reason == "server_error":
            return self.policy.server_error
        if reason == "timeout":
            return self.policy.timeout
        return None

    def _apply(
        self,
        entry: _Entry,
        reason: str,
        fixed: float | None,
        hint: float | None,
        started: float | None,
        now: float,
        jitter: float,
    ) -> None:
        """The escalation rule (the Redis script mirrors it line by line)."""
        if entry.failures and _forget_at(entry.until, entry.set_at, self._forget) <= now:
            entry.failures = 0
        cooling = entry.until > now
        stale = started is not None and started < entry.set_at
        if entry.failures == 0 or not (cooling or stale):
            entry.failures += 1
        if cooling:
            if hint is not None and now + hint > entry.until:
                entry.until = now + hint
                entry.reason = reason
        else:
            if fixed is None:
                policy = self.policy
                fixed = min(policy.cap, policy.base * 2.0 ** min(entry.failures - 1, 32)) * jitter
            entry.until = now + fixed
            entry.set_at = now
            entry.reason = reason

    def _slot(self, credential_id: str, model: str, now: float) -> _Entry:
        models = self._entries.get(credential_id)
        entry = models.get(model) if models is not None else None
        if entry is None:
            self._ops += 1
            if self._count >= self.policy.max_entries or self._ops >= _PRUNE_EVERY:
                self._prune(now)
            entry = _Entry()
            self._entries.setdefault(credential_id, {})[model] = entry
            self._count += 1
        self._writes += 1
        entry.stamp = self._writes
        return entry

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
        """Start or extend the cooldown a failed attempt calls for; ``None`` when the failure is
        not the credential's fault. ``started``: when the attempt began (epoch)."""
        reason = classify_failure(status, kind)
        if reason is None:
            return None
        now = self._clock()
        if reason == "auth":
            model = ""
        entry = self._slot(credential_id, model, now)
        hint = None if reason == "auth" or retry_after is None else self._fixed(reason, retry_after)
        jitter = random.uniform(0.9, 1.1)
        self._apply(entry, reason, self._fixed(reason, retry_after), hint, started, now, jitter)
        return Cooldown(credential_id, model, entry.until, entry.reason, entry.failures)

    async def record_success(self, credential_id: str, model: str) -> None:
        """Forget the failures of ``(credential, model)``. Called on every success, so with no
        entry it is two dict lookups. A cooldown still running is kept: the success is of an
        attempt that began before it and says nothing about the provider's limit now."""
        models = self._entries.get(credential_id)
        if models is not None:
            entry = models.get(model)
            if entry is not None and entry.until <= self._clock():
                await self._forget_success(credential_id, model, entry)

    async def _forget_success(self, credential_id: str, model: str, entry: _Entry) -> None:
        self._drop(credential_id, model)

    # -- operators ----------------------------------------------------------------------------

    def snapshot(self) -> list[Cooldown]:
        """Active cooldowns, soonest to end first. Prunes what has expired and been forgotten."""
        now = self._clock()
        self._prune(now)
        active = [
            Cooldown(credential, model, e.until, e.reason, e.failures)
            for credential, models in self._entries.items()
            for model, e in models.items()
            if e.until > now
        ]
        active.sort(key=lambda c: c.until)
        return active

    async def reset(self, credential_id: str | None = None, model: str | None = None) -> int:
        """Clear the entries matching ``credential_id`` and ``model`` (``None``: any); returns
        how many there were."""
        self._writes += 1
        self._reset_at = self._writes
        return self._reset_local(credential_id, model)

    def _reset_local(self, credential_id: str | None, model: str | None) -> int:
        doomed = [
            (c, m)
            for c, models in self._entries.items()
            if credential_id is None or c == credential_id
            for m in models
            if model is None or m == model
        ]
        for c, m in doomed:
            self._drop(c, m)
        return len(doomed)

    def __len__(self) -> int:
        """Entries held, including expired ones not pruned yet."""
        return self._count

    async def aclose(self) -> None:
        return None

    # -- bounds -------------------------------------------------------------------------------

    def _drop(self, credential_id: str, model: str) -> None:
        models = self._entries.get(credential_id)
        if models is not None and models.pop(model, None) is not None:
            self._count -= 1
            if not models:
                del self._entries[credential_id]

    def _prune(self, now: float) -> None:
        """Drop forgotten entries; if the map is still full, evict the soonest-expiring tenth
        (a batch, so the next inserts need no prune: amortised O(log n) each)."""
        self._ops = 0
        forget = self._forget
        stale = [
            (c, m)
            for c, models in self._entries.items()
            for m, e in models.items()
            if e.until <= now and _forget_at(e.until, e.set_at, forget) <= now
        ]
        for c, m in stale:
            self._drop(c, m)
        limit = self.policy.max_entries
        if self._count >= limit:
            excess = self._count - limit + max(1, limit // 10)
            items = (
                (e.until, c, m) for c, models in self._entries.items() for m, e in models.items()
            )
            for _, c, m in heapq.nsmallest(excess, items):
                self._drop(c, m)
