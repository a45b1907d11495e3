"""Vertex AI spoken natively: google-genai in Vertex mode -> gateway (uvicorn) -> fake Vertex AI.

The caller gives the SDK its virtual key as an access token; the gateway authenticates upstream
with its own service account, whose tokens the fake's token endpoint issues. Token numbers come
from the fake's rule (a token is a word), not from the gateway.
"""

from __future__ import annotations

import sqlite3
import time

import pytest
from google import genai
from google.genai import errors, types
from google.oauth2.credentials import Credentials

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
from asgi_llmguard.testing import FakeProvider, FakeVertex, serve

CALLER_KEY = "sk-llmg-vertex-caller-0123456789abcdefghijklmnop"
PROJECT = "fake-project"
LOCATION = "us-east5"
MODEL = "gemini-2.5-flash"
REPLY = "Hello from the fake provider."
WORDS = FakeProvider.count_tokens(REPLY)
NO_RETRY = types.HttpRetryOptions(attempts=1)


@pytest.fixture
def served(tmp_path, request):
    # The lifetime of the tokens the fake issues (``indirect`` parametrisation changes it).
    fake = FakeVertex(project=PROJECT, token_expires_in=getattr(request, "param", 3599))
    policy = KeyPolicy(key_id="vtx", models=("gemini-2.5-*",))
    keys = StaticKeyStore([StaticKey(policy, key_hash=hash_key(CALLER_KEY))])
    ledger = tmp_path / "ledger.sqlite3"
    pipeline = UsagePipeline([SQLiteSink(str(ledger))], spill_path=str(tmp_path / "spill"))
    with serve(fake) as upstream:
        sa = fake.write_service_account_file(tmp_path / "sa.json", upstream.url)
        app = build_stack(
            upstreams=[
                Upstream("vertex", upstream.url, name="vx", credentials_file=str(sa)),
            ],
            keys=keys,
            pipeline=pipeline,
        )
        with serve(app) as server:
            yield server.url, fake, ledger


def client(url: str, key: str = CALLER_KEY) -> genai.Client:
    return genai.Client(
        vertexai=True,
        project=PROJECT,
        location=LOCATION,
        credentials=Credentials(token=key),
        http_options=types.HttpOptions(base_url=url, retry_options=NO_RETRY),
    )


def rows(ledger, count: int) -> list[dict]:
    deadline = time.monotonic() + 5
    while True:
        found: list[dict] = []
        if ledger.exists():
            with sqlite3.connect(ledger) as db:
                db.row_factory = sqlite3.Row
                if db.execute("SELECT 1 FROM sqlite_master WHERE name='usage_events'").fetchone():
                    found = [
                        dict(r)
                        for r in db.execute("SELECT * FROM usage_events ORDER BY started_at")
                    ]
        if len(found) >= count or time.monotonic() > deadline:
            assert len(found) == count, found
            return found
        time.sleep(0.05)


def test_generate_content_is_served_with_the_gateways_token_and_recorded(served):
    url, fake, ledger = served
    gemini = client(url)  # kept: a dropped client closes its connection pool
    out = gemini.models.generate_content(model=MODEL, contents="one two three")
    assert out.text == REPLY
    (call,) = fake.calls("google")
    assert call.path == (
        f"/v1beta1/projects/{PROJECT}/locations/{LOCATION}/publishers/google/models/"
        f"{MODEL}:generateContent"
    )
    # The gateway's own service-account token went upstream, never the caller's key.
    token = call.header("authorization")
    assert token.startswith("Bearer ya29.")
    assert CALLER_KEY not in repr(call.headers)
    (row,) = rows(ledger, 1)
    assert (row["provider"], row["endpoint"], row["model"], row["key_id"]) == (
        "vertex",
        "generateContent",
        MODEL,
        "vtx",
    )
    usage = out.usage_metadata
    assert (row["input_tokens"], row["output_tokens"]) == (
        usage.prompt_token_count,
        usage.candidates_token_count,
    )
    assert (row["input_tokens"], row["output_tokens"]) == (3, WORDS)
    assert row["cost_nanos"] > 0
    assert (row["outcome"], row["status"], row["stream"]) == ("ok", 200, 0)


def test_a_stream_is_metered_with_the_final_counts(served):
    url, _, ledger = served
    gemini = client(url)
    chunks = list(gemini.models.generate_content_stream(model=MODEL, contents="one two three four"))
    assert "".join(c.text or "" for c in chunks) == REPLY
    final = chunks[-1].usage_metadata
    (row,) = rows(ledger, 1)
    assert (row["endpoint"], row["stream"], row["outcome"]) == ("streamGenerateContent", 1, "ok")
    # Every chunk carries running counts: the last one is the answer's, never their sum.
    assert (row["input_tokens"], row["output_tokens"]) == (
        final.prompt_token_count,
        final.candidates_token_count,
    )
    assert (row["input_tokens"], row["output_tokens"]) == (4, WORDS)


def test_a_wrong_key_is_refused_in_googles_shape(served):
    url, fake, _ = served
    gemini = client(url, key="sk-llmg-wrong-0123456789abcdefghijklmnopq")
    with pytest.raises(errors.ClientError) as caught:
        gemini.models.generate_content(model=MODEL, contents="hi")
    assert caught.value.code == 401
    assert caught.value.status == "UNAUTHENTICATED"
    assert fake.calls("google") == []


def test_a_model_outside_the_keys_list_is_refused(served):
    url, fake, _ = served
    gemini = client(url)
    with pytest.raises(errors.ClientError) as caught:
        gemini.models.generate_content(model="gemini-2.0-pro", contents="hi")
    assert caught.value.code == 403
    assert caught.value.status == "PERMISSION_DENIED"
    assert fake.calls("google") == []


@pytest.mark.parametrize("served", [4], indirect=True)
def test_the_gateways_token_is_refreshed_with_no_failed_request(served):
    url, fake, _ = served
    # Tokens live 4 s and the fake refuses an expired one: the gateway refreshes ahead of expiry.
    gemini = client(url)
    deadline = time.monotonic() + 9
    tokens: list[str] = []
    while time.monotonic() < deadline:
        out = gemini.models.generate_content(model=MODEL, contents="one two")
        assert out.text == REPLY
        tokens.append(fake.calls("google")[-1].header("authorization"))
        time.sleep(0.1)
    assert len(set(tokens)) >= 3, set(tokens)
    assert fake.tokens_issued >= 3
