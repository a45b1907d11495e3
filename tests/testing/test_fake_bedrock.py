"""The fake Bedrock Runtime, driven by the real ``boto3`` ``bedrock-runtime`` client over a socket.

boto3 is the judge of the wire format: it signs every request (the fake checks the signature),
parses the JSON and the binary event streams, and raises the modeled exceptions from the error
headers and from exception frames. Raw httpx checks what boto3 cannot send (a bearer key over
plain HTTP, unknown paths).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import anthropic
import boto3
import botocore.exceptions
import httpx
import orjson
import pytest
import urllib3
from botocore.config import Config

from asgi_llmguard.testing import FakeBedrock, RunningServer, serve

ACCESS_KEY, SECRET = "AKIDFAKEBEDROCK", "fake-bedrock-secret"
API_KEY = "ABSKZmFrZS1iZWRyb2NrLWtleQ"
MODEL = "anthropic.claude-3-5-haiku-20241022-v1:0"
PROFILE = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-sonnet-4"
REPLY_WORDS = 5  # "Hello from the fake provider."
MESSAGES: Any = [{"role": "user", "content": [{"text": "Say hello to  me"}]}]
CLAUDE: Any = {
    "anthropic_version": "bedrock-2023-05-31",
    "max_tokens": 50,
    "messages": [{"role": "user", "content": "Say hello"}],
}


@pytest.fixture(scope="module")
def fake() -> FakeBedrock:
    return FakeBedrock(access_keys={ACCESS_KEY: SECRET}, api_key=API_KEY)


@pytest.fixture(scope="module")
def upstream(fake: FakeBedrock) -> Iterator[RunningServer]:
    with serve(fake) as running:
        yield running


@pytest.fixture(autouse=True)
def _fresh(fake: FakeBedrock) -> Iterator[None]:
    fake.reset()
    yield
    fake.wait_until(lambda: fake.active_streams == 0, timeout=2.0)


def _client(upstream: RunningServer, secret: str = SECRET, key: str = ACCESS_KEY) -> Any:
    return boto3.client(
        "bedrock-runtime",
        region_name="us-east-1",
        endpoint_url=upstream.url,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=Config(retries={"max_attempts": 1, "mode": "standard"}),
    )


@pytest.fixture
def client(upstream: RunningServer) -> Any:
    return _client(upstream)


def _with_headers(client: Any, **headers: str) -> Any:
    """Send ``x-fake-*`` knobs with every request (added before signing, so they are signed)."""

    def add(request: Any, **_: Any) -> None:
        for name, value in headers.items():
            request.headers["x-fake-" + name.replace("_", "-")] = value

    client.meta.events.register("before-sign.bedrock-runtime.*", add)
    return client


def test_converse(client: Any, fake: FakeBedrock) -> None:
    answer = client.converse(modelId=MODEL, messages=MESSAGES, system=[{"text": "Be brief."}])
    assert answer["output"]["message"] == {
        "role": "assistant",
        "content": [{"text": "Hello from the fake provider."}],
    }
    assert answer["stopReason"] == "end_turn"
    assert answer["usage"] == {"inputTokens": 6, "outputTokens": REPLY_WORDS, "totalTokens": 11}
    assert answer["metrics"]["latencyMs"] > 0
    # The model id travels URL-encoded in the path, as boto3 sends it.
    assert fake.requests[0].path == "/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/converse"
    assert list(fake.signers) == [ACCESS_KEY]


def test_converse_with_a_token_limit_and_cache_counts(client: Any) -> None:
    _with_headers(client, cached_tokens="7", cache_write_1h="4")
    answer = client.converse(modelId=MODEL, messages=MESSAGES, inferenceConfig={"maxTokens": 2})
    assert answer["stopReason"] == "max_tokens"
    assert answer["output"]["message"]["content"] == [{"text": "Hello from"}]
    assert answer["usage"] == {
        "inputTokens": 4,
        "outputTokens": 2,
        "totalTokens": 17,
        "cacheReadInputTokens": 7,
        "cacheWriteInputTokens": 4,
    }


def test_converse_stream_with_an_inference_profile_arn(client: Any, fake: FakeBedrock) -> None:
    _with_headers(client, chunks="3", cached_tokens="2")
    answer = client.converse_stream(modelId=PROFILE, messages=MESSAGES)
    assert answer["ResponseMetadata"]["HTTPHeaders"]["content-type"] == (
        "application/vnd.amazon.eventstream"
    )
    events = list(answer["stream"])
    kinds = [next(iter(e)) for e in events]
    assert kinds == [
        "messageStart",
        "contentBlockDelta",
        "contentBlockDelta",
        "contentBlockDelta",
        "contentBlockStop",
        "messageStop",
        "metadata",
    ]
    assert "".join(e["contentBlockDelta"]["delta"]["text"] for e in events[1:4]) == (
        "Hello from the"
    )
    assert events[5]["messageStop"] == {"stopReason": "end_turn"}
    assert events[6]["metadata"]["usage"] == {
        "inputTokens": 4,
        "outputTokens": 3,
        "totalTokens": 9,
        "cacheReadInputTokens": 2,
    }
    assert fake.requests[0].path == (
        "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile"
        "%2Fus.anthropic.claude-sonnet-4/converse-stream"
    )


def test_invoke_model_with_a_claude_body(client: Any) -> None:
    answer = client.invoke_model(modelId=MODEL, body=orjson.dumps(CLAUDE))
    message = orjson.loads(answer["body"].read())
    assert message["type"] == "message"
    assert message["content"] == [{"type": "text", "text": "Hello from the fake provider."}]
    assert message["usage"]["input_tokens"] == 2
    assert message["usage"]["output_tokens"] == REPLY_WORDS
    headers = answer["ResponseMetadata"]["HTTPHeaders"]
    assert headers["x-amzn-bedrock-input-token-count"] == "2"
    assert headers["x-amzn-bedrock-output-token-count"] == str(REPLY_WORDS)


def test_invoke_model_with_response_stream(client: Any) -> None:
    answer = client.invoke_model_with_response_stream(modelId=MODEL, body=orjson.dumps(CLAUDE))
    events = [orjson.loads(e["chunk"]["bytes"]) for e in answer["body"]]
    kinds = [e["type"] for e in events]
    assert kinds == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * REPLY_WORDS,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[0]["message"]["usage"]["input_tokens"] == 2
    assert events[-2]["usage"] == {"output_tokens": REPLY_WORDS}
    assert events[-1]["amazon-bedrock-invocationMetrics"] == {
        "inputTokenCount": 2,
        "outputTokenCount": REPLY_WORDS,
        "invocationLatency": 10,
        "firstByteLatency": 5,
    }


@pytest.mark.parametrize(
    ("knob", "exception", "status"),
    [
        ({"error": "ThrottlingException", "retry_after": "2"}, "ThrottlingException", 429),
        ({"status": "429"}, "ThrottlingException", 429),
        ({"status": "403"}, "AccessDeniedException", 403),
        ({"error": "ServiceUnavailableException"}, "ServiceUnavailableException", 503),
        ({"status": "400"}, "ValidationException", 400),
    ],
)
def test_errors_surface_as_botocores_modeled_exceptions(
    client: Any, knob: dict[str, str], exception: str, status: int
) -> None:
    _with_headers(client, **knob)
    with pytest.raises(getattr(client.exceptions, exception)) as caught:
        client.converse(modelId=MODEL, messages=MESSAGES)
    assert caught.value.response["Error"]["Code"] == exception
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
    assert caught.value.response["Error"]["Message"].startswith("Fake Bedrock")
    headers = caught.value.response["ResponseMetadata"]["HTTPHeaders"]
    assert headers["x-amzn-errortype"] == exception
    assert headers.get("retry-after") == knob.get("retry_after")


def test_a_claude_body_without_its_version_is_a_validation_error(client: Any) -> None:
    body = {k: v for k, v in CLAUDE.items() if k != "anthropic_version"}
    with pytest.raises(client.exceptions.ValidationException, match="anthropic_version"):
        client.invoke_model(modelId=MODEL, body=orjson.dumps(body))
    with pytest.raises(client.exceptions.ValidationException, match="extraneous key"):
        client.invoke_model(modelId=MODEL, body=orjson.dumps({**CLAUDE, "model": MODEL}))


def test_a_stream_exception_frame_is_raised_by_the_sdk(client: Any) -> None:
    _with_headers(client, error="ThrottlingException", exception_after_chunks="2")
    answer = client.converse_stream(modelId=MODEL, messages=MESSAGES)
    received: list[dict[str, Any]] = []

    def read_all() -> None:
        for event in answer["stream"]:
            received.append(event)

    with pytest.raises(botocore.exceptions.EventStreamError) as caught:
        read_all()
    assert [next(iter(e)) for e in received] == ["messageStart", *["contentBlockDelta"] * 2]
    assert caught.value.response["Error"]["Code"] == "throttlingException"


def test_an_invoke_stream_ends_with_a_model_stream_error(client: Any) -> None:
    _with_headers(client, exception_after_chunks="1")
    answer = client.invoke_model_with_response_stream(modelId=MODEL, body=orjson.dumps(CLAUDE))
    received: list[dict[str, Any]] = []

    def read_all() -> None:
        for event in answer["body"]:
            received.append(event)

    with pytest.raises(botocore.exceptions.EventStreamError) as caught:
        read_all()
    assert len(received) == 3  # message_start, content_block_start, one delta
    assert caught.value.response["Error"]["Code"] == "modelStreamErrorException"


def test_a_truncated_stream_ends_without_its_metadata(client: Any, fake: FakeBedrock) -> None:
    _with_headers(client, truncate_after_chunks="2")
    events = list(client.converse_stream(modelId=MODEL, messages=MESSAGES)["stream"])
    assert [next(iter(e)) for e in events] == ["messageStart", *["contentBlockDelta"] * 2]
    fake.wait_until(lambda: fake.completed == 1)


def test_a_reset_stream_breaks_the_sdks_read(client: Any, fake: FakeBedrock) -> None:
    _with_headers(client, reset_after_chunks="1")
    answer = client.converse_stream(modelId=MODEL, messages=MESSAGES)
    # botocore lets urllib3's error through from an event stream's read.
    with pytest.raises(urllib3.exceptions.ProtocolError):
        list(answer["stream"])
    fake.wait_until(lambda: fake.resets == 1)


def test_a_wrong_secret_or_an_unknown_key_is_refused(upstream: RunningServer) -> None:
    with pytest.raises(botocore.exceptions.ClientError) as wrong:
        _client(upstream, secret="not-the-secret").converse(modelId=MODEL, messages=MESSAGES)
    assert wrong.value.response["Error"]["Code"] == "InvalidSignatureException"
    assert wrong.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    with pytest.raises(botocore.exceptions.ClientError) as unknown:
        _client(upstream, key="AKIDNOBODY").converse(modelId=MODEL, messages=MESSAGES)
    assert unknown.value.response["Error"]["Code"] == "UnrecognizedClientException"


def test_a_bedrock_api_key_as_bearer(upstream: RunningServer, fake: FakeBedrock) -> None:
    url = f"{upstream.url}/model/{MODEL.replace(':', '%3A')}/converse"
    body = {"messages": MESSAGES}
    ok = httpx.post(url, json=body, headers={"authorization": f"Bearer {API_KEY}"})
    assert ok.status_code == 200
    assert list(fake.signers) == ["bearer"]
    refused = httpx.post(url, json=body, headers={"authorization": "Bearer ABSK-wrong"})
    assert refused.status_code == 403
    assert refused.headers["x-amzn-errortype"] == "UnrecognizedClientException"
    unsigned = httpx.post(url, json=body)
    assert unsigned.status_code == 403
    assert unsigned.headers["x-amzn-errortype"] == "MissingAuthenticationTokenException"


def test_unknown_paths_and_bad_knobs(upstream: RunningServer) -> None:
    auth = {"authorization": f"Bearer {API_KEY}"}
    missing = httpx.post(f"{upstream.url}/model/{MODEL}/generate", json={}, headers=auth)
    assert missing.status_code == 404
    assert missing.headers["x-amzn-errortype"] == "UnknownOperationException"
    url = f"{upstream.url}/model/m/converse"
    bad = httpx.post(url, json={"messages": MESSAGES}, headers={**auth, "x-fake-error": "Oops"})
    assert bad.status_code == 400
    assert "error must be one of" in bad.json()["message"]


def test_knobs_by_configure(client: Any, fake: FakeBedrock) -> None:
    fake.configure(reply="Configured reply here", cache_write_5m=3)
    try:
        answer = client.converse(modelId=MODEL, messages=MESSAGES)
        assert answer["output"]["message"]["content"] == [{"text": "Configured reply here"}]
        assert answer["usage"]["cacheWriteInputTokens"] == 3
    finally:
        fake.configure(reply="Hello from the fake provider.", cache_write_5m=0)
    with pytest.raises(TypeError):
        fake.configure(colour="blue")


def test_chunk_payloads_are_base64_of_anthropic_events(upstream: RunningServer) -> None:
    """What boto3 decodes for the caller, seen on the wire: ``{"bytes": <base64>}``."""
    url = f"{upstream.url}/model/{MODEL}/invoke-with-response-stream"
    raw = httpx.post(url, json=CLAUDE, headers={"authorization": f"Bearer {API_KEY}"}).content
    (total,) = (int.from_bytes(raw[:4], "big"),)
    headers_length = int.from_bytes(raw[4:8], "big")
    payload = orjson.loads(raw[12 + headers_length : total - 4])
    assert set(payload) == {"bytes"}
    assert orjson.loads(base64.b64decode(payload["bytes"]))["type"] == "message_start"


def test_anthropic_bedrock_client(upstream: RunningServer, fake: FakeBedrock) -> None:
    """The ``anthropic`` SDK's Bedrock client: InvokeModel (and its stream), SigV4 or API key."""
    signed = anthropic.AnthropicBedrock(
        aws_access_key=ACCESS_KEY,
        aws_secret_key=SECRET,
        aws_region="us-east-1",
        base_url=upstream.url,
        max_retries=0,
    )
    message = signed.messages.create(
        model=MODEL, max_tokens=20, messages=[{"role": "user", "content": "hi there"}]
    )
    assert message.content[0].text == "Hello from the fake provider."  # type: ignore[union-attr]
    assert (message.usage.input_tokens, message.usage.output_tokens) == (2, REPLY_WORDS)
    with signed.messages.stream(
        model="us.anthropic.claude-sonnet-4-20250514-v1:0",
        max_tokens=20,
        messages=[{"role": "user", "content": "hi"}],
    ) as stream:
        assert "".join(stream.text_stream) == "Hello from the fake provider."
        assert stream.get_final_message().usage.output_tokens == REPLY_WORDS
    with pytest.raises(anthropic.RateLimitError):
        signed.messages.create(
            model=MODEL,
            max_tokens=20,
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-fake-error": "ThrottlingException"},
        )
    keyed = anthropic.AnthropicBedrock(
        api_key=API_KEY, aws_region="us-east-1", base_url=upstream.url, max_retries=0
    )
    keyed.messages.create(model=MODEL, max_tokens=20, messages=[{"role": "user", "content": "x"}])
    assert list(fake.signers) == [ACCESS_KEY, ACCESS_KEY, ACCESS_KEY, "bearer"]
    assert [r.path.rsplit("/", 1)[1] for r in fake.requests] == [
        "invoke",
        "invoke-with-response-stream",
        "invoke",
        "invoke",
    ]
