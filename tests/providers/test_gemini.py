"""The Gemini API spoken natively: the google-genai SDK -> gateway (uvicorn) -> fake upstream.

Every layer as `build_stack` assembles them, a key restricted to Gemini models, the ledger in
SQLite. Token numbers come from the fake's rule (a token is a word), not from the gateway.
"""

from __future__ import annotations

import asyncio
import logging
import time

import httpx
import orjson
import pytest
from google import genai
from google.genai import errors, types

from asgi_llmguard import (
    Budget,
    KeyPolicy,
    MemoryBudgetStore,
    Routing,
    SQLiteSink,
    StaticKey,
    StaticKeyStore,
    Upstream,
    UsagePipeline,
    build_stack,
    hash_key,
)
from asgi_llmguard.testing import FakeProvider, serve, serve_async
from tests.ledger import ledger_rows

CALLER_KEY = "sk-llmg-gemini-caller-0123456789abcdefghijklmnop"
UPSTREAM_KEY = "AIza-upstream-gemini-secret-key"
REPLY = "Hello from the fake provider."
WORDS = FakeProvider.count_tokens(REPLY)
MODEL = "gemini-2.5-flash"
# gemini-2.5-flash's shipped list prices, USD per million tokens.
INPUT, CACHED, OUTPUT = 0.3, 0.03, 2.5


def nanos(uncached: int, cached: int, output: int) -> int:
    return round(uncached * INPUT * 1000 + cached * CACHED * 1000 + output * OUTPUT * 1000)


@pytest.fixture
def gateway(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="asgi_llmguard.access")
    fake = FakeProvider(api_key=UPSTREAM_KEY)
    policy = KeyPolicy(
        key_id="gem", models=("gemini-2.5-*", "gemini-embedding-*"), budget=Budget(total=1.0)
    )
    keys = StaticKeyStore([StaticKey(policy, key_hash=hash_key(CALLER_KEY))])
    ledger = tmp_path / "ledger.sqlite3"
    pipeline = UsagePipeline([SQLiteSink(str(ledger))], spill_path=str(tmp_path / "spill"))
    with serve(fake) as upstream:
        app = build_stack(
            upstreams=[Upstream("gemini", upstream.url, api_key=UPSTREAM_KEY, name="gm")],
            keys=keys,
            usage={"budgets": MemoryBudgetStore()},
            pipeline=pipeline,
        )
        with serve(app) as server:
            yield server, fake, ledger, pipeline, upstream.url


def client(url: str, key: str = CALLER_KEY, **headers: str) -> genai.Client:
    return genai.Client(
        api_key=key,
        http_options=types.HttpOptions(base_url=url, headers=headers or None),
    )


def rows(ledger, pipeline, count: int) -> list[dict]:
    return ledger_rows(ledger, count)


def test_generate_content_is_served_and_recorded_exactly(gateway):
    server, fake, ledger, pipeline, _ = gateway
    gemini = client(server.url, **{"x-fake-cached-tokens": "1", "x-fake-reasoning-tokens": "4"})
    out = gemini.models.generate_content(model=MODEL, contents="one two three")
    assert out.text == REPLY
    usage = out.usage_metadata
    assert (usage.prompt_token_count, usage.candidates_token_count) == (3, WORDS)
    # The upstream got its own key, in Google's header, and never the caller's.
    sent = fake.requests[-1]
    assert sent.path == f"/v1/models/{MODEL}:generateContent"  # the SDK's default with a base_url
    assert sent.header("x-goog-api-key") == UPSTREAM_KEY
    assert CALLER_KEY not in repr(sent.headers) + sent.query_string
    (row,) = rows(ledger, pipeline, 1)
    assert (row["provider"], row["endpoint"], row["model"], row["served_model"]) == (
        "gemini",
        "generateContent",
        MODEL,
        MODEL,
    )
    assert (row["input_tokens"], row["cached_input_tokens"]) == (3, 1)
    # Thinking is output, priced as output, and recorded as reasoning.
    assert (row["output_tokens"], row["reasoning_tokens"]) == (WORDS + 4, 4)
    assert row["cost_nanos"] == nanos(2, 1, WORDS + 4)
    assert (row["outcome"], row["status"], row["stream"], row["key_id"]) == ("ok", 200, 0, "gem")


def test_generate_content_stream_over_sse(gateway):
    server, fake, ledger, pipeline, _ = gateway
    gemini = client(server.url)
    pieces = list(
        gemini.models.generate_content_stream(model=MODEL, contents="alpha beta gamma delta")
    )
    assert "".join(p.text for p in pieces) == REPLY
    assert len(pieces) == WORDS
    assert fake.requests[-1].query_string == "alt=sse"
    (row,) = rows(ledger, pipeline, 1)
    assert (row["endpoint"], row["stream"], row["estimated"]) == ("streamGenerateContent", 1, 0)
    assert (row["input_tokens"], row["output_tokens"]) == (4, WORDS)
    assert row["cost_nanos"] == nanos(4, 0, WORDS)


def test_stream_as_a_json_array_is_relayed_unchanged_and_metered(gateway):
    server, _, ledger, pipeline, upstream_url = gateway
    body = {"contents": [{"role": "user", "parts": [{"text": "a b"}]}]}
    path = f"/v1beta/models/{MODEL}:streamGenerateContent"
    with httpx.Client() as http:
        through = http.post(server.url + path, json=body, headers={"x-goog-api-key": CALLER_KEY})
        direct = http.post(upstream_url + path, json=body, headers={"x-goog-api-key": UPSTREAM_KEY})
    assert through.status_code == 200
    assert through.headers["content-type"].startswith("application/json")
    pieces = orjson.loads(through.content)
    assert "".join(p["candidates"][0]["content"]["parts"][0]["text"] for p in pieces) == REPLY
    assert through.content == direct.content  # the bytes as the upstream wrote them
    row = rows(ledger, pipeline, 1)[0]
    assert (row["input_tokens"], row["output_tokens"], row["stream"]) == (2, WORDS, 1)


def test_count_tokens_and_embeddings(gateway):
    server, _, ledger, pipeline, _ = gateway
    gemini = client(server.url)
    counted = gemini.models.count_tokens(model=MODEL, contents="one two three four five")
    assert counted.total_tokens == 5
    embedded = gemini.models.embed_content(
        model="gemini-embedding-001", contents=["one two", "three"]
    )
    assert len(embedded.embeddings) == 2
    assert embedded.embeddings[0].values[0] == pytest.approx(0.2)
    counting, embedding = rows(ledger, pipeline, 2)
    # Counting is recorded, never billed: no tokens consumed, the count as counted_token units.
    assert (counting["endpoint"], counting["model"], counting["cost_nanos"]) == (
        "countTokens",
        MODEL,
        0,
    )
    assert (counting["input_tokens"], counting["output_tokens"], counting["estimated"]) == (0, 0, 0)
    assert (counting["units"], counting["unit"]) == (5, "counted_token")
    # The Gemini API reports no tokens for embeddings: the gateway's estimate is billed, and
    # flagged as an estimate.
    assert (embedding["endpoint"], embedding["model"]) == (
        "batchEmbedContents",
        "gemini-embedding-001",
    )
    assert embedding["estimated"] == 1
    assert embedding["cost_nanos"] == round(embedding["input_tokens"] * 0.15 * 1000) > 0


def test_a_wrong_key_gets_googles_error_shape(gateway):
    server, fake, _, _, _ = gateway
    wrong = client(server.url, key="sk-wrong")
    with pytest.raises(errors.ClientError) as raised:
        wrong.models.generate_content(model=MODEL, contents="x")
    assert raised.value.code == 401
    assert raised.value.status == "UNAUTHENTICATED"
    # A model outside the key's allow-list, named in the path: 403 PERMISSION_DENIED.
    gemini = client(server.url)
    with pytest.raises(errors.ClientError) as raised:
        gemini.models.generate_content(model="gemini-2.0-flash", contents="x")
    assert (raised.value.code, raised.value.status) == (403, "PERMISSION_DENIED")
    no_key = httpx.post(f"{server.url}/v1beta/models/{MODEL}:generateContent", json={})
    assert no_key.status_code == 401
    assert no_key.json()["error"]["status"] == "UNAUTHENTICATED"
    assert len(fake.requests) == 0


def test_a_key_in_the_url_is_used_then_forgotten(gateway, caplog):
    server, fake, ledger, pipeline, _ = gateway
    body = {"contents": [{"parts": [{"text": "one two"}]}]}
    answer = httpx.post(
        f"{server.url}/v1beta/models/{MODEL}:generateContent?key={CALLER_KEY}&alt=json",
        json=body,
    )
    assert answer.status_code == 200, answer.text
    assert fake.requests[-1].query_string == "alt=json"
    (row,) = rows(ledger, pipeline, 1)
    assert row["key_id"] == "gem"
    assert CALLER_KEY not in repr(row)
    assert CALLER_KEY not in ledger.read_bytes().decode("latin-1")
    logged = caplog.text + "".join(r.getMessage() for r in caplog.records)
    assert "asgi_llmguard.access" in {r.name for r in caplog.records}
    assert CALLER_KEY not in logged


def test_rate_limited_upstream_cools_down_for_googles_retry_delay():
    """Google says how long to wait in the 429's body (``RetryInfo.retryDelay``), not in a
    header: each credential rests that long."""
    fake = FakeProvider(api_key=UPSTREAM_KEY, status=429, retry_after=30)
    with serve(fake) as upstream:
        app = build_stack(
            upstreams=[
                Upstream("gemini", upstream.url, api_key=UPSTREAM_KEY, name="gm-1"),
                Upstream("gemini", upstream.url, api_key=UPSTREAM_KEY, name="gm-2"),
            ],
            usage=None,
        )
        with serve(app) as server:
            gemini = client(server.url)
            with pytest.raises(errors.ClientError) as raised:
                gemini.models.generate_content(model=MODEL, contents="x")
            assert (raised.value.code, raised.value.status) == (429, "RESOURCE_EXHAUSTED")
            assert "RetryInfo" in str(raised.value.details)  # Google's body, relayed as is
            assert len(fake.requests) == 2  # both credentials tried once
            cooling = app.forwarder.cooldowns.snapshot()
            assert {c.credential_id for c in cooling} == {"gm-1", "gm-2"}
            assert all(25 < c.until - time.time() <= 30 for c in cooling)
            # Both rest: the next request is refused at once, in Google's shape.
            with pytest.raises(errors.ClientError) as raised:
                gemini.models.generate_content(model=MODEL, contents="x")
            assert (raised.value.code, raised.value.status) == (429, "RESOURCE_EXHAUSTED")
            assert len(fake.requests) == 2


def test_a_key_in_the_url_of_a_passthrough_path_is_not_forwarded():
    fake = FakeProvider(api_key=UPSTREAM_KEY)
    policy = KeyPolicy(key_id="gem")
    keys = StaticKeyStore([StaticKey(policy, key_hash=hash_key(CALLER_KEY))])
    with serve(fake) as upstream:
        app = build_stack(
            upstreams=[Upstream("gemini", upstream.url, api_key=UPSTREAM_KEY)],
            keys=keys,
            usage=None,
            passthrough="gemini",
        )
        with serve(app) as server:
            answer = httpx.get(f"{server.url}/v1/cachedContents?key={CALLER_KEY}&pageSize=5")
    assert answer.status_code == 404  # the fake has no cachedContents: its own 404
    assert answer.json()["error"]["status"] == "NOT_FOUND"
    (sent,) = fake.requests
    assert (sent.path, sent.query_string) == ("/v1/cachedContents", "pageSize=5")
    assert sent.header("x-goog-api-key") == UPSTREAM_KEY


def test_a_stream_the_upstream_breaks_ends_with_an_error_the_sdk_raises(gateway):
    server, _, ledger, pipeline, _ = gateway
    gemini = client(server.url, **{"x-fake-reset-after-chunks": "2"})
    received: list[str] = []

    def read_all() -> None:
        for piece in gemini.models.generate_content_stream(model=MODEL, contents="a b c"):
            received.append(piece.text)

    with pytest.raises(errors.APIError) as raised:
        read_all()
    assert (raised.value.code, raised.value.status) == (500, "INTERNAL")
    assert received == FakeProvider.reply_chunks(REPLY)[:2]
    (row,) = rows(ledger, pipeline, 1)
    assert (row["outcome"], row["stream"]) == ("upstream_error", 1)
    assert row["input_tokens"] == 3  # the last usageMetadata that arrived
    assert row["output_tokens"] == 2


def test_a_thinking_suffix_in_the_path_is_removed_upstream(gateway):
    server, fake, ledger, pipeline, _ = gateway
    answer = httpx.post(
        f"{server.url}/v1beta/models/{MODEL}(high):generateContent",
        json={"contents": [{"parts": [{"text": "one"}]}]},
        headers={"x-goog-api-key": CALLER_KEY},
    )
    assert answer.status_code == 200, answer.text
    assert fake.requests[-1].path == f"/v1beta/models/{MODEL}:generateContent"
    (row,) = rows(ledger, pipeline, 1)
    assert (row["model"], row["input_tokens"]) == (f"{MODEL}(high)", 1)
    assert row["cost_nanos"] == nanos(1, 0, WORDS)


def test_a_json_array_stream_the_upstream_breaks_ends_with_googles_error_element(gateway):
    """Without ``alt=sse`` the answer is one JSON array: a break ends it with a last
    ``{"error": ...}`` element and ``]``, so any JSON parser reads a whole array and sees why."""
    server, _, ledger, pipeline, _ = gateway
    body = {"contents": [{"role": "user", "parts": [{"text": "a b c"}]}]}
    with httpx.Client() as http:
        through = http.post(
            f"{server.url}/v1beta/models/{MODEL}:streamGenerateContent",
            json=body,
            headers={"x-goog-api-key": CALLER_KEY, "x-fake-reset-after-chunks": "2"},
        )
    assert through.status_code == 200
    *pieces, last = orjson.loads(through.content)  # a complete array
    texts = [p["candidates"][0]["content"]["parts"][0]["text"] for p in pieces]
    assert texts == FakeProvider.reply_chunks(REPLY)[:2]
    assert last["error"]["code"] == 500
    assert last["error"]["status"] == "INTERNAL"
    assert last["error"]["message"]
    (row,) = rows(ledger, pipeline, 1)
    assert (row["outcome"], row["stream"]) == ("upstream_error", 1)
    assert (row["input_tokens"], row["output_tokens"]) == (3, 2)  # the last usageMetadata seen
    assert row["cost_nanos"] == nanos(3, 0, 2)


def test_resource_exhausted_rests_only_that_credential_for_its_retry_delay():
    """A pool of two: the first answers 429 RESOURCE_EXHAUSTED with ``retryDelay: "7s"``, the
    second serves the request, and only the first rests, for about 7 seconds."""
    exhausted = FakeProvider(api_key=UPSTREAM_KEY, status=429, retry_after=7)
    healthy = FakeProvider(api_key=UPSTREAM_KEY)
    with serve(exhausted) as first, serve(healthy) as second:
        app = build_stack(
            upstreams=[
                Upstream("gemini", first.url, api_key=UPSTREAM_KEY, name="gm-1"),
                Upstream("gemini", second.url, api_key=UPSTREAM_KEY, name="gm-2"),
            ],
            routing=Routing(selector="fill-first"),
            usage=None,
        )
        with serve(app) as server:
            gemini = client(server.url)
            assert gemini.models.generate_content(model=MODEL, contents="x").text == REPLY
            assert (len(exhausted.requests), len(healthy.requests)) == (1, 1)
            (cooling,) = app.forwarder.cooldowns.snapshot()
            assert cooling.credential_id == "gm-1"
            assert 5 < cooling.until - time.time() <= 7
            # While it rests, the next request goes straight to the second.
            assert gemini.models.generate_content(model=MODEL, contents="y").text == REPLY
            assert (len(exhausted.requests), len(healthy.requests)) == (1, 2)


async def test_a_json_array_stream_past_the_shutdown_grace_ends_with_an_error_element(tmp_path):
    ledger = tmp_path / "ledger.sqlite3"
    pipeline = UsagePipeline([SQLiteSink(str(ledger))], spill_path=str(tmp_path / "spill"))
    fake = FakeProvider(api_key=UPSTREAM_KEY)
    body = {"contents": [{"role": "user", "parts": [{"text": "a long story"}]}]}
    with serve(fake) as upstream:
        gateway = build_stack(
            upstreams=[Upstream("gemini", upstream.url, api_key=UPSTREAM_KEY)], pipeline=pipeline
        )
        async with (
            serve_async(gateway) as server,
            httpx.AsyncClient(base_url=server.url, timeout=30) as http,
        ):
            chunks: list[bytes] = []

            async def read() -> None:
                async with http.stream(
                    "POST",
                    f"/v1beta/models/{MODEL}:streamGenerateContent",
                    json=body,
                    headers={
                        "x-goog-api-key": UPSTREAM_KEY,  # no key store: any key passes
                        "x-fake-chunk-delay": "0.05",
                        "x-fake-chunks": "400",
                    },
                ) as resp:
                    async for chunk in resp.aiter_bytes():
                        chunks.append(chunk)

            reader = asyncio.create_task(read())
            while len(chunks) < 3:
                await asyncio.sleep(0.01)
            assert await gateway.drain(0.2) == 1
            await reader
        fake.wait_until(lambda: fake.active_streams == 0, 5.0)
    *pieces, last = orjson.loads(b"".join(chunks))  # still one well-formed array
    assert len(pieces) >= 3
    assert (last["error"]["code"], last["error"]["status"]) == (503, "UNAVAILABLE")
    assert "shutting down" in last["error"]["message"]
    (row,) = rows(ledger, pipeline, 1)
    assert (row["outcome"], row["reason"]) == ("cancelled", "shutdown")
    assert (row["input_tokens"], row["output_tokens"]) == (3, len(pieces))


def test_a_json_array_stream_the_upstream_ends_early_ends_with_an_error_element(gateway):
    """The upstream closes the body cleanly but before the array's ``]``: the client still gets
    a whole array, its last element saying why, and the record is ``upstream_truncated``."""
    server, _, ledger, pipeline, _ = gateway
    body = {"contents": [{"role": "user", "parts": [{"text": "a b c"}]}]}
    answer = httpx.post(
        f"{server.url}/v1beta/models/{MODEL}:streamGenerateContent",
        json=body,
        headers={"x-goog-api-key": CALLER_KEY, "x-fake-truncate-after-chunks": "2"},
    )
    assert answer.status_code == 200
    *pieces, last = orjson.loads(answer.content)
    assert len(pieces) == 2
    assert (last["error"]["code"], last["error"]["status"]) == (500, "INTERNAL")
    assert "before it was complete" in last["error"]["message"]
    (row,) = rows(ledger, pipeline, 1)
    assert (row["outcome"], row["input_tokens"], row["output_tokens"]) == (
        "upstream_truncated",
        3,
        2,
    )
