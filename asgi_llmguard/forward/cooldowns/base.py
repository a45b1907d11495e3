"""What every cooldown store shares: the policy, the failure classes, the provider's reset hints,
and one entry's state."""

from __future__ import annotations

import email.utils
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import msgspec

from asgi_llmguard.errors import ConfigurationError
from asgi_llmguard.providers.base import ResetParser

_DAY = 86_400.0
_NO_RESETS: Mapping[bytes, ResetParser] = {}
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


def _hint(name: bytes, value: str, now: float, resets: Mapping[bytes, ResetParser]) -> float | None:
    if name == b"retry-after":
        try:
            return float(value)
        except ValueError:
            return email.utils.parsedate_to_datetime(value).timestamp() - now
    if name == b"retry-after-ms":
        return float(value) / 1000
    parse = resets.get(name)
    return parse(value, now) if parse is not None else None


def retry_after_hint(
    headers: Iterable[tuple[bytes, bytes]],
    now: float,
    resets: Mapping[bytes, ResetParser] = _NO_RESETS,
) -> float | None:
    """Seconds to wait as the provider says: the largest of its hints, within [0, 24 h]; ``None``
    when it gave none that parses. ``now`` is epoch seconds (for dates). ``resets``: the
    provider's own reset headers (`Provider.reset_headers`), beyond ``retry-after`` and
    ``retry-after-ms``. Never raises on garbage: a provider's malformed header must not fail the
    request that carried it."""
    best: float | None = None
    for name, raw in headers:
        try:
            seconds = _hint(name, raw.decode("latin-1").strip(), now, resets)
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
