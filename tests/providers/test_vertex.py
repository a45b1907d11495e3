"""Vertex AI spoken natively: google-genai in Vertex mode -> gateway (uvicorn) -> fake Vertex AI.

The caller gives the SDK its virtual key as an access token; the gateway authenticates upstream
with its own service account, whose tokens the fake's token endpoint issues. Token numbers come
from the fake's rule (a token is a word), not from the gateway.
"""

from __future__ import annotations

import socket
import time

import anthropic
import httpx
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
from asgi_llmguard.config import load_config, resolve_upstreams
from asgi_llmguard.testing import FakeProvider, FakeVertex, serve
from tests.ledger import ledger_rows as rows

CALLER_KEY = "sk-llmg-vertex-caller-0123456789abcdefghijklmnop"
PROJECT = "fake-project"
LOCATION = "us-east5"
MODEL = "gemini-2.5-flash"
CLAUDE = "claude-sonnet-4-5@20250929"
REPLY = "Hello from the fake provider."
WORDS = FakeProvider.count_tokens(REPLY)
NO_RETRY = types.HttpRetryOptions(attempts=1)


@pytest.fixture
def served(tmp_path, request):
    # The lifetime of the tokens the fake issues (``indirect`` parametrisation changes it).
    fake = FakeVertex(project=PROJECT, token_expires_in=getattr(request, "param", 3599))
    policy = KeyPolicy(key_id="vtx", models=("gemini-2.5-*", "claude-sonnet-4-5*"))
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


def claude(url: str, key: str = CALLER_KEY) -> anthropic.AnthropicVertex:
    return anthropic.AnthropicVertex(
        region=LOCATION, project_id=PROJECT, base_url=f"{url}/v1", access_token=key, max_retries=0
    )


def test_claude_messages_are_served_and_priced_as_claude(served):
    url, fake, ledger = served
    message = claude(url).messages.create(
        model=CLAUDE, max_tokens=100, messages=[{"role": "user", "content": "hi there"}]
    )
    assert message.content[0].text == REPLY
    (call,) = fake.calls("anthropic")
    assert call.path == (
        f"/v1/projects/{PROJECT}/locations/{LOCATION}/publishers/anthropic/models/"
        f"{CLAUDE}:rawPredict"
    )
    assert call.header("authorization").startswith("Bearer ya29.")
    sent = call.json()
    assert sent["anthropic_version"] == "vertex-2023-10-16" or sent["anthropic_version"]
    assert "model" not in sent
    (row,) = rows(ledger, 1)
    # The ledger's provider column is the route's API.
    assert (row["provider"], row["endpoint"], row["model"]) == (
        "vertex_anthropic",
        "rawPredict",
        CLAUDE,
    )
    assert (row["input_tokens"], row["output_tokens"]) == (
        message.usage.input_tokens,
        message.usage.output_tokens,
    )
    assert (row["input_tokens"], row["output_tokens"]) == (2, WORDS)
    # claude-sonnet-4-5's list price: $3 in, $15 out per million tokens.
    assert row["cost_nanos"] == 2 * 3000 + WORDS * 15000


def test_claude_token_counting_is_forwarded_and_recorded_free(served):
    url, fake, ledger = served
    client = claude(url)
    counted = client.messages.count_tokens(
        model=CLAUDE, messages=[{"role": "user", "content": "one two three"}]
    )
    assert counted.input_tokens > 0
    (call,) = fake.calls("anthropic")
    assert call.path == (
        f"/v1/projects/{PROJECT}/locations/{LOCATION}/publishers/anthropic/models/"
        "count-tokens:rawPredict"
    )
    assert call.header("authorization").startswith("Bearer ya29.")
    assert call.json()["model"] == CLAUDE
    (row,) = rows(ledger, 1)
    assert (row["provider"], row["endpoint"], row["model"], row["key_id"]) == (
        "vertex_anthropic",
        "count-tokens",
        CLAUDE,
        "vtx",
    )
    assert (row["status"], row["cost_nanos"], row["output_tokens"]) == (200, 0, 0)
    # The model in the body is the key's to allow.
    with pytest.raises(anthropic.PermissionDeniedError):
        client.messages.count_tokens(
            model="claude-opus-4-1@20250805", messages=[{"role": "user", "content": "x"}]
        )
    assert len(fake.calls("anthropic")) == 1


def test_claude_streamed_is_metered_from_the_stream(served):
    url, fake, ledger = served
    fake.configure(cache_write_5m=3)
    client = claude(url)
    with client.messages.stream(
        model=CLAUDE, max_tokens=3, messages=[{"role": "user", "content": "hi there"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Hello from the"
    assert fake.calls("anthropic")[-1].path.endswith(f"{CLAUDE}:streamRawPredict")
    (row,) = rows(ledger, 1)
    assert (row["endpoint"], row["stream"], row["outcome"]) == ("streamRawPredict", 1, "ok")
    # The ledger's input counts the prompt written to the cache too.
    usage = final.usage
    assert (row["input_tokens"], row["output_tokens"], row["cache_creation_tokens"]) == (
        usage.input_tokens + usage.cache_creation_input_tokens,
        usage.output_tokens,
        usage.cache_creation_input_tokens,
    )
    assert (row["input_tokens"], row["output_tokens"], row["cache_creation_tokens"]) == (5, 3, 3)


def test_claude_with_a_wrong_key_is_refused_in_anthropics_shape(served):
    url, fake, _ = served
    client = claude(url, key="sk-llmg-wrong-0123456789abcdefghijklmnopq")
    with pytest.raises(anthropic.AuthenticationError) as caught:
        client.messages.create(
            model=CLAUDE, max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.body["type"] == "error"
    assert caught.value.body["error"]["type"] == "authentication_error"
    assert fake.calls("anthropic") == []


@pytest.mark.parametrize("served", [2], indirect=True)
def test_no_valid_upstream_token_is_answered_in_each_callers_dialect(served):
    url, fake, _ = served
    fake.configure(token_status=400)  # the token endpoint now refuses the gateway's account
    time.sleep(2.5)  # the gateway's token has expired and could not be refreshed
    gemini = client(url)
    with pytest.raises(errors.APIError) as caught:
        gemini.models.generate_content(model=MODEL, contents="hi")
    assert caught.value.code == 503
    assert caught.value.status == "UNAVAILABLE"
    with pytest.raises(anthropic.APIStatusError) as refused:
        claude(url).messages.create(
            model=CLAUDE, max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert refused.value.status_code == 503
    assert refused.value.body["type"] == "error"
    assert refused.value.body["error"]["type"] == "overloaded_error"
    # a refused key is not worth a retry: no Retry-After, and the SDKs are told to stop
    assert refused.value.response.headers.get("retry-after") is None
    assert refused.value.response.headers["x-should-retry"] == "false"
    assert fake.calls() == []  # nothing was sent without a token


def test_an_unreachable_token_endpoint_is_answered_503_with_retry_after_until_it_is_back(
    tmp_path, monkeypatch
):
    # Quick background retries (the default waits 10 s, then longer).
    from asgi_llmguard.providers.google_auth import GoogleTokenSource

    original = GoogleTokenSource.from_service_account_file
    monkeypatch.setattr(
        GoogleTokenSource,
        "from_service_account_file",
        lambda path, **kw: original(path, retry_interval=0.3, max_retry_interval=0.3, **kw),
    )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        token_port = sock.getsockname()[1]
    fake = FakeVertex(project=PROJECT)
    keys = StaticKeyStore([StaticKey(KeyPolicy(key_id="vtx"), key_hash=hash_key(CALLER_KEY))])
    sa = fake.write_service_account_file(tmp_path / "sa.json", f"http://127.0.0.1:{token_port}")
    with serve(fake) as upstream:
        app = build_stack(
            upstreams=[Upstream("vertex", upstream.url, name="vx", credentials_file=str(sa))],
            keys=keys,
        )
        # Google's token endpoint is down when the gateway starts: it starts anyway.
        with serve(app) as server:
            gemini, claude_client = client(server.url), claude(server.url)
            with pytest.raises(errors.APIError) as caught:
                gemini.models.generate_content(model=MODEL, contents="hi")
            assert (caught.value.code, caught.value.status) == (503, "UNAVAILABLE")
            wait = int(caught.value.response.headers["retry-after"])
            assert 1 <= wait <= 60
            with pytest.raises(anthropic.APIStatusError) as refused:
                claude_client.messages.create(
                    model=CLAUDE, max_tokens=5, messages=[{"role": "user", "content": "x"}]
                )
            assert refused.value.status_code == 503
            assert refused.value.body["error"]["type"] == "overloaded_error"
            assert int(refused.value.response.headers["retry-after"]) >= 1
            assert refused.value.response.headers["x-should-retry"] == "true"
            assert fake.calls() == []
            issued = fake.tokens_issued
            # The endpoint is back: the gateway's own retries get a token, no request needed.
            with serve(fake, port=token_port):
                deadline = time.monotonic() + 5
                while fake.tokens_issued == issued and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert fake.tokens_issued == issued + 1
            out = gemini.models.generate_content(model=MODEL, contents="one two")
            assert out.text == REPLY


def test_the_key_in_googles_header_is_taken_and_not_forwarded(served):
    url, fake, ledger = served
    path = (
        f"/v1/projects/{PROJECT}/locations/global/publishers/google/models/{MODEL}:generateContent"
    )
    body = {"contents": [{"role": "user", "parts": [{"text": "one two"}]}]}
    answer = httpx.post(url + path, json=body, headers={"x-goog-api-key": CALLER_KEY})
    assert answer.status_code == 200, answer.text
    (call,) = fake.calls("google")
    assert call.path == path
    assert call.header("x-goog-api-key") is None
    assert CALLER_KEY not in repr(call.headers)
    (row,) = rows(ledger, 1)
    assert (row["key_id"], row["input_tokens"]) == ("vtx", 2)
    refused = httpx.post(
        url + path, json=body, headers={"x-goog-api-key": "sk-llmg-nope-0123456789"}
    )
    assert refused.status_code == 401
    assert refused.json()["error"]["status"] == "UNAUTHENTICATED"


def test_a_second_gateway_with_the_same_credential_leaves_the_first_its_token(served, tmp_path):
    url, fake, _ = served
    # Built as a reload builds its new stack, not started yet: the serving one is unaffected.
    sa = fake.write_service_account_file(tmp_path / "again.json", "http://127.0.0.1:9")
    build_stack(
        upstreams=[Upstream("vertex", "http://127.0.0.1:9", name="vx", credentials_file=str(sa))],
        keys=StaticKeyStore([]),
    )
    gemini = client(url)
    assert gemini.models.generate_content(model=MODEL, contents="one").text == REPLY


def test_the_config_file_names_the_credentials_file(tmp_path):
    config = tmp_path / "llmguard.toml"
    config.write_text(
        "[[upstreams]]\n"
        'provider = "vertex"\n'
        'name = "vertex-us"\n'
        'base_url = "https://us-east5-aiplatform.googleapis.com"\n'
        'credentials_file = "/etc/llmguard/vertex-sa.json"\n'
    )
    (upstream,) = resolve_upstreams(load_config(config), {})
    assert (upstream.provider, upstream.credentials_file) == (
        "vertex",
        "/etc/llmguard/vertex-sa.json",
    )
