"""Budgets: atomic reservations (B1), release, settle and expiry (B2), UTC periods, both stores.

The Redis tests use the real server at 127.0.0.1:6379 under a unique key prefix per test and
delete only their own keys.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, multiple, rule

from asgi_llmguard.policy import Budget
from asgi_llmguard.usage.budgets import (
    BudgetExceeded,
    BudgetStore,
    BudgetStoreError,
    MemoryBudgetStore,
    RedisBudgetStore,
    Reservation,
)
from tests.conftest import require_service

pytestmark = pytest.mark.anyio

HOST, PORT = "127.0.0.1", 6379
ROOT = Path(__file__).resolve().parents[2]
USD = 1_000_000_000
CENTS = USD // 100
T = TypeVar("T")


def at(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()  # type: ignore[misc]


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a memory-store call to completion without an event loop: it must never suspend,
    which is what makes check-and-reserve atomic with respect to other coroutines."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coro.close()
    raise AssertionError("the memory store suspended inside an operation")


def new_prefix() -> str:
    return f"test:llmguard:budgets:{uuid.uuid4().hex}:"


async def _delete_prefix(client: Any, prefix: str) -> None:
    keys = [key async for key in client.scan_iter(match=prefix + "*", count=1000)]
    if keys:
        await client.delete(*keys)


@pytest.fixture
def clock() -> FakeClock:
    # In the future of the real clock, 30 s before a UTC midnight that ends a month and a year.
    return FakeClock(at(2031, 12, 31, 23, 59, 30))


@pytest.fixture
async def redis_client() -> AsyncIterator[Any]:
    require_service("Redis", HOST, PORT)
    from redis.asyncio import Redis

    client = Redis(host=HOST, port=PORT)
    prefix = new_prefix()
    client.test_prefix = prefix  # type: ignore[attr-defined]
    try:
        yield client
    finally:
        await _delete_prefix(client, prefix)
        await client.aclose()


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest, clock: FakeClock) -> AsyncIterator[BudgetStore]:
    if request.param == "memory":
        yield MemoryBudgetStore(clock=clock)
        return
    require_service("Redis", HOST, PORT)
    from redis.asyncio import Redis

    client = Redis(host=HOST, port=PORT)
    prefix = new_prefix()
    try:
        yield RedisBudgetStore(client, prefix=prefix, clock=clock)
    finally:
        await _delete_prefix(client, prefix)
        await client.aclose()


# --- B1: concurrent reservations ----------------------------------------------------------------


async def _leave(store: BudgetStore, subject: str, budget: Budget, spent: int) -> None:
    first = await store.reserve(subject, budget, spent)
    assert isinstance(first, Reservation)
    assert await store.settle(first, spent)


async def test_b1_eight_concurrent_reservations_admit_two(store):
    budget = Budget(total=1.00)
    await _leave(store, "key:b1", budget, 90 * CENTS)  # $0.10 left
    outcomes = await asyncio.gather(*(store.reserve("key:b1", budget, 5 * CENTS) for _ in range(8)))
    admitted = [o for o in outcomes if isinstance(o, Reservation)]
    refused = [o for o in outcomes if isinstance(o, BudgetExceeded)]
    assert len(admitted) == 2
    assert len(refused) == 6
    assert refused[0].period == "total"
    assert refused[0].spent_nanos == 90 * CENTS
    assert refused[0].reserved_nanos == 10 * CENTS
    assert refused[0].resets_at is None
    status = (await store.spent("key:b1", budget))["total"]
    assert (status.spent_nanos, status.reserved_nanos, status.remaining_nanos) == (
        90 * CENTS,
        10 * CENTS,
        0,
    )


WORKER = r"""
import asyncio, json, sys
from redis.asyncio import Redis
from asgi_llmguard.policy import Budget
from asgi_llmguard.usage.budgets import RedisBudgetStore, Reservation

async def main():
    prefix, subject = sys.argv[1], sys.argv[2]
    client = Redis(host="127.0.0.1", port=6379)
    store = RedisBudgetStore(client, prefix=prefix, timeout=5)
    await store.spent(subject, Budget(total=1.0))  # connect and load the script
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    outcomes = await asyncio.gather(
        *(store.reserve(subject, Budget(total=1.0), 50_000_000) for _ in range(4))
    )
    print(json.dumps([isinstance(o, Reservation) for o in outcomes]), flush=True)
    await client.aclose()

asyncio.run(main())
"""


async def test_b1_two_processes_share_one_redis_budget(redis_client):
    prefix = redis_client.test_prefix
    budget = Budget(total=1.00)
    await _leave(RedisBudgetStore(redis_client, prefix=prefix), "key:two", budget, 90 * CENTS)
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, prefix, "key:two"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for worker in workers:
            assert worker.stdout is not None
            line = await asyncio.to_thread(worker.stdout.readline)
            assert line.strip() == "ready"
        for worker in workers:  # the shared start signal
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        results = [
            json.loads((await asyncio.to_thread(w.communicate, timeout=30))[0]) for w in workers
        ]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    assert all(w.returncode == 0 for w in workers)
    assert sum(len(r) for r in results) == 8
    assert sum(sum(r) for r in results) == 2
    status = (await RedisBudgetStore(redis_client, prefix=prefix).spent("key:two", budget))["total"]
    assert status.reserved_nanos == 10 * CENTS
    assert status.spent_nanos == 90 * CENTS


# --- B2: release, settle, crash -----------------------------------------------------------------


async def test_b2_release_restores_the_budget(store):
    budget = Budget(daily=0.10)
    held = await store.reserve("key:r", budget, 10 * CENTS)
    assert isinstance(held, Reservation)
    assert isinstance(await store.reserve("key:r", budget, 1), BudgetExceeded)
    assert await store.release(held)
    assert not await store.release(held)
    daily = (await store.spent("key:r", budget))["daily"]
    assert (daily.spent_nanos, daily.reserved_nanos, daily.remaining_nanos) == (0, 0, 10 * CENTS)
    assert isinstance(await store.reserve("key:r", budget, 10 * CENTS), Reservation)


async def test_b2_settle_replaces_the_estimate_exactly_once(store):
    budget = Budget(total=1.0, monthly=0.5)
    held = await store.reserve("key:s", budget, 20 * CENTS)
    assert isinstance(held, Reservation)
    assert await store.settle(held, 3 * CENTS)
    assert not await store.settle(held, 3 * CENTS)
    assert not await store.release(held)
    status = await store.spent("key:s", budget)
    for period in ("total", "monthly"):
        assert status[period].spent_nanos == 3 * CENTS
        assert status[period].reserved_nanos == 0
    assert status["monthly"].remaining_nanos == 47 * CENTS


async def test_b2_actual_above_estimate_is_the_documented_over_spend(store):
    budget = Budget(hourly=0.10)
    held = await store.reserve("key:o", budget, 8 * CENTS)
    assert isinstance(held, Reservation)
    assert await store.settle(held, 15 * CENTS)  # the answer cost more than its estimate
    hourly = (await store.spent("key:o", budget))["hourly"]
    assert hourly.spent_nanos == 15 * CENTS  # limit + (actual - estimate)
    assert hourly.remaining_nanos == 0
    # over the limit: even a free request is refused until the hour ends
    assert isinstance(await store.reserve("key:o", budget, 0), BudgetExceeded)


async def test_b2_crashed_owner_stops_holding_after_ttl_memory(clock):
    store = MemoryBudgetStore(clock=clock, grace=60)
    budget = Budget(total=0.10)
    held = await store.reserve("key:c", budget, 10 * CENTS, ttl=30)
    assert isinstance(held, Reservation)
    clock.advance(29)
    assert isinstance(await store.reserve("key:c", budget, 1), BudgetExceeded)
    clock.advance(1)  # the owner never came back
    assert (await store.spent("key:c", budget))["total"].reserved_nanos == 0
    other = await store.reserve("key:c", budget, 4 * CENTS)
    assert isinstance(other, Reservation)
    # the late owner settles: the spend is still recorded, the hold is not removed twice
    assert await store.settle(held, 6 * CENTS)
    total = (await store.spent("key:c", budget))["total"]
    assert (total.spent_nanos, total.reserved_nanos) == (6 * CENTS, 4 * CENTS)
    assert not await store.settle(held, 6 * CENTS)
    # past the grace period a late settlement is dropped
    lost = await store.reserve("key:c", budget, 0, ttl=1)
    assert isinstance(lost, Reservation)
    clock.advance(2)
    await store.spent("key:c", budget)  # the next operation notices the expiry
    clock.advance(61)
    assert not await store.settle(lost, 1)


async def test_b2_crashed_owner_stops_holding_after_ttl_redis(redis_client):
    store = RedisBudgetStore(redis_client, prefix=redis_client.test_prefix, grace=0.5)
    budget = Budget(total=0.10)
    held = await store.reserve("key:c", budget, 10 * CENTS, ttl=0.2)
    assert isinstance(held, Reservation)
    assert isinstance(await store.reserve("key:c", budget, 1), BudgetExceeded)
    await asyncio.sleep(0.3)
    other = await store.reserve("key:c", budget, 4 * CENTS)
    assert isinstance(other, Reservation)
    assert await store.settle(held, 6 * CENTS)
    assert not await store.settle(held, 6 * CENTS)
    total = (await store.spent("key:c", budget))["total"]
    assert (total.spent_nanos, total.reserved_nanos) == (6 * CENTS, 4 * CENTS)
    lost = await store.reserve("key:c", budget, 0, ttl=0.05)
    assert isinstance(lost, Reservation)
    await asyncio.sleep(0.1)
    await store.spent("key:c", budget)
    await asyncio.sleep(0.6)
    assert not await store.settle(lost, 1)


# --- periods ------------------------------------------------------------------------------------


async def test_daily_limit_resets_at_the_utc_day_boundary(store, clock):
    budget = Budget(daily=0.10)
    await _leave(store, "key:d", budget, 10 * CENTS)
    refused = await store.reserve("key:d", budget, 1)
    assert isinstance(refused, BudgetExceeded)
    assert refused.period == "daily"
    assert refused.resets_at == at(2032, 1, 1)
    clock.advance(29)  # 23:59:59
    assert isinstance(await store.reserve("key:d", budget, 1), BudgetExceeded)
    clock.advance(1)  # 00:00:00 UTC
    daily = (await store.spent("key:d", budget))["daily"]
    assert (daily.window, daily.spent_nanos, daily.remaining_nanos) == ("20320101", 0, 10 * CENTS)
    assert isinstance(await store.reserve("key:d", budget, 10 * CENTS), Reservation)


async def test_hour_month_and_total_across_a_boundary(store, clock):
    budget = Budget(total=1.0, hourly=0.10, monthly=0.20)
    before = await store.reserve("key:p", budget, 10 * CENTS)
    assert isinstance(before, Reservation)
    assert isinstance(await store.reserve("key:p", budget, 1), BudgetExceeded)
    clock.advance(60)  # 2032-01-01 00:00:30: new hour, new month
    # the open reservation belongs to last year's windows: the new ones start empty...
    status = await store.spent("key:p", budget)
    assert status["hourly"].window == "2032010100"
    assert status["monthly"].window == "203201"
    assert status["hourly"].reserved_nanos == 0
    assert status["total"].reserved_nanos == 10 * CENTS
    now = await store.reserve("key:p", budget, 10 * CENTS)
    assert isinstance(now, Reservation)
    # ...and its settlement counts in the total only, not in windows that were not its own
    assert await store.settle(before, 7 * CENTS)
    status = await store.spent("key:p", budget)
    assert status["hourly"].spent_nanos == 0
    assert status["hourly"].reserved_nanos == 10 * CENTS
    assert status["monthly"].reserved_nanos == 10 * CENTS
    assert status["total"].spent_nanos == 7 * CENTS
    assert status["total"].reserved_nanos == 10 * CENTS


# --- the rest of the interface ------------------------------------------------------------------


async def test_subjects_reset_and_unlimited_budgets(store):
    budget = Budget(total=0.05)
    await _leave(store, "key:x", budget, 5 * CENTS)
    assert isinstance(await store.reserve("tag:team:a", budget, 5 * CENTS), Reservation)
    assert isinstance(await store.reserve("key:x", budget, 1), BudgetExceeded)
    held = await store.reserve("key:x", Budget(), 10 * USD)  # no limit at all
    assert isinstance(held, Reservation)
    assert await store.settle(held, 10 * USD)
    await store.reset("key:x")
    assert (await store.spent("key:x", budget))["total"].spent_nanos == 0
    assert isinstance(await store.reserve("key:x", budget, 5 * CENTS), Reservation)
    assert (await store.spent("tag:team:a", budget))["total"].reserved_nanos == 5 * CENTS


async def test_invalid_arguments(store):
    with pytest.raises(ValueError, match="amount"):
        await store.reserve("key:v", Budget(total=1), -1)
    with pytest.raises(ValueError, match="ttl"):
        await store.reserve("key:v", Budget(total=1), 1, ttl=0)


async def test_redis_period_keys_expire_and_totals_are_kept(redis_client):
    store = RedisBudgetStore(redis_client, prefix=redis_client.test_prefix)
    assert isinstance(await store.reserve("key:daily", Budget(daily=1.0), 1, ttl=60), Reservation)
    assert isinstance(
        await store.reserve("key:total", Budget(total=1.0, daily=1.0), 1), Reservation
    )
    now = time.time()
    end_of_day = (now // 86400 + 1) * 86400
    counters = redis_client.test_prefix + "{key:daily}:c"
    ttl = await redis_client.pttl(counters) / 1000
    assert end_of_day - now + 55 < ttl <= end_of_day - now + 61
    assert await redis_client.pttl(redis_client.test_prefix + "{key:total}:c") == -1


async def test_redis_client_with_decoded_responses(redis_client):
    from redis.asyncio import Redis

    client = Redis(host=HOST, port=PORT, decode_responses=True)
    try:
        store = RedisBudgetStore(client, prefix=redis_client.test_prefix)
        held = await store.reserve("key:t", Budget(total=0.01, hourly=0.01), CENTS)
        assert isinstance(held, Reservation)
        refused = await store.reserve("key:t", Budget(total=0.01, hourly=0.01), 1)
        assert isinstance(refused, BudgetExceeded)
        assert (await store.spent("key:t", Budget(hourly=0.01)))["hourly"].reserved_nanos == CENTS
    finally:
        await client.aclose()


async def test_redis_down_or_slow_raises_store_error():
    from redis.asyncio import Redis

    # Nothing listens on port 1.
    down = RedisBudgetStore.from_url(f"redis://{HOST}:1/0", timeout=0.5)
    try:
        with pytest.raises(BudgetStoreError):
            await down.reserve("key:e", Budget(total=1), 1)
    finally:
        await down.aclose()

    # A server that accepts and never answers: the store gives up after its timeout.
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(-1)
        writer.close()

    server = await asyncio.start_server(silent, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    client = Redis(host=HOST, port=port)
    slow = RedisBudgetStore(client, timeout=0.2)
    try:
        for call in (
            slow.reserve("key:e", Budget(total=1), 1),
            slow.spent("key:e", Budget(total=1)),
            slow.reset("key:e"),
        ):
            started = time.perf_counter()
            with pytest.raises(BudgetStoreError):
                await call
            assert time.perf_counter() - started < 1.0
    finally:
        await client.aclose()
        server.close()


async def test_memory_store_evicts_stale_subjects(clock):
    store = MemoryBudgetStore(clock=clock, max_subjects=50)
    daily, total = Budget(daily=1.0), Budget(total=1.0)
    await _leave(store, "key:lifetime", total, CENTS)
    for i in range(300):
        await _leave(store, f"key:{i}", daily, CENTS)
    assert len(store) == 301  # all current: nothing may be forgotten
    clock.advance(86400)
    for i in range(300, 600):
        held = await store.reserve(f"key:{i}", daily, CENTS)
        assert isinstance(held, Reservation)
        assert await store.release(held)
    assert len(store) < 301
    assert (await store.spent("key:lifetime", total))["total"].spent_nanos == CENTS


# --- F1: a property-based model of the memory store ---------------------------------------------

START = at(2031, 6, 30, 22, 0, 0)
LIMITS = Budget(total=1.0, daily=0.3, hourly=0.1)


class MemoryStoreMachine(RuleBasedStateMachine):
    """Random reserve/settle/release/clock sequences against a plain model of the ledger."""

    reservations = Bundle("reservations")

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock(START)
        self.store = MemoryBudgetStore(clock=self.clock, grace=1e12)
        self.open: dict[str, Reservation] = {}
        self.settled: list[tuple[Reservation, int]] = []
        # over-spend allowed by the documented bound: (actual - estimate)+ of settlements, and
        # the whole actual of settlements that came after their reservation expired
        self.excess = 0

    def status(self) -> dict[str, Any]:
        return run(self.store.spent("key:m", LIMITS))

    @rule(
        target=reservations,
        amount=st.integers(0, 6 * CENTS),
        ttl=st.sampled_from([30.0, 600.0, 7200.0]),
    )
    def reserve(self, amount: int, ttl: float) -> Any:
        before = self.status()
        outcome = run(self.store.reserve("key:m", LIMITS, amount, ttl=ttl))
        fits = all(
            p.spent_nanos + p.reserved_nanos + amount <= p.limit_nanos for p in before.values()
        )
        if isinstance(outcome, BudgetExceeded):
            assert not fits
            return multiple()
        assert fits
        self.open[outcome.id] = outcome
        return outcome

    @rule(held=consumes(reservations), actual=st.integers(0, 8 * CENTS))
    def settle(self, held: Reservation, actual: int) -> None:
        assert run(self.store.settle(held, actual))
        del self.open[held.id]
        self.settled.append((held, actual))
        expired = self.clock.now >= held.expires_at
        self.excess += actual if expired else max(0, actual - held.amount_nanos)

    @rule(held=consumes(reservations))
    def release(self, held: Reservation) -> None:
        assert run(self.store.release(held))
        del self.open[held.id]
        assert not run(self.store.settle(held, 1))

    @rule(seconds=st.sampled_from([1.0, 29.0, 600.0, 3600.0, 6 * 3600.0]))
    def tick(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @invariant()
    def ledger_matches_the_model(self) -> None:
        now = self.clock.now
        for period, usage in self.status().items():
            window = f"{period[0]}:{usage.window}"  # t:, h:, d:, m:
            held = [r for r in self.open.values() if window in r.windows and now < r.expires_at]
            spent = [actual for r, actual in self.settled if window in r.windows]
            assert usage.reserved_nanos == sum(r.amount_nanos for r in held) >= 0
            assert usage.spent_nanos == sum(spent) >= 0
            assert usage.spent_nanos + usage.reserved_nanos <= usage.limit_nanos + self.excess

    def teardown(self) -> None:
        for held in list(self.open.values()):
            assert run(self.store.release(held))
        self.open.clear()
        for usage in self.status().values():
            assert usage.reserved_nanos == 0


TestMemoryStoreMachine = MemoryStoreMachine.TestCase
TestMemoryStoreMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)


async def test_reservation_ids_are_unique_and_a_forked_worker_gets_its_own() -> None:
    store = MemoryBudgetStore()
    budget = Budget(total=1.0)
    held = [await store.reserve("key:ids", budget, 1) for _ in range(1000)]
    ids = [r.id for r in held if isinstance(r, Reservation)]
    assert len(set(ids)) == 1000
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a worker forked after the parent made reservations
        try:
            # No event loop in the child (the parent's threads are gone): the in-memory reserve
            # never suspends, so one step of the coroutine runs it to the end.
            step = store.reserve("key:ids", budget, 1)
            try:
                step.send(None)
            except StopIteration as done:
                child = done.value
            os.write(write, child.id.encode() if isinstance(child, Reservation) else b"-")
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child_id = os.read(read, 100).decode()
    os.close(read)
    assert child_id not in ("", "-")
    # Two workers counting from the same prefix would hand out the same ids in a shared store.
    assert child_id[:16] != ids[0][:16]
    assert child_id not in ids
