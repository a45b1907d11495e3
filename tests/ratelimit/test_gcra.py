"""The token bucket (GCRA): invariants under random traffic, in memory and on the real Redis."""

from __future__ import annotations

import asyncio
import time

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from asgi_llmguard.errors import ConfigurationError
from asgi_llmguard.policy import RateLimit
from asgi_llmguard.ratelimit import (
    MemoryGcra,
    RateLimitConfig,
    RedisGcra,
    create_limiter,
    parse_limit,
)


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def run(coro):
    return asyncio.run(coro)


def check_admitted_bound(events, rate, burst):
    """For every window of admitted events: cost <= rate x elapsed + burst."""
    admitted = [(t0, t1, cost) for t0, t1, cost, ok in events if ok]
    for i in range(len(admitted)):
        total = 0.0
        for j in range(i, len(admitted)):
            total += admitted[j][2]
            elapsed = admitted[j][1] - admitted[i][0]
            assert total <= rate * elapsed + burst + 1e-6, (i, j, total, elapsed)


limit_specs = st.sampled_from(
    [
        RateLimit("10/second"),
        RateLimit("60/minute", burst=5),
        RateLimit("1000/minute", kind="tokens"),
        RateLimit("3/second", burst=1),
        RateLimit("100000/minute", kind="tokens", burst=20000),
    ]
)
traffic = st.lists(
    st.tuples(
        st.floats(min_value=0, max_value=2.0, allow_nan=False),  # seconds since the previous
        st.integers(min_value=1, max_value=4000),  # cost, scaled down to the limit below
        st.sampled_from(["acquire", "charge", "peek"]),
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(spec=limit_specs, steps=traffic)
def test_memory_gcra_never_admits_more_than_rate_times_time_plus_burst(spec, steps):
    limit = parse_limit(spec)
    clock = FakeClock()
    limiter = MemoryGcra(clock=clock)
    rate = limit.amount / limit.period
    acquired = []

    async def go():
        for gap, raw, op in steps:
            clock.now += gap
            cost = 1 + raw % max(1, limit.burst)
            if op == "acquire":
                d = await limiter.acquire("k", limit, cost)
                acquired.append((clock.now, clock.now, cost, d.allowed))
                assert 0 <= d.remaining <= limit.burst
                assert d.retry_after >= 0
                assert d.reset_after >= 0
                assert d.allowed == (d.retry_after == 0)
            elif op == "charge":
                await limiter.charge("k", limit, cost)
            else:
                d = await limiter.peek("k", limit)
                assert d.allowed == (d.remaining >= 1)

    run(go())
    # Charges only push the bucket further into debt, so whatever was charged in between,
    # the admitted acquisitions alone never beat the bound.
    check_admitted_bound(acquired, rate, limit.burst)


@settings(max_examples=200, deadline=None)
@given(
    spec=limit_specs,
    debt_factor=st.floats(min_value=0.0, max_value=5.0),
    cost_raw=st.integers(min_value=1, max_value=10_000),
)
def test_memory_gcra_debt_delays_later_admissions_exactly(spec, debt_factor, cost_raw):
    limit = parse_limit(spec)
    clock = FakeClock()
    limiter = MemoryGcra(clock=clock)
    debt = debt_factor * limit.burst
    cost = 1 + cost_raw % limit.burst
    wait = max(0.0, (debt + cost) * limit.interval - limit.tolerance)
    assume(wait == 0 or wait > 1e-6)  # below that, float noise decides, not the algorithm

    async def go():
        await limiter.charge("k", limit, debt)
        first = await limiter.acquire("k", limit, cost)
        if wait == 0:  # the debt still fits in the bucket
            assert first.allowed
            return
        assert not first.allowed
        assert first.retry_after == pytest.approx(wait, rel=1e-9, abs=1e-9)
        clock.now += wait - 1e-7
        assert not (await limiter.acquire("k", limit, cost)).allowed
        clock.now += 1e-7 + 1e-8
        assert (await limiter.acquire("k", limit, cost)).allowed

    run(go())


def test_full_bucket_admits_exactly_the_burst_then_drips_back():
    limit = parse_limit(RateLimit("60/minute", burst=10))
    clock = FakeClock()
    limiter = MemoryGcra(clock=clock)

    async def go():
        got = [(await limiter.acquire("k", limit, 1)).allowed for _ in range(12)]
        assert got == [True] * 10 + [False] * 2
        d = await limiter.peek("k", limit)
        assert d.remaining == 0
        assert d.retry_after == pytest.approx(1.0)
        assert d.reset_after == pytest.approx(10.0)
        clock.now += 1.0
        assert (await limiter.acquire("k", limit, 1)).allowed
        assert not (await limiter.acquire("k", limit, 1)).allowed
        # A refund gives units back, but never more than a full bucket.
        await limiter.charge("k", limit, -100)
        assert (await limiter.peek("k", limit)).remaining == 10
        assert limiter.size == 0  # a full bucket needs no entry

    run(go())


def test_memory_map_is_bounded_and_swept():
    limit = parse_limit(RateLimit("10/second"))
    clock = FakeClock()
    limiter = MemoryGcra(clock=clock, max_keys=2000)

    async def go():
        for i in range(50_000):
            await limiter.acquire(f"ip:{i}", limit, 1)
            assert limiter.size <= 2000
        clock.now += 10  # every bucket is full again: entries carry no information
        await limiter.acquire("fresh", limit, 1)
        for i in range(1100):
            await limiter.acquire(f"late:{i}", limit, 1)
        assert limiter.size == 1101  # the old, full buckets were swept out

    run(go())


def test_bad_specs_are_refused_with_a_message():
    for spec, words in [
        (RateLimit("ten per minute"), "amount per period"),
        (RateLimit("1/second;5/minute"), "give each its own"),
        (RateLimit("0/minute"), "positive"),
        (RateLimit("5/minute", burst=0), "burst"),
        (RateLimit("5/minute", models=()), "models"),
    ]:
        with pytest.raises(ConfigurationError, match=words):
            parse_limit(spec)
    with pytest.raises(ConfigurationError, match="algorithm"):
        RateLimitConfig(algorithm="leaky")
    with pytest.raises(ConfigurationError, match="storage"):
        RateLimitConfig(storage="memcached://x:1")
    with pytest.raises(ConfigurationError, match="redis_timeout"):
        RateLimitConfig(redis_timeout=0)
    config = RateLimitConfig(storage="redis://user:hunter2@127.0.0.1:6379/0")
    assert "hunter2" not in repr(config)


def test_model_globs():
    limit = parse_limit(RateLimit("5/minute", models=("gpt-4o*", "claude-3-5-sonnet")))
    assert limit.matches_model("gpt-4o-mini")
    assert limit.matches_model("claude-3-5-sonnet")
    assert not limit.matches_model("claude-3-5-sonnet-latest")
    assert not limit.matches_model(None)
    assert limit.needs_model


# --- the Lua variant, on the real Redis, against real time --------------------------------


@pytest.mark.redis
@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    steps=st.lists(
        st.tuples(st.floats(min_value=0, max_value=0.01), st.integers(1, 4)),
        min_size=5,
        max_size=40,
    )
)
def test_redis_gcra_never_admits_more_than_rate_times_time_plus_burst(shared_redis, steps):
    limit = parse_limit(RateLimit("200/second", burst=8))
    rate = limit.amount / limit.period

    async def go():
        import uuid

        limiter = create_limiter(
            RateLimitConfig(storage=shared_redis, key_prefix=f"llmguard-test:{uuid.uuid4().hex}:")
        )
        assert isinstance(limiter, RedisGcra)
        events = []
        try:
            for gap, cost in steps:
                await asyncio.sleep(gap)
                before = time.monotonic()
                d = await limiter.acquire("k", limit, cost)
                events.append((before, time.monotonic(), cost, d.allowed))
        finally:
            await limiter.aclose()
        return events

    events = run(go())
    assert any(ok for *_, ok in events)
    check_admitted_bound(events, rate, limit.burst)


@pytest.mark.redis
def test_redis_gcra_burst_debt_refund_and_expiry(shared_redis, prefix):
    limit = parse_limit(RateLimit("100/second", burst=10))

    async def go():
        limiter = create_limiter(RateLimitConfig(storage=shared_redis, key_prefix=prefix))
        raw = __import__("redis").asyncio.Redis.from_url(shared_redis)
        try:
            got = [(await limiter.acquire("b", limit, 1)).allowed for _ in range(11)]
            assert got == [True] * 10 + [False]
            ttl = await raw.pttl(prefix + "b")
            assert 0 < ttl <= 101  # the key vanishes when the bucket is full again
            await limiter.charge("b", limit, 20)  # 20 units of debt: 200 ms more
            d = await limiter.acquire("b", limit, 1)
            assert not d.allowed
            assert 0.15 < d.retry_after <= 0.31
            await asyncio.sleep(d.retry_after + 0.01)
            assert (await limiter.acquire("b", limit, 1)).allowed
            await limiter.charge("b", limit, -1000)  # refund: back to a full bucket
            assert (await limiter.peek("b", limit)).remaining == 10
            assert await raw.exists(prefix + "b") == 0
        finally:
            await limiter.aclose()
            await raw.aclose()

    run(go())


def test_redis_admit_checks_every_bucket_in_one_step_all_or_nothing(shared_redis, prefix):
    requests = parse_limit(RateLimit("100/second", burst=10))
    tokens = parse_limit(RateLimit("3000/minute", kind="tokens", burst=50))

    async def go():
        limiter = create_limiter(RateLimitConfig(storage=shared_redis, key_prefix=prefix))
        raw = __import__("redis").asyncio.Redis.from_url(shared_redis)
        try:
            both = [("r", requests, 1.0, True), ("t", tokens, 40.0, True)]
            assert [d.allowed for d in await limiter.admit(both)] == [True, True]
            refused = await limiter.admit(both)  # 10 tokens left: the token bucket refuses
            assert [d.allowed for d in refused] == [True, False]
            assert refused[1].retry_after > 0
            # ...and the request bucket took nothing: still 9 of 10
            assert (await limiter.peek("r", requests)).remaining == 9
            peeking = [("r", requests, 1.0, True), ("t", tokens, 0.0, False)]
            assert all(d.allowed for d in await limiter.admit(peeking))
            assert (await limiter.peek("r", requests)).remaining == 8
            assert (await limiter.peek("t", tokens)).remaining == 10  # a peek takes nothing
            assert await raw.exists(prefix + "t") == 1
            # the same answers as one call per bucket would give
            one = await limiter.acquire("r", requests, 1.0)
            many = await limiter.admit([("r", requests, 1.0, True), ("t", tokens, 0.0, False)])
            assert one.remaining - 1 == many[0].remaining
        finally:
            await limiter.aclose()
            await raw.aclose()

    run(go())
