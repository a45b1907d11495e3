"""`MemoryCooldowns`: cooldowns in one process, in a bounded dict."""

from __future__ import annotations

import heapq
import random
import time
from collections.abc import Callable
from typing import Any

from asgi_llmguard.errors import ConfigurationError
from asgi_llmguard.forward.cooldowns.base import (
    _DAY,
    _PRUNE_EVERY,
    Cooldown,
    CooldownPolicy,
    _Entry,
    _forget_at,
    classify_failure,
)
from asgi_llmguard.lifecycle import Resource


class MemoryCooldowns(Resource):
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

    @classmethod
    def from_url(
        cls, url: str, policy: CooldownPolicy | None = None, **options: Any
    ) -> MemoryCooldowns:
        """The store for ``memory://``, as `asgi_llmguard.stores.cooldown_store` builds it:
        ``clock`` is used; the options only a shared store has are ignored."""
        clock = options.get("clock", time.time)
        return cls(policy, clock=clock)

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
