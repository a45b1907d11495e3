"""What every budget store shares: the records, the period windows, and the `BudgetStore`
interface."""

from __future__ import annotations

import abc
import functools
from datetime import UTC, datetime
from typing import Literal

import msgspec

from asgi_llmguard.context import UniqueIds
from asgi_llmguard.lifecycle import Resource
from asgi_llmguard.policy import Budget
from asgi_llmguard.usage.pricing import usd_to_nanos

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


class BudgetOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How the usage layer holds budgets: ``UsageMiddleware(budget_options=...)``, and the
    ``[budgets]`` section of the config file (which adds where the store is).

    - ``on_error``: ``"closed"`` refuses (503) and ``"open"`` admits when the store cannot be
      reached.
    - ``reservation_ttl``: seconds a reservation holds money if it is never settled (a crashed
      worker); longer than your longest request.
    - ``default_max_output_tokens``: the output assumed for a reservation when the request sets
      no limit.
    - ``tags``: extra budgets by key metadata, e.g. ``{"team:ml": Budget(monthly=500)}``
      applies to every key whose metadata has ``team = "ml"``.
    """

    on_error: Literal["open", "closed"] = "closed"
    reservation_ttl: float = 900.0
    default_max_output_tokens: int = 4096
    tags: dict[str, Budget] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.on_error not in ("open", "closed"):
            raise ValueError("on_error must be 'open' or 'closed'")
        if self.default_max_output_tokens <= 0:
            raise ValueError("default_max_output_tokens must be positive")
        if not self.reservation_ttl > 0:
            raise ValueError("reservation_ttl must be > 0")


class BudgetStore(Resource, abc.ABC):
    """Where budgets are kept. Every method raises `BudgetStoreError` when the store fails.

    A `Resource`: ``start`` (optional: stores connect on first use) and ``aclose``, or
    ``async with store:``."""

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
