"""A circuit breaker per upstream credential.

Cooldowns react to a credential that fails; the breaker reacts to one that fails *often*: when,
over the last ``window`` seconds and at least ``min_requests`` outcomes, the share of failures
reaches ``failure_ratio``, the breaker opens and the credential gets no traffic for ``open_for``
seconds. Then it is half-open: exactly one probe request is let through; its success closes the
breaker (and clears the window), its failure opens it again.

Outcomes are counted in ten buckets per window, so memory is constant per credential; the map is
keyed by credential ids, which come from configuration (and is capped all the same). In memory,
per process: each replica judges the upstream by the traffic it sends it.

In half-open the probe is the one caller `allow` said yes to; outcomes reported while no probe is
out belong to requests admitted before the breaker opened and change nothing. A probe that never
reports (a bug, or a task killed without ``finally``) cannot wedge the breaker: after ``open_for``
another probe is let through.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import msgspec

from asgi_llmguard.errors import ConfigurationError

_BUCKETS = 10
_MAX_UPSTREAMS = 10_000


class BreakerPolicy(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """When the breaker opens, and for how long (``[routing.breaker]``): see the module doc."""

    window: float = 30.0
    min_requests: int = 20
    failure_ratio: float = 0.5
    open_for: float = 30.0

    def __post_init__(self) -> None:
        for name in ("window", "open_for"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0 < value < math.inf:
                raise ConfigurationError(
                    f"breaker {name} must be a positive number of seconds, not {value!r}"
                )
        if not isinstance(self.min_requests, int) or self.min_requests < 1:
            raise ConfigurationError(
                f"breaker min_requests must be a positive integer, not {self.min_requests!r}"
            )
        if not isinstance(self.failure_ratio, int | float) or not 0 < self.failure_ratio <= 1:
            raise ConfigurationError(
                f"breaker failure_ratio must be in (0, 1], not {self.failure_ratio!r}"
            )


class _State:
    __slots__ = ("failures", "opened_at", "probe_at", "probing", "slots", "state", "totals")

    def __init__(self) -> None:
        self.state = "closed"
        self.opened_at = 0.0
        self.probing = False
        self.probe_at = 0.0
        # Bucket index (absolute: time // width) per slot, and its counts.
        self.slots = [-1] * _BUCKETS
        self.totals = [0] * _BUCKETS
        self.failures = [0] * _BUCKETS


class CircuitBreaker:
    """Breakers by upstream name (credential id). All methods are synchronous and cheap."""

    def __init__(
        self, policy: BreakerPolicy | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.policy = policy if policy is not None else BreakerPolicy()
        self._clock = clock
        self._width = self.policy.window / _BUCKETS
        self._states: dict[str, _State] = {}

    def _get(self, upstream: str) -> _State:
        state = self._states.get(upstream)
        if state is None:
            if len(self._states) >= _MAX_UPSTREAMS:
                # Names come from configuration; this only guards against misuse. A closed
                # breaker forgets least (its window); an open one is kept when there is a choice.
                victim = next(
                    (k for k, v in self._states.items() if v.state == "closed"),
                    next(iter(self._states)),
                )
                del self._states[victim]
            state = self._states[upstream] = _State()
        return state

    def _advance(self, state: _State, now: float) -> None:
        if state.state == "open" and now - state.opened_at >= self.policy.open_for:
            state.state = "half_open"
            state.probing = False

    def state(self, upstream: str) -> str:
        state = self._states.get(upstream)
        if state is None:
            return "closed"
        self._advance(state, self._clock())
        return state.state

    def allow(self, upstream: str) -> bool:
        """Whether a request may go to ``upstream`` now. In half-open, ``True`` for one caller
        at a time: the probe, which must end with `record` or `release`."""
        state = self._states.get(upstream)
        if state is None:
            return True
        now = self._clock()
        self._advance(state, now)
        if state.state == "closed":
            return True
        if state.state == "open":
            return False
        if state.probing and now - state.probe_at < self.policy.open_for:
            return False
        state.probing = True
        state.probe_at = now
        return True

    def release(self, upstream: str) -> None:
        """A request that ended without an outcome (the client left): frees the probe slot."""
        state = self._states.get(upstream)
        if state is not None:
            state.probing = False

    def record(self, upstream: str, ok: bool) -> None:
        now = self._clock()
        state = self._get(upstream)
        self._advance(state, now)
        if state.state == "half_open":
            if not state.probing:
                return  # not the probe: a request admitted before the breaker opened
            state.probing = False
            if ok:
                self._close(state)
            else:
                state.state = "open"
                state.opened_at = now
            return
        if state.state == "open":
            return  # a request admitted before it opened: its outcome changes nothing
        bucket = int(now // self._width)
        slot = bucket % _BUCKETS
        if state.slots[slot] != bucket:
            state.slots[slot] = bucket
            state.totals[slot] = 0
            state.failures[slot] = 0
        state.totals[slot] += 1
        if not ok:
            state.failures[slot] += 1
            oldest = bucket - _BUCKETS + 1
            total = failures = 0
            for i in range(_BUCKETS):
                if state.slots[i] >= oldest:
                    total += state.totals[i]
                    failures += state.failures[i]
            policy = self.policy
            if total >= policy.min_requests and failures >= policy.failure_ratio * total:
                state.state = "open"
                state.opened_at = now

    @staticmethod
    def _close(state: _State) -> None:
        state.state = "closed"
        state.slots = [-1] * _BUCKETS
        state.totals = [0] * _BUCKETS
        state.failures = [0] * _BUCKETS

    def snapshot(self) -> dict[str, str]:
        """Breakers that are not closed, by upstream."""
        out = {}
        for name in list(self._states):
            current = self.state(name)
            if current != "closed":
                out[name] = current
        return out

    def reset(self, upstream: str | None = None) -> int:
        """Close breakers (one, or all); returns how many were not closed."""
        names = [upstream] if upstream is not None else list(self._states)
        count = 0
        for name in names:
            state = self._states.pop(name, None)
            if state is not None and state.state != "closed":
                count += 1
        return count
