"""The reset operations of the limiter engines and the ledger query on PostgreSQL."""

from __future__ import annotations

import time
import uuid

import pytest

from asgi_llmguard.policy import RateLimit
from asgi_llmguard.ratelimit import RateLimitConfig, create_limiter, parse_limit
from asgi_llmguard.usage.events import UsageEvent
from asgi_llmguard.usage.query import UsageFilter, query_usage
from asgi_llmguard.usage.sinks import PostgresSink, SQLiteSink
from tests.conftest import require_service

LIMIT = parse_limit(RateLimit("2/minute"))


@pytest.mark.parametrize(
    ("algorithm", "storage"),
    [
        ("gcra", "memory://"),
        ("fixed-window", "memory://"),
        ("moving-window", "memory://"),
        ("gcra", "redis://127.0.0.1:6379/0"),
        ("sliding-window-counter", "redis://127.0.0.1:6379/0"),
    ],
)
async def test_reset_refills_a_bucket(algorithm, storage):
    if storage.startswith("redis"):
        require_service("Redis", "127.0.0.1", 6379)
    prefix = f"test-admin-{uuid.uuid4().hex}:"
    limiter = create_limiter(
        RateLimitConfig(algorithm=algorithm, storage=storage, key_prefix=prefix)
    )
    try:
        for _ in range(2):
            assert (await limiter.acquire("k=a|x", LIMIT, 1)).allowed
        assert not (await limiter.acquire("k=a|x", LIMIT, 1)).allowed
        await limiter.reset("k=a|x", LIMIT)
        assert (await limiter.peek("k=a|x", LIMIT)).remaining == 2
        if algorithm == "gcra":  # the token bucket can list its buckets: forget by prefix
            await limiter.acquire("k=a*[|m=gpt|x", LIMIT, 2)
            await limiter.acquire("k=b|x", LIMIT, 2)
            assert await limiter.forget("k=a*[|") == 1
            assert (await limiter.peek("k=a*[|m=gpt|x", LIMIT)).remaining == 2
            assert (await limiter.peek("k=b|x", LIMIT)).remaining == 0
        else:
            assert await limiter.forget("k=a|") is None
    finally:
        await limiter.aclose()


def _events(now: float) -> list[UsageEvent]:
    def ev(rid: str, key: str, model: str, age: float, latency: float, **kw) -> UsageEvent:
        return UsageEvent(
            request_id=rid,
            started_at=now - age,
            key_id=key,
            model=model,
            provider="openai",
            endpoint="chat.completions",
            latency=latency,
            **kw,
        )

    return [
        ev("r1", "a", "m1", 10, 0.1, input_tokens=10, output_tokens=5, cost_nanos=100),
        ev("r2", "a", "m2", 4000, 0.3, input_tokens=20, output_tokens=5, cost_nanos=300),
        ev("r3", "b", "m1", 20, 0.2, input_tokens=1, output_tokens=1, cost_nanos=7),
        ev("r4", "b", "m1", 30, 0.0, outcome="rejected", status=429),
        ev("r5", "b", "m1", 90000, 9.0, cost_nanos=1000),  # outside the range
    ]


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_query_is_the_same_on_both_ledgers(kind, tmp_path):
    now = time.time() // 3600 * 3600 + 1800  # mid-hour: r1, r3, r4 share one hour bucket
    if kind == "postgres":
        require_service("PostgreSQL", "127.0.0.1", 5432)
        schema = f"admin_{uuid.uuid4().hex[:12]}"
        url = f"postgresql://postgres@127.0.0.1:5432/test?schema={schema}"
        sink = PostgresSink("postgresql://postgres@127.0.0.1:5432/test", schema=schema)
    else:
        url = f"sqlite:///{tmp_path}/ledger.sqlite3"
        sink = SQLiteSink(str(tmp_path / "ledger.sqlite3"))
    try:
        await sink.write(_events(now))
        filt = UsageFilter(start=now - 86400, end=now + 1)
        (total,) = await query_usage(url, filt)
        assert (total.requests, total.cost_nanos, total.rejections) == (4, 407, 1)
        assert total.input_tokens + total.output_tokens == 42
        # Over the three attempts that reached an upstream: 0.1, 0.2, 0.3.
        assert total.p50 == pytest.approx(0.2)
        assert total.p99 == pytest.approx(0.298)
        rows = await query_usage(url, filt, by=("key",), bucket="hour")
        got = {(r.bucket, r.group[0]): (r.requests, r.cost_nanos) for r in rows}
        hour = now // 3600 * 3600
        assert got == {(hour - 3600, "a"): (1, 300), (hour, "a"): (1, 100), (hour, "b"): (2, 7)}
        (only,) = await query_usage(url, UsageFilter(now - 86400, key_id="b", model="m1"))
        assert (only.requests, only.cost_nanos) == (2, 7)
    finally:
        if kind == "postgres":
            import asyncpg

            conn = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/test")
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            await conn.close()
        await sink.aclose()
