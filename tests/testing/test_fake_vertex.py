"""The fake Vertex AI speaks what the real SDKs expect: google-genai in Vertex mode and the
anthropic SDK's AnthropicVertex, authenticated by google-auth against the fake token endpoint."""

from __future__ import annotations

import json

import anthropic
import httpx
import pytest
from google import genai
from google.auth import exceptions as auth_exceptions
from google.auth.transport.requests import Request
from google.genai import errors as genai_errors
from google.genai import types
from google.oauth2 import service_account

from asgi_llmguard.testing import FakeVertex, ServiceAccountKey, serve

PROJECT = "fake-project"
SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
REPLY = "Hello from the fake provider."
CLAUDE = "claude-sonnet-4-5@20250929"
NO_RETRY = types.HttpRetryOptions(attempts=1)


@pytest.fixture(scope="module")
def served():
    fake = FakeVertex(project=PROJECT)
    with serve(fake) as upstream:
        yield fake, upstream.url


@pytest.fixture
def fake(served):
    fake, _ = served
    fake.configure(
        token_expires_in=3599,
        token_status=None,
        status=None,
        retry_after=None,
        cached_tokens=0,
        reasoning_tokens=0,
        tool_use_prompt_tokens=0,
        truncate_after_chunks=None,
        reset_after_chunks=None,
    )
    fake.reset()
    return fake


@pytest.fixture
def url(served):
    return served[1]


@pytest.fixture
def credentials(fake, url, tmp_path):
    path = fake.write_service_account_file(tmp_path / "sa.json", url)
    return service_account.Credentials.from_service_account_file(str(path), scopes=SCOPES)


def _genai(url, credentials, location="us-central1", **options):
    return genai.Client(
        vertexai=True,
        project=PROJECT,
        location=location,
        credentials=credentials,
        http_options=types.HttpOptions(base_url=url, retry_options=NO_RETRY, **options),
    )


def _gemini_path(method, location="us-central1", version="v1beta1", model="gemini-2.5-flash"):
    return (
        f"/{version}/projects/{PROJECT}/locations/{location}/publishers/google/models/"
        f"{model}:{method}"
    )


# -------------------------------------------------------------------------- Gemini (google-genai)


def test_generate_content_with_service_account_credentials(fake, url, credentials):
    client = _genai(url, credentials)
    answer = client.models.generate_content(model="gemini-2.5-flash", contents="say hello please")
    assert answer.text == REPLY
    usage = answer.usage_metadata
    assert (usage.prompt_token_count, usage.candidates_token_count) == (3, 5)
    assert usage.total_token_count == 8
    assert answer.candidates[0].finish_reason == types.FinishReason.STOP
    assert answer.model_version == "gemini-2.5-flash"
    call = fake.calls("google")[-1]
    assert call.path == _gemini_path("generateContent")
    # google-auth got its token from the fake's endpoint with a signed assertion
    assert fake.tokens_issued == 1
    assert call.header("authorization") == f"Bearer {credentials.token}"
    assert call.json()["contents"][0]["parts"][0]["text"] == "say hello please"


def test_a_stream_carries_running_usage_and_the_final_counts_last(fake, url, credentials):
    fake.configure(cached_tokens=2, reasoning_tokens=7, tool_use_prompt_tokens=4)
    client = _genai(url, credentials)
    chunks = list(
        client.models.generate_content_stream(
            model="gemini-2.5-flash", contents="one two three four"
        )
    )
    assert "".join(c.text or "" for c in chunks) == REPLY
    # running counts on every chunk; the last one is final
    running = [
        (c.usage_metadata.candidates_token_count, c.candidates[0].finish_reason) for c in chunks
    ]
    assert running == [(n, None) for n in range(1, 6)] + [(5, types.FinishReason.STOP)]
    assert chunks[0].usage_metadata.total_token_count == 4 + 1
    usage = chunks[-1].usage_metadata
    assert usage.prompt_token_count == 4
    assert usage.candidates_token_count == 5
    assert usage.cached_content_token_count == 2
    assert usage.thoughts_token_count == 7
    assert usage.tool_use_prompt_token_count == 4
    assert usage.total_token_count == 4 + 5 + 7 + 4
    assert fake.calls("google")[-1].query_string == "alt=sse"


def test_max_output_tokens_cuts_the_reply(fake, url, credentials):
    client = _genai(url, credentials)
    answer = client.models.generate_content(
        model="gemini-2.5-flash",
        contents="hi",
        config=types.GenerateContentConfig(max_output_tokens=2, system_instruction="be brief"),
    )
    assert answer.text == "Hello from"
    assert answer.candidates[0].finish_reason == types.FinishReason.MAX_TOKENS
    assert answer.usage_metadata.prompt_token_count == 3  # "hi" + "be brief"


def test_count_tokens(fake, url, credentials):
    client = _genai(url, credentials)
    counted = client.models.count_tokens(model="gemini-2.5-flash", contents="a b c d e")
    assert counted.total_tokens == 5
    assert fake.calls("google")[-1].path == _gemini_path("countTokens")


def test_the_global_endpoint_and_the_v1_api(fake, url, credentials):
    client = _genai(url, credentials, location="global", api_version="v1")
    assert client.models.generate_content(model="gemini-2.5-pro", contents="hi").text == REPLY
    assert fake.calls("google")[-1].path == _gemini_path(
        "generateContent", location="global", version="v1", model="gemini-2.5-pro"
    )


def test_resource_exhausted_carries_retry_info(fake, url, credentials):
    fake.configure(status=429, retry_after=7)
    client = _genai(url, credentials)
    with pytest.raises(genai_errors.ClientError) as caught:
        client.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert caught.value.code == 429
    assert caught.value.status == "RESOURCE_EXHAUSTED"
    details = caught.value.details["error"]["details"]
    assert details == [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"}]


def test_a_bad_or_expired_token_is_unauthenticated(fake, url):
    for token in ("not-a-token", fake.issue_token(expires_in=0)):
        answer = httpx.post(
            url + _gemini_path("generateContent"),
            json={"contents": [{"parts": [{"text": "hi"}]}]},
            headers={"authorization": f"Bearer {token}"},
        )
        assert answer.status_code == 401
        assert answer.json()["error"]["status"] == "UNAUTHENTICATED"
    fresh = fake.issue_token()
    fake.revoke_tokens()
    answer = httpx.post(
        url + _gemini_path("generateContent"),
        json={"contents": [{"parts": [{"text": "hi"}]}]},
        headers={"authorization": f"Bearer {fresh}"},
    )
    assert answer.status_code == 401


def test_another_project_is_permission_denied(fake, url):
    answer = httpx.post(
        url + _gemini_path("generateContent").replace(PROJECT, "other-project"),
        json={"contents": [{"parts": [{"text": "hi"}]}]},
        headers={"authorization": f"Bearer {fake.issue_token()}"},
    )
    assert answer.status_code == 403
    assert answer.json()["error"]["status"] == "PERMISSION_DENIED"


def test_knobs_by_header(fake, url):
    headers = {
        "authorization": f"Bearer {fake.issue_token()}",
        "x-fake-reasoning-tokens": "6",
        "x-fake-tool-use-prompt-tokens": "3",
        "x-fake-reply": "short answer",
    }
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    answer = httpx.post(url + _gemini_path("generateContent"), json=body, headers=headers)
    assert answer.json()["candidates"][0]["content"]["parts"][0]["text"] == "short answer"
    usage = answer.json()["usageMetadata"]
    assert usage["thoughtsTokenCount"] == 6
    assert usage["toolUsePromptTokenCount"] == 3
    assert usage["totalTokenCount"] == 1 + 2 + 6 + 3
    assert "cachedContentTokenCount" not in usage  # zeros are left out, as proto3 JSON does
    bad = httpx.post(
        url + _gemini_path("generateContent"),
        json=body,
        headers={**headers, "x-fake-tool-use-prompt-tokens": "many"},
    )
    assert bad.status_code == 400
    assert bad.json()["error"]["status"] == "INVALID_ARGUMENT"


def test_the_json_array_stream(fake, url):
    headers = {"authorization": f"Bearer {fake.issue_token()}"}
    body = {"contents": [{"role": "user", "parts": [{"text": "one two"}]}]}
    with httpx.stream(
        "POST", url + _gemini_path("streamGenerateContent"), json=body, headers=headers
    ) as answer:
        assert answer.headers["content-type"].startswith("application/json")
        raw = answer.read()
    assert raw.startswith(b"[{")
    assert b"\n,\r\n{" in raw
    assert raw.endswith(b"]")
    elements = json.loads(raw)
    assert "".join(e["candidates"][0]["content"]["parts"][0]["text"] for e in elements) == REPLY
    assert elements[-1]["usageMetadata"]["totalTokenCount"] == 7
    fake.configure(status=429)
    answer = httpx.post(url + _gemini_path("streamGenerateContent"), json=body, headers=headers)
    assert answer.status_code == 429
    assert answer.json()[0]["error"]["status"] == "RESOURCE_EXHAUSTED"


def test_a_truncated_stream_has_no_final_usage_and_a_reset_one_breaks(fake, url, credentials):
    client = _genai(url, credentials)
    fake.configure(truncate_after_chunks=2)
    chunks = list(client.models.generate_content_stream(model="gemini-2.5-flash", contents="hi"))
    assert [c.text for c in chunks] == ["Hello", " from"]
    assert all(c.candidates[0].finish_reason is None for c in chunks)
    assert chunks[-1].usage_metadata.candidates_token_count == 2  # running, not final
    fake.configure(truncate_after_chunks=None, reset_after_chunks=1)
    with pytest.raises(Exception):  # noqa: B017, PT011 - the HTTP library's own read error
        list(client.models.generate_content_stream(model="gemini-2.5-flash", contents="hi"))
    fake.wait_until(lambda: fake.resets == 1)


# -------------------------------------------------------------------------- token endpoint


def test_the_token_endpoint_checks_the_assertion_signature(fake, url, tmp_path):
    stranger = ServiceAccountKey(email=fake.account.email)  # same account, another key
    path = stranger.write(tmp_path / "other.json", f"{url}/token")
    credentials = service_account.Credentials.from_service_account_file(str(path), scopes=SCOPES)
    with pytest.raises(auth_exceptions.RefreshError, match="Invalid JWT Signature"):
        credentials.refresh(Request())
    assert fake.tokens_issued == 0


def test_the_token_endpoint_answers_what_google_auth_expects(fake, credentials):
    fake.configure(token_expires_in=120)
    credentials.refresh(Request())
    assert credentials.token.startswith("ya29.")
    assert 100 < (credentials.expiry - credentials.expiry.utcnow()).total_seconds() <= 120
    fake.configure(token_status=400)
    with pytest.raises(auth_exceptions.RefreshError, match="invalid_grant"):
        credentials.refresh(Request())
    token_call = next(r for r in fake.requests if r.path == "/token")
    assert token_call.header("content-type") == "application/x-www-form-urlencoded"
    assert "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer" in (
        token_call.body.decode()
    )


# ---------------------------------------------------------------- Claude (AnthropicVertex)


def _claude(url, **auth):
    return anthropic.AnthropicVertex(
        region="us-east5", project_id=PROJECT, base_url=f"{url}/v1", max_retries=0, **auth
    )


def test_claude_with_an_access_token(fake, url):
    client = _claude(url, access_token=fake.issue_token())
    message = client.messages.create(
        model=CLAUDE, max_tokens=100, messages=[{"role": "user", "content": "hi there"}]
    )
    assert message.content[0].text == REPLY
    assert (message.usage.input_tokens, message.usage.output_tokens) == (2, 5)
    assert message.model == CLAUDE
    call = fake.calls("anthropic")[-1]
    assert call.path == (
        f"/v1/projects/{PROJECT}/locations/us-east5/publishers/anthropic/models/{CLAUDE}:rawPredict"
    )
    body = call.json()
    assert body["anthropic_version"]  # the SDK's own version string; Google documents
    # "vertex-2023-10-16", which test_claude_errors_in_the_shape_each_layer_uses sends
    assert "model" not in body


def test_claude_streamed_with_service_account_credentials(fake, url, credentials):
    fake.configure(cache_write_5m=3)
    client = _claude(url, credentials=credentials)
    with client.messages.stream(
        model=CLAUDE, max_tokens=3, messages=[{"role": "user", "content": "hi there"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Hello from the"
    assert final.stop_reason == "max_tokens"
    assert final.usage.output_tokens == 3
    assert final.usage.cache_creation_input_tokens == 3
    assert fake.calls("anthropic")[-1].path.endswith(f"{CLAUDE}:streamRawPredict")
    assert fake.tokens_issued == 1
    counted = client.messages.count_tokens(
        model=CLAUDE, messages=[{"role": "user", "content": "a b c"}]
    )
    assert counted.input_tokens == 3


def test_claude_errors_in_the_shape_each_layer_uses(fake, url):
    with pytest.raises(anthropic.AuthenticationError):
        _claude(url, access_token="bogus").messages.create(
            model=CLAUDE, max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
    token = fake.issue_token()
    path = f"/v1/projects/{PROJECT}/locations/us-east5/publishers/anthropic/models/{CLAUDE}"
    headers = {"authorization": f"Bearer {token}"}
    body = {"max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    refused = httpx.post(f"{url}{path}:rawPredict", json=body, headers=headers)
    assert refused.status_code == 400
    assert refused.json()["error"]["type"] == "invalid_request_error"
    fake.configure(status=429)
    limited = httpx.post(
        f"{url}{path}:rawPredict",
        json={**body, "anthropic_version": "vertex-2023-10-16"},
        headers=headers,
    )
    assert limited.status_code == 429
    assert limited.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
    fake.configure(status=None)
    served = httpx.post(
        f"{url}{path}:rawPredict",
        json={**body, "anthropic_version": "vertex-2023-10-16"},
        headers=headers,
    )
    assert served.json()["usage"]["output_tokens"] == 5
    fake.configure(status=529)
    with pytest.raises(anthropic.APIStatusError) as caught:
        _claude(url, access_token=token).messages.create(
            model=CLAUDE, max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.status_code == 529
    assert caught.value.body["error"]["type"] == "overloaded_error"


def test_unknown_paths_and_methods(fake, url):
    assert httpx.post(f"{url}/v1/projects/p/locations/l/publishers/x/models/m:run").status_code == (
        404
    )
    assert httpx.get(url + _gemini_path("generateContent")).status_code == 405
    assert httpx.get(f"{url}/token").status_code == 405


def test_mounted_under_a_prefix(tmp_path):
    from starlette.applications import Starlette
    from starlette.routing import Mount

    fake = FakeVertex()
    with serve(Starlette(routes=[Mount("/vertex", app=fake)])) as upstream:
        base = f"{upstream.url}/vertex"
        path = fake.write_service_account_file(tmp_path / "sa.json", base)
        credentials = service_account.Credentials.from_service_account_file(
            str(path), scopes=SCOPES
        )
        client = _genai(base, credentials)
        assert client.models.generate_content(model="gemini-2.5-flash", contents="hi").text == (
            REPLY
        )
    assert [r.path.split(":")[-1] for r in fake.calls("google")] == ["generateContent"]
    assert fake.tokens_issued == 1
