"""Gemini's OpenAI-compatible endpoint (``/v1beta/openai/``) through the gateway's OpenAI path:
the openai SDK -> gateway (uvicorn) -> the fake's ``/v1beta/openai`` as an ``openai`` upstream.

Token numbers come from the fake's rule (a token is a word), not from the gateway.
"""

from __future__ import annotations

import openai
import pytest

from asgi_llmguard import (
    KeyPolicy,
    SQLiteSink,
    StaticKey,
    StaticKeyStore,
    Upstream,
    UsagePipeline,
    build_stack,
    hash_key,
)
from asgi_llmguard.testing import FakeProvider, serve
from tests.ledger import ledger_rows as rows

CALLER_KEY = "sk-llmg-gemini-openai-0123456789abcdefghijklmnop"
UPSTREAM_KEY = "AIza-upstream-gemini-openai-secret"
REPLY = "Hello from the fake provider."
WORDS = FakeProvider.count_tokens(REPLY)
MODEL = "gemini-2.5-flash"
# gemini-2.5-flash's shipped list prices, USD per million tokens.
INPUT, OUTPUT = 0.3, 2.5


def nanos(prompt: int, output: int) -> int:
    return round(prompt * INPUT * 1000 + output * OUTPUT * 1000)


@pytest.fixture
def gateway(tmp_path):
    fake = FakeProvider(api_key=UPSTREAM_KEY)
    keys = StaticKeyStore([StaticKey(KeyPolicy(key_id="compat"), key_hash=hash_key(CALLER_KEY))])
    ledger = tmp_path / "ledger.sqlite3"
    pipeline = UsagePipeline([SQLiteSink(str(ledger))], spill_path=str(tmp_path / "spill"))
    with serve(fake) as upstream:
        base_url = f"{upstream.url}/v1beta/openai"  # as Google documents it, without a slash
        app = build_stack(
            upstreams=[Upstream("openai", base_url, api_key=UPSTREAM_KEY, name="gemini-compat")],
            keys=keys,
            pipeline=pipeline,
        )
        with serve(app) as server:
            yield openai.OpenAI(api_key=CALLER_KEY, base_url=f"{server.url}/v1"), fake, ledger


def test_chat_completion_plain_and_streamed_with_usage(gateway):
    client, fake, ledger = gateway
    answer = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "one two three"}]
    )
    assert answer.choices[0].message.content == REPLY
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (3, WORDS)
    sent = fake.requests[-1]
    assert sent.path == "/v1beta/openai/chat/completions"
    assert sent.header("authorization") == f"Bearer {UPSTREAM_KEY}"
    assert CALLER_KEY not in repr(sent.headers)

    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "alpha beta gamma delta"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == REPLY
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (4, WORDS)

    plain, streamed = rows(ledger, 2)
    for row in (plain, streamed):
        assert (row["provider"], row["endpoint"], row["model"], row["credential_id"]) == (
            "openai",
            "chat.completions",
            MODEL,
            "gemini-compat",
        )
        assert (row["outcome"], row["estimated"]) == ("ok", 0)
    assert (plain["input_tokens"], plain["output_tokens"], plain["stream"]) == (3, WORDS, 0)
    assert (streamed["input_tokens"], streamed["output_tokens"], streamed["stream"]) == (
        4,
        WORDS,
        1,
    )
    assert plain["cost_nanos"] == nanos(3, WORDS)
    assert streamed["cost_nanos"] == nanos(4, WORDS)


def test_a_stream_not_asking_for_usage_is_still_metered(gateway):
    client, fake, ledger = gateway
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "a b"}], stream=True
    )
    chunks = list(stream)
    assert all(c.usage is None for c in chunks)  # the client sees what it asked for
    assert b'"include_usage":true' in fake.requests[-1].body  # the gateway asked upstream
    (row,) = rows(ledger, 1)
    assert (row["input_tokens"], row["output_tokens"], row["estimated"]) == (2, WORDS, 0)


def test_embeddings_and_models(gateway):
    client, fake, ledger = gateway
    embedded = client.embeddings.create(model="gemini-embedding-001", input=["one two", "three"])
    assert len(embedded.data) == 2
    assert embedded.usage.prompt_tokens == 3
    assert fake.requests[-1].path == "/v1beta/openai/embeddings"
    listed = client.models.list()
    assert "models/gemini-2.5-flash" in {m.id for m in listed.data}
    assert fake.requests[-1].path == "/v1beta/openai/models"
    embedding, listing = rows(ledger, 2)
    assert (embedding["endpoint"], embedding["model"], embedding["input_tokens"]) == (
        "embeddings",
        "gemini-embedding-001",
        3,
    )
    assert embedding["cost_nanos"] == round(3 * 0.15 * 1000)
    assert (listing["endpoint"], listing["cost_nanos"]) == ("models.list", 0)
