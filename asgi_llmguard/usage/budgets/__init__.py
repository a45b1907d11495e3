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

Backends, one per module: `MemoryBudgetStore` (`.memory`) and `RedisBudgetStore` (`.redis`);
`budget_store(url)` picks one by URL.
"""

from asgi_llmguard.usage.budgets.base import (
    BudgetExceeded,
    BudgetOptions,
    BudgetStore,
    BudgetStoreError,
    Period,
    PeriodUsage,
    Reservation,
)
from asgi_llmguard.usage.budgets.memory import MemoryBudgetStore
from asgi_llmguard.usage.budgets.redis import RedisBudgetStore

__all__ = [
    "BudgetExceeded",
    "BudgetOptions",
    "BudgetStore",
    "BudgetStoreError",
    "MemoryBudgetStore",
    "Period",
    "PeriodUsage",
    "RedisBudgetStore",
    "Reservation",
]
