"""Concurrent requests' Redis checks share pipelines (`asgi_llmguard.redis_batch`), on real Redis.

The batching must change nothing a caller can see: a limit admits exactly as many requests as
before, a budget never over-admits, each call gets its own reply, a caller that gave up is not
charged, and Redis losing its script cache is survived.
"""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio

from asgi_llmguard import Budget, RedisBudgetStore
from asgi_llmguard.policy import RateLimit
from asgi_llmguard.ratelimit import RateLimitConfig, create_limiter
from asgi_llmguard.ratelimit.gcra import RedisGcra
from asgi_llmguard.ratelimit.spec import parse_limit
from asgi_llmguard.redis_batch import ScriptBatcher
from asgi_llmguard.usage.budgets import BudgetExceeded, Reservation

from ._apps import RedisServer

pytestmark = pytest.mark.anyio

ECHO = "return {KEYS[1], ARGV[1]}"


async def test_200_concurrent_checks_admit_exactly_the_limit_in_a_few_round_trips(
    shared_redis: str, prefix: str
) -> None:
    limiter = create_limiter(RateLimitConfig(storage=shared_redis, key_prefix=prefix))
    assert isinstance(limiter, RedisGcra)
    limit = parse_limit(RateLimit("50/minute"))
    try:
        decisions = await asyncio.gather(
            *(limiter.acquire("k=batch|rpm", limit, 1.0) for _ in range(200))
        )
        admitted = sum(d.allowed for d in decisions)
        assert admitted == 50
        # Every refusal says how long to wait; every admission how much is left.
        assert all(d.retry_after > 0 for d in decisions if not d.allowed)
        assert sorted(d.remaining for d in decisions if d.allowed) == list(range(50))
        batcher = limiter._batch
        assert batcher.calls == 200
        assert batcher.batches <= 20, batcher  # the calls shared pipelines
    finally:
        await limiter.aclose()


async def test_each_caller_gets_its_own_reply_in_order(shared_redis: str, prefix: str) -> None:
    client = redis.asyncio.Redis.from_url(shared_redis)
    batcher = ScriptBatcher(client)
    script = batcher.register(ECHO)
    try:
        replies = await asyncio.gather(
            *(batcher.call(script, [f"{prefix}{i}"], [str(i)]) for i in range(100))
        )
        assert replies == [[f"{prefix}{i}".encode(), str(i).encode()] for i in range(100)]
        assert batcher.batches < 100
    finally:
        await batcher.aclose()
        await client.aclose()


async def test_a_caller_that_gave_up_before_its_batch_left_is_not_sent(
    shared_redis: str, prefix: str
) -> None:
    client = redis.asyncio.Redis.from_url(shared_redis)
    batcher = ScriptBatcher(client)
    script = batcher.register("return redis.call('INCR', KEYS[1])")
    try:
        gone = batcher.call(script, [f"{prefix}n"], [])
        gone.cancel()
        kept = await batcher.call(script, [f"{prefix}n"], [])
        assert kept == 1  # only the caller still waiting was counted
        assert await client.get(f"{prefix}n") == b"1"
    finally:
        await client.delete(f"{prefix}n")
        await batcher.aclose()
        await client.aclose()


async def test_a_lost_script_cache_is_reloaded_and_the_calls_answered(
    own_redis: RedisServer,
) -> None:
    client = redis.asyncio.Redis.from_url(own_redis.url)
    batcher = ScriptBatcher(client)
    script = batcher.register(ECHO)
    try:
        assert await batcher.call(script, ["a"], ["1"]) == [b"a", b"1"]
        await client.script_flush()  # what a Redis restart does to the cache
        replies = await asyncio.gather(*(batcher.call(script, ["b"], [str(i)]) for i in range(5)))
        assert replies == [[b"b", str(i).encode()] for i in range(5)]
    finally:
        await batcher.aclose()
        await client.aclose()


async def test_a_dead_redis_fails_every_call_of_the_batch_quickly(own_redis: RedisServer) -> None:
    client = redis.asyncio.Redis.from_url(own_redis.url, socket_connect_timeout=0.2)
    batcher = ScriptBatcher(client, timeout=0.5)
    script = batcher.register(ECHO)
    try:
        assert await batcher.call(script, ["a"], ["1"]) == [b"a", b"1"]
        own_redis.kill()
        loop = asyncio.get_running_loop()
        started = loop.time()
        results = await asyncio.gather(
            *(batcher.call(script, ["a"], [str(i)]) for i in range(10)), return_exceptions=True
        )
        assert all(isinstance(r, Exception) for r in results), results
        assert loop.time() - started < 2.0
    finally:
        await batcher.aclose()
        await client.aclose()


async def test_concurrent_reservations_never_exceed_the_budget(
    shared_redis: str, prefix: str
) -> None:
    store = RedisBudgetStore.from_url(shared_redis, prefix=prefix)
    budget = Budget(total=0.10)
    try:
        outcomes = await asyncio.gather(
            *(store.reserve("key:batch", budget, 5_000_000) for _ in range(100))  # $0.005 each
        )
        held = [o for o in outcomes if isinstance(o, Reservation)]
        assert len(held) == 20  # $0.10 / $0.005, exactly
        assert all(isinstance(o, BudgetExceeded) for o in outcomes if o not in held)
        assert store._batch.batches < 100
        settled = await asyncio.gather(*(store.settle(r, 1_000_000) for r in held))
        assert all(settled)
        spent = await store.spent("key:batch", budget)
        assert spent["total"].spent_nanos == 20 * 1_000_000
        assert spent["total"].reserved_nanos == 0
    finally:
        await store.reset("key:batch")
        await store.aclose()


async def test_a_closed_batcher_refuses_new_calls(shared_redis: str) -> None:
    client = redis.asyncio.Redis.from_url(shared_redis)
    batcher = ScriptBatcher(client)
    script = batcher.register(ECHO)
    await batcher.aclose()
    with pytest.raises(ConnectionError):
        await batcher.call(script, ["a"], ["1"])
    await client.aclose()


async def test_a_call_fails_at_its_own_deadline_while_redis_is_stalled(
    own_redis: RedisServer,
) -> None:
    client = redis.asyncio.Redis.from_url(own_redis.url)
    batcher = ScriptBatcher(client, timeout=3.0)
    script = batcher.register(ECHO)
    stall = redis.asyncio.Redis.from_url(own_redis.url)
    try:
        assert await batcher.call(script, ["a"], ["1"]) == [b"a", b"1"]
        sleeping = asyncio.ensure_future(stall.execute_command("DEBUG", "SLEEP", "1.5"))
        await asyncio.sleep(0.1)  # Redis is now busy for 1.5 s
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(TimeoutError):
            await batcher.call(script, ["a"], ["2"], timeout=0.2)
        assert 0.15 < loop.time() - started < 0.6
        await sleeping
        # The batch that was stuck is answered once Redis is back; later calls work.
        assert await batcher.call(script, ["b"], ["3"], timeout=2.0) == [b"b", b"3"]
    finally:
        await batcher.aclose()
        await client.aclose()
        await stall.aclose()


def test_a_batcher_used_again_under_a_new_event_loop_still_answers(shared_redis: str) -> None:
    # One process, two event loops one after the other (two `asyncio.run`, as a CLI command or a
    # test does): the connection and the sending state of the first must not leak into the second.
    client = redis.asyncio.Redis.from_url(shared_redis)
    batcher = ScriptBatcher(client)
    script = batcher.register(ECHO)

    async def first() -> list[bytes]:
        reply = await batcher.call(script, ["a"], ["1"])
        batcher.call(script, ["a"], ["lost with its loop"])  # still queued when the loop ends
        return reply

    async def second() -> list[bytes]:
        try:
            return await batcher.call(script, ["b"], ["2"], timeout=2.0)
        finally:
            await batcher.aclose()
            await client.aclose()

    assert asyncio.run(first()) == [b"a", b"1"]
    assert asyncio.run(second()) == [b"b", b"2"]
