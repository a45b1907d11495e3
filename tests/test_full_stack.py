"""Every layer together, as build_stack assembles them, behind uvicorn, with the real SDKs.

One key with a model allow-list, a request rate limit and a budget; the ledger in SQLite. The
assertions follow a caller's day: refused without a key, served with one, limited, recorded
exactly once per request, and nothing lost when the gateway shuts down.
"""

from __future__ import annotations

import sqlite3
import time

import anthropic
import httpx
import openai
import pytest

from asgi_llmguard import (
    Budget,
    KeyPolicy,
    MemoryBudgetStore,
    RateLimit,
    SQLiteSink,
    StaticKey,
    StaticKeyStore,
    Upstream,
    UsagePipeline,
    build_stack,
    hash_key,
)
from asgi_llmguard.testing import FakeProvider, serve

CALLER_KEY = "sk-llmg-caller-0123456789abcdefghijklmnopqrstuvwxyz"
UPSTREAM_KEY = "sk-upstream-full-stack-secret"


@pytest.fixture
def gateway(tmp_path):
    fake = FakeProvider(api_key=UPSTREAM_KEY)
    policy = KeyPolicy(
        key_id="team-a",
        models=("gpt-4o*", "claude-haiku-*"),
        rate_limits=(RateLimit("5/minute"),),
        budget=Budget(total=1.0),
        metadata={"team": "a"},
    )
    keys = StaticKeyStore([StaticKey(policy, key_hash=hash_key(CALLER_KEY))])
    ledger = tmp_path / "ledger.sqlite3"
    pipeline = UsagePipeline([SQLiteSink(str(ledger))], spill_path=str(tmp_path / "spill"))
    with serve(fake) as upstream:
        app = build_stack(
            upstreams=[
                Upstream("openai", f"{upstream.url}/v1", api_key=UPSTREAM_KEY, name="oa"),
                Upstream("anthropic", upstream.url, api_key=UPSTREAM_KEY, name="an"),
            ],
            keys=keys,
            usage={"budgets": MemoryBudgetStore()},
            pipeline=pipeline,
        )
        with serve(app) as server:
            yield server, fake, ledger, pipeline


def _rows(ledger) -> list[tuple]:
    if not ledger.exists():
        return []
    with sqlite3.connect(ledger) as db:
        if not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'usage_events'").fetchone():
            return []  # the sink creates its table with its first batch
        return db.execute(
            "SELECT key_id, model, endpoint, outcome, status, input_tokens, output_tokens,"
            " cost_nanos, credential_id FROM usage_events ORDER BY started_at"
        ).fetchall()


def test_a_callers_day_through_every_layer(gateway):
    server, fake, ledger, pipeline = gateway
    base = f"{server.url}/v1"
    client = openai.OpenAI(base_url=base, api_key=CALLER_KEY, max_retries=0)

    # No key, wrong key: 401 from the headers alone, nothing reaches the upstream.
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=base, api_key="sk-wrong", max_retries=0).models.list()
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=server.url, api_key="sk-wrong", max_retries=0).messages.create(
            model="claude-haiku-4-5", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    # A model outside the key's allow-list: 403.
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="o3", messages=[{"role": "user", "content": "x"}])
    assert len(fake.requests) == 0
    unknown = httpx.post(f"{base}/nope", headers={"x-request-id": "trace-77"})
    assert unknown.status_code == 404
    assert unknown.headers["x-request-id"] == "trace-77"  # the classifier's refusals too

    # Served, streamed and not, with the rate-limit headers OpenAI clients read.
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "one two three"}]
    )
    assert raw.headers["x-request-id"].startswith("req_")
    assert raw.headers["x-ratelimit-limit-requests"] == "5"
    assert raw.headers["x-ratelimit-remaining-requests"] == "4"
    assert raw.parse().choices[0].message.content == "Hello from the fake provider."
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "a b"}], stream=True
        )
    )
    assert all(c.usage is None for c in chunks)  # the client did not ask for the usage chunk
    anthropic.Anthropic(base_url=server.url, api_key=CALLER_KEY, max_retries=0).messages.create(
        model="claude-haiku-4-5", max_tokens=50, messages=[{"role": "user", "content": "hey"}]
    )
    # The upstream saw its own credential, never the caller's.
    assert {r.header("authorization") for r in fake.requests if r.path.endswith("completions")} == {
        f"Bearer {UPSTREAM_KEY}"
    }
    assert all(CALLER_KEY not in repr(r.headers) for r in fake.requests)

    # The 6th request within the minute: 429 with Retry-After, and no upstream call.
    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "4"}])
    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "5"}])
    with pytest.raises(openai.RateLimitError) as limited:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "6"}])
    assert int(limited.value.response.headers["retry-after"]) >= 1
    assert len(fake.requests) == 5

    # Exactly one ledger row per request that reached the upstream, with its own numbers.
    deadline = time.monotonic() + 5
    while len(_rows(ledger)) < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    rows = _rows(ledger)
    assert len(rows) == 5
    assert {r[0] for r in rows} == {"team-a"}
    assert [r[3] for r in rows] == ["ok"] * 5
    first = rows[0]
    assert first[1:3] == ("gpt-4o-mini", "chat.completions")
    assert (first[5], first[6]) == (3, FakeProvider.count_tokens("Hello from the fake provider."))
    assert first[7] > 0
    assert {r[8] for r in rows} == {"oa", "an"}
    assert pipeline.stats.dropped == 0


def test_shutdown_drains_the_ledger(tmp_path):
    fake = FakeProvider()
    ledger = tmp_path / "ledger.sqlite3"
    # A long flush interval: events sit in the queue until shutdown drains them.
    pipeline = UsagePipeline(
        [SQLiteSink(str(ledger))], spill_path=str(tmp_path / "spill"), flush_interval=30
    )
    with serve(fake) as upstream:
        app = build_stack(upstreams=[Upstream("openai", f"{upstream.url}/v1")], pipeline=pipeline)
        with serve(app) as server, httpx.Client(base_url=server.url) as http:
            for i in range(20):
                r = http.post(
                    "/v1/chat/completions",
                    json={
                        "model": "gpt-4o-mini",
                        "messages": [{"role": "user", "content": f"{i}"}],
                    },
                )
                assert r.status_code == 200
    # uvicorn's lifespan shutdown ran Gateway.aclose: every event is in the ledger.
    assert len(_rows(ledger)) == 20
    assert pipeline.stats.written == 20
