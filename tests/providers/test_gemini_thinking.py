"""Thinking suffixes and output caps on the Gemini API's wire (AI Studio and Vertex AI).

google-genai (or plain HTTP) -> gateway (uvicorn) -> fake upstream; what the fake received is
what is checked: the model in the path without its suffix, ``generationConfig.thinkingConfig``
set from it. And a budget's reservation reads ``generationConfig.maxOutputTokens``.
"""

from __future__ import annotations

import sqlite3
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
    ModelPrice,
    SQLiteSink,
    StaticKey,
    StaticKeyStore,
    Upstream,
    UsagePipeline,
    build_stack,
    hash_key,
)
from asgi_llmguard.forward.router import Routing, WarmupPolicy
from asgi_llmguard.testing import FakeProvider, FakeVertex, serve

CALLER_KEY = "sk-llmg-gemini-thinking-0123456789abcdefghijklmn"
UPSTREAM_KEY = "AIza-upstream-gemini-thinking-key"
PROJECT = "fake-project"
NO_RETRY = types.HttpRetryOptions(attempts=1)


@pytest.fixture
def gemini():
    fake = FakeProvider(api_key=UPSTREAM_KEY)
    # gemini-2.5-flash is listed at $2.50 per million output tokens: a $0.05 budget admits a
    # 10,000-token cap ($0.025) and refuses a 100,000-token one ($0.25).
    policy = KeyPolicy(key_id="gt", models=("gemini-*",), budget=Budget(total=0.05))
    keys = StaticKeyStore([StaticKey(policy, key_hash=hash_key(CALLER_KEY))])
    with serve(fake) as upstream:
        app = build_stack(
            upstreams=[Upstream("gemini", upstream.url, api_key=UPSTREAM_KEY, name="gm")],
            keys=keys,
            usage={
                "budgets": MemoryBudgetStore(),
                "default_max_output_tokens": 1000,
                "missing_price": ModelPrice(input=1.0, output=1.0),
            },
        )
        with serve(app) as server:
            client = genai.Client(
                api_key=CALLER_KEY,
                http_options=types.HttpOptions(base_url=server.url, retry_options=NO_RETRY),
            )
            yield client, fake


def thinking_config(fake: FakeProvider) -> dict:
    """The ``thinkingConfig`` received, its members in camel case (protobuf's JSON form takes
    both spellings; google-genai writes these in snake case)."""
    sent = fake.requests[-1].json()["generationConfig"]["thinkingConfig"]
    return {_camel(key): value for key, value in sent.items()}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


@pytest.mark.parametrize(
    ("suffix", "expected"),
    [
        ("(high)", {"thinkingBudget": 24576}),
        ("(low)", {"thinkingBudget": 2048}),
        ("(5000)", {"thinkingBudget": 5000}),
        ("(none)", {"thinkingBudget": 0}),
        ("(auto)", {"thinkingBudget": -1}),
    ],
)
def test_a_suffix_sets_the_thinking_budget_of_gemini_2_5(gemini, suffix, expected):
    client, fake = gemini
    out = client.models.generate_content(
        model=f"gemini-2.5-flash{suffix}",
        contents="one two",
        config=types.GenerateContentConfig(
            thinking_config=types.ThinkingConfig(include_thoughts=True, thinking_budget=7)
        ),
    )
    assert out.text
    sent = fake.requests[-1]
    assert sent.path == "/v1/models/gemini-2.5-flash:generateContent"
    # The suffix wins over the SDK's budget; the other members are kept.
    assert thinking_config(fake) == {"includeThoughts": True, **expected}


def test_a_suffix_on_a_stream_sets_the_thinking_budget(gemini):
    client, fake = gemini
    pieces = list(
        client.models.generate_content_stream(model="gemini-2.5-flash(medium)", contents="a")
    )
    assert pieces
    assert fake.requests[-1].path == "/v1/models/gemini-2.5-flash:streamGenerateContent"
    assert thinking_config(fake) == {"thinkingBudget": 8192}


@pytest.mark.parametrize(
    ("suffix", "level"),
    [("(high)", "high"), ("(minimal)", "low"), ("(1024)", "low"), ("(none)", "low")],
)
def test_gemini_3_takes_a_thinking_level(gemini, suffix, level):
    client, fake = gemini
    client.models.generate_content(
        model=f"gemini-3-pro-preview{suffix}",
        contents="one",
        config=types.GenerateContentConfig(
            thinking_config=types.ThinkingConfig(thinking_budget=100)
        ),
    )
    assert fake.requests[-1].path == "/v1/models/gemini-3-pro-preview:generateContent"
    # thinkingLevel and thinkingBudget together are a 400 at Google: only the level is sent.
    assert thinking_config(fake) == {"thinkingLevel": level}


def test_auto_on_gemini_3_leaves_the_model_default(gemini):
    client, fake = gemini
    client.models.generate_content(model="gemini-3-pro-preview(auto)", contents="one")
    assert "generationConfig" not in fake.requests[-1].json()


def test_the_reservation_reads_max_output_tokens(gemini):
    client, fake = gemini
    small = types.GenerateContentConfig(max_output_tokens=10_000)
    assert client.models.generate_content(model="gemini-2.5-flash", contents="a", config=small).text
    received = len(fake.requests)
    large = types.GenerateContentConfig(max_output_tokens=100_000)
    with pytest.raises(errors.ClientError) as refused:
        client.models.generate_content(model="gemini-2.5-flash", contents="a", config=large)
    assert refused.value.code == 429
    with pytest.raises(errors.ClientError) as refused_stream:
        list(
            client.models.generate_content_stream(
                model="gemini-2.5-flash", contents="a", config=large
            )
        )
    assert refused_stream.value.code == 429
    assert len(fake.requests) == received  # neither reached the upstream


@pytest.fixture
def vertex(tmp_path):
    fake = FakeVertex(project=PROJECT)
    policy = KeyPolicy(key_id="vt", models=("gemini-*", "claude-*"))
    keys = StaticKeyStore([StaticKey(policy, key_hash=hash_key(CALLER_KEY))])
    with serve(fake) as upstream:
        sa = fake.write_service_account_file(tmp_path / "sa.json", upstream.url)
        app = build_stack(
            upstreams=[Upstream("vertex", upstream.url, name="vx", credentials_file=str(sa))],
            keys=keys,
        )
        with serve(app) as server:
            yield server.url, fake


def test_a_suffix_on_vertex_sets_gemini_and_claude_thinking(vertex):
    url, fake = vertex
    base = f"{url}/v1/projects/{PROJECT}/locations/us-east5/publishers"
    auth = {"authorization": f"Bearer {CALLER_KEY}"}
    answer = httpx.post(
        f"{base}/google/models/gemini-2.5-flash(none):generateContent",
        json={"contents": [{"role": "user", "parts": [{"text": "one"}]}]},
        headers=auth,
    )
    assert answer.status_code == 200, answer.text
    sent = fake.requests[-1]
    assert sent.path.endswith("/publishers/google/models/gemini-2.5-flash:generateContent")
    assert sent.json()["generationConfig"] == {"thinkingConfig": {"thinkingBudget": 0}}
    answer = httpx.post(
        f"{base}/anthropic/models/claude-sonnet-4-5@20250929(high):rawPredict",
        json={
            "anthropic_version": "vertex-2023-10-16",
            "max_tokens": 100,
            "messages": [{"role": "user", "content": "one"}],
        },
        headers=auth,
    )
    assert answer.status_code == 200, answer.text
    sent = fake.requests[-1]
    assert sent.path.endswith("/models/claude-sonnet-4-5@20250929:rawPredict")
    assert sent.json()["thinking"] == {"type": "enabled", "budget_tokens": 24576}
    assert sent.json()["max_tokens"] == 24576 + 100


def test_a_gemini_warm_up_is_recorded_as_generate_content(tmp_path):
    first, second = FakeProvider(api_key=UPSTREAM_KEY), FakeProvider(api_key=UPSTREAM_KEY)
    policy = KeyPolicy(key_id="gt", models=("gemini-*",))
    keys = StaticKeyStore([StaticKey(policy, key_hash=hash_key(CALLER_KEY))])
    ledger = tmp_path / "ledger.sqlite3"
    pipeline = UsagePipeline([SQLiteSink(str(ledger))], spill_path=str(tmp_path / "spill"))
    with serve(first) as a, serve(second) as b:
        app = build_stack(
            upstreams=[
                Upstream("gemini", a.url, api_key=UPSTREAM_KEY, name="a"),
                Upstream("gemini", b.url, api_key=UPSTREAM_KEY, name="b"),
            ],
            keys=keys,
            pipeline=pipeline,
            routing=Routing(selector="fill-first", warmup=WarmupPolicy(ttl=60)),
        )
        with serve(app) as server:
            client = genai.Client(
                api_key=CALLER_KEY,
                http_options=types.HttpOptions(base_url=server.url, retry_options=NO_RETRY),
            )
            client.models.generate_content(model="gemini-2.5-flash(low)", contents="one")
            second.wait_until(lambda: len(second.requests) == 1, timeout=5)
    warmed = second.requests[0]
    assert warmed.path == "/v1beta/models/gemini-2.5-flash:generateContent"
    deadline = time.monotonic() + 5
    rows: list[tuple[str, str, str]] = []
    while len(rows) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
        if ledger.exists():
            with sqlite3.connect(ledger) as db:
                if db.execute("SELECT 1 FROM sqlite_master WHERE name='usage_events'").fetchone():
                    rows = db.execute(
                        "SELECT credential_id, outcome, endpoint FROM usage_events"
                        " ORDER BY credential_id"
                    ).fetchall()
    assert rows == [("a", "ok", "generateContent"), ("b", "warmup", "generateContent")]


async def _exhausted_in_a_200_stream(scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
    """A Gemini upstream that accepts a stream with 200, then sends a quota error first."""
    if scope["type"] != "http":
        return
    message = await receive()  # type: ignore[operator]
    while message.get("more_body"):
        message = await receive()  # type: ignore[operator]
    error = {"error": {"code": 429, "message": "Quota exceeded", "status": "RESOURCE_EXHAUSTED"}}
    start = {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"text/event-stream")],
    }
    await send(start)  # type: ignore[operator]
    await send(
        {"type": "http.response.body", "body": b"data: " + orjson.dumps(error) + b"\r\n\r\n"}
    )  # type: ignore[operator]


def test_a_quota_error_as_the_first_event_cools_the_credential_as_rate_limited():
    fake = FakeProvider(api_key=UPSTREAM_KEY)
    policy = KeyPolicy(key_id="gt", models=("gemini-*",))
    keys = StaticKeyStore([StaticKey(policy, key_hash=hash_key(CALLER_KEY))])
    with serve(_exhausted_in_a_200_stream) as bad, serve(fake) as good:
        app = build_stack(
            upstreams=[
                Upstream("gemini", bad.url, api_key=UPSTREAM_KEY, name="bad"),
                Upstream("gemini", good.url, api_key=UPSTREAM_KEY, name="good"),
            ],
            keys=keys,
            routing=Routing(selector="fill-first", hold_first_event=True),
        )
        with serve(app) as server:
            client = genai.Client(
                api_key=CALLER_KEY,
                http_options=types.HttpOptions(base_url=server.url, retry_options=NO_RETRY),
            )
            stream = client.models.generate_content_stream(model="gemini-2.5-flash", contents="a")
            assert "".join(piece.text or "" for piece in stream)
            assert len(fake.requests) == 1
            cooling = app.forwarder.router.cooldowns.snapshot()
    assert [(c.credential_id, c.reason) for c in cooling] == [("bad", "rate_limited")]
