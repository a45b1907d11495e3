"""Amazon Bedrock Runtime through a served gateway: client -> gateway (uvicorn) -> FakeBedrock.

The fake checks every upstream request's SigV4 signature against static test credentials. The
caller sends its virtual key as ``Authorization: Bearer`` (a Bedrock API key's form). boto3
sends a bearer token over HTTPS only: its test serves the gateway over TLS with a certificate
made by ``openssl``. The other tests use plain HTTP: Converse with httpx, its event stream read
by botocore's own event-stream parser, and InvokeModel with the anthropic SDK's
``AnthropicBedrock``. Token numbers are the fake's.
"""

from __future__ import annotations

import anthropic
import httpx
import orjson
import pytest
from botocore.eventstream import EventStreamBuffer

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
from asgi_llmguard.errors import ConfigurationError
from asgi_llmguard.forward.cooldowns import CooldownPolicy
from asgi_llmguard.forward.router import Routing
from asgi_llmguard.testing import FakeBedrock, serve
from tests.ledger import ledger_rows as rows

CALLER_KEY = "sk-llmg-bedrock-caller-0123456789abcdefghijklmnop"
AKID, SECRET = "AKIDEXAMPLEWBED0001", "wbed-test-secret-access-key"
MODEL = "anthropic.claude-sonnet-4-5-20250929-v1:0"
PROFILE = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
ARN = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/" + PROFILE
BODY = {"messages": [{"role": "user", "content": [{"text": "one two three"}]}]}


@pytest.fixture
def gateway(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", AKID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    fake = FakeBedrock(access_keys={AKID: SECRET})
    policy = KeyPolicy(key_id="br", models=("anthropic.*", "us.anthropic.*", "arn:aws:bedrock:*"))
    keys = StaticKeyStore([StaticKey(policy, key_hash=hash_key(CALLER_KEY))])
    ledger = tmp_path / "ledger.sqlite3"
    pipeline = UsagePipeline([SQLiteSink(str(ledger))], spill_path=str(tmp_path / "spill"))
    with serve(fake) as upstream:
        app = build_stack(
            upstreams=[Upstream("bedrock", upstream.url, name="br")],
            keys=keys,
            pipeline=pipeline,
        )
        with serve(app) as server:
            yield server, fake, ledger


def post(url: str, path: str, key: str = CALLER_KEY, **headers: str) -> httpx.Response:
    return httpx.post(
        url + path,
        content=orjson.dumps(BODY),
        headers={"authorization": f"Bearer {key}", "content-type": "application/json", **headers},
        timeout=10,
    )


def frames(raw: bytes) -> list[tuple[dict, dict]]:
    """(headers, payload) of each frame, parsed by botocore."""
    buffer = EventStreamBuffer()
    buffer.add_data(raw)
    return [(dict(m.headers), orjson.loads(m.payload) if m.payload else {}) for m in buffer]


def test_converse_is_signed_upstream_and_recorded_exactly(gateway):
    server, fake, ledger = gateway
    resp = post(server.url, f"/model/{MODEL}/converse")
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    usage = answer["usage"]
    assert usage["inputTokens"] == 3
    # The upstream saw a SigV4 signature with the gateway's credentials, never the caller's key.
    assert list(fake.signers) == [AKID]
    sent = fake.requests[-1]
    assert CALLER_KEY not in repr(sent.headers)
    (row,) = rows(ledger, 1)
    assert (row["provider"], row["endpoint"], row["model"]) == ("bedrock", "converse", MODEL)
    assert (row["input_tokens"], row["output_tokens"]) == (3, usage["outputTokens"])
    assert (row["outcome"], row["status"], row["key_id"]) == ("ok", 200, "br")
    assert row["cost_nanos"] == round(3 * 3.0 * 1000 + usage["outputTokens"] * 15.0 * 1000)


def test_converse_stream_with_an_inference_profile_arn(gateway):
    server, fake, ledger = gateway
    encoded = ARN.replace(":", "%3A").replace("/", "%2F")
    resp = post(server.url, f"/model/{encoded}/converse-stream")
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/vnd.amazon.eventstream"
    parsed = frames(resp.content)
    kinds = [h[":event-type"] for h, _ in parsed]
    assert kinds[0] == "messageStart"
    assert kinds[-1] == "metadata"
    usage = parsed[-1][1]["usage"]
    assert fake.requests[-1].path.endswith("inference-profile%2F" + PROFILE + "/converse-stream")
    (row,) = rows(ledger, 1)
    assert (row["endpoint"], row["model"], row["stream"], row["estimated"]) == (
        "converse-stream",
        ARN,
        1,
        0,
    )
    assert (row["input_tokens"], row["output_tokens"]) == (
        usage["inputTokens"],
        usage["outputTokens"],
    )


def test_a_stream_the_upstream_breaks_ends_with_an_exception_frame(gateway):
    server, _, _ledger = gateway
    resp = post(
        server.url, f"/model/{MODEL}/converse-stream", **{"x-fake-truncate-after-chunks": "2"}
    )
    assert resp.status_code == 200
    last_headers, last_payload = frames(resp.content)[-1]
    assert last_headers[":message-type"] == "exception"
    assert last_headers[":exception-type"] == "internalServerException"
    assert "before it was complete" in last_payload["message"]


def test_a_wrong_key_is_refused_in_bedrocks_shape(gateway):
    server, fake, _ = gateway
    resp = post(server.url, f"/model/{MODEL}/converse", key="sk-llmg-wrong")
    assert resp.status_code == 401
    body = resp.json()
    assert set(body) >= {"message"}
    assert body["__type"] == "AccessDeniedException"
    assert resp.headers["x-amzn-errortype"] == "AccessDeniedException"
    assert len(fake.requests) == 0


def test_a_model_outside_the_keys_list_is_refused(gateway):
    server, fake, _ = gateway
    resp = post(server.url, "/model/meta.llama3-70b-instruct-v1:0/converse")
    assert resp.status_code == 403, resp.text
    assert resp.headers["x-amzn-errortype"] == "AccessDeniedException"
    assert "message" in resp.json()
    assert len(fake.requests) == 0


def bedrock_sdk(url: str, key: str = CALLER_KEY) -> anthropic.AnthropicBedrock:
    return anthropic.AnthropicBedrock(
        api_key=key, aws_region="us-east-1", base_url=url, max_retries=0
    )


def test_invoke_model_with_claude_is_recorded_exactly(gateway):
    server, fake, ledger = gateway
    message = bedrock_sdk(server.url).messages.create(
        model=MODEL, max_tokens=20, messages=[{"role": "user", "content": "one two three four"}]
    )
    assert message.content[0].text == "Hello from the fake provider."
    assert list(fake.signers) == [AKID]
    assert fake.requests[-1].path.endswith("/invoke")
    (row,) = rows(ledger, 1)
    assert (row["endpoint"], row["model"], row["stream"]) == ("invoke", MODEL, 0)
    assert (row["input_tokens"], row["output_tokens"]) == (
        message.usage.input_tokens,
        message.usage.output_tokens,
    )
    assert row["input_tokens"] == 4
    assert row["cost_nanos"] == round(4 * 3.0 * 1000 + row["output_tokens"] * 15.0 * 1000)


def test_invoke_model_with_response_stream_is_recorded_exactly(gateway):
    server, fake, ledger = gateway
    with bedrock_sdk(server.url).messages.stream(
        model=PROFILE, max_tokens=20, messages=[{"role": "user", "content": "alpha beta"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Hello from the fake provider."
    assert fake.requests[-1].path.endswith("/invoke-with-response-stream")
    (row,) = rows(ledger, 1)
    assert (row["endpoint"], row["model"], row["stream"], row["estimated"]) == (
        "invoke-with-response-stream",
        PROFILE,
        1,
        0,
    )
    assert (row["input_tokens"], row["output_tokens"]) == (2, final.usage.output_tokens)
    # An inference profile is priced as the model it serves.
    assert row["cost_nanos"] == round(2 * 3.0 * 1000 + row["output_tokens"] * 15.0 * 1000)


def test_a_bedrock_api_key_upstream_is_sent_as_bearer(tmp_path):
    fake = FakeBedrock(api_key="bedrock-api-key-upstream-secret")
    policy = KeyPolicy(key_id="br", models=("anthropic.*",))
    keys = StaticKeyStore([StaticKey(policy, key_hash=hash_key(CALLER_KEY))])
    with serve(fake) as upstream:
        upstreams = [Upstream("bedrock", upstream.url, api_key="bedrock-api-key-upstream-secret")]
        with serve(build_stack(upstreams=upstreams, keys=keys)) as server:
            resp = post(server.url, f"/model/{MODEL}/converse")
    assert resp.status_code == 200, resp.text
    assert list(fake.signers) == ["bearer"]
    assert CALLER_KEY not in repr(fake.requests[-1].headers)


@pytest.mark.parametrize("exception", ["ThrottlingException", "ServiceUnavailableException"])
def test_throttling_and_unavailability_cool_the_credential_down(monkeypatch, tmp_path, exception):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", AKID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    primary = FakeBedrock(access_keys={AKID: SECRET}, error=exception)
    spare = FakeBedrock(access_keys={AKID: SECRET})
    policy = KeyPolicy(key_id="br", models=("anthropic.*",))
    keys = StaticKeyStore([StaticKey(policy, key_hash=hash_key(CALLER_KEY))])
    routing = Routing(selector="fill-first", cooldowns=CooldownPolicy(base=30, cap=60))
    with serve(primary) as a, serve(spare) as b:
        upstreams = [
            Upstream("bedrock", a.url, name="a"),
            Upstream("bedrock", b.url, name="b"),
        ]
        with serve(build_stack(upstreams=upstreams, keys=keys, routing=routing)) as server:
            for _ in range(3):
                resp = post(server.url, f"/model/{MODEL}/converse")
                assert resp.status_code == 200, resp.text
    # The first answer moved the request to the spare; the primary then cooled down.
    assert (len(primary.requests), len(spare.requests)) == (1, 3)


def test_an_unknown_operation_is_refused_in_bedrocks_shape(gateway):
    server, fake, _ = gateway
    resp = post(server.url, f"/model/{MODEL}/converse-everything")
    assert resp.status_code == 404
    assert resp.headers["x-amzn-errortype"] == "ResourceNotFoundException"
    assert "message" in resp.json()
    assert len(fake.requests) == 0


def test_bedrock_cannot_be_the_passthrough_api():
    with pytest.raises(ConfigurationError, match="passthrough must be"):
        build_stack(
            upstreams=[Upstream("bedrock", "http://127.0.0.1:9", api_key="k")],
            passthrough="bedrock",
        )


def test_boto3_with_a_bearer_token_over_tls(tmp_path, monkeypatch):
    """The real boto3 ``bedrock-runtime`` client, its key in ``AWS_BEARER_TOKEN_BEDROCK``: it
    sends a bearer token over HTTPS only, so the gateway is served over TLS here."""
    import boto3
    from botocore.config import Config

    from tests.test_redis_tls import make_certs

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", AKID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    certs = make_certs(tmp_path)
    fake = FakeBedrock(access_keys={AKID: SECRET})
    policy = KeyPolicy(key_id="br", models=("anthropic.*", "arn:aws:bedrock:*"))
    keys = StaticKeyStore([StaticKey(policy, key_hash=hash_key(CALLER_KEY))])
    tls = {"ssl_certfile": str(certs["server_cert"]), "ssl_keyfile": str(certs["server_key"])}
    with serve(fake) as upstream:
        app = build_stack(upstreams=[Upstream("bedrock", upstream.url, name="br")], keys=keys)
        with serve(app, **tls) as server:

            def client(key: str):  # botocore reads the token when the client is made
                monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", key)
                return boto3.client(
                    "bedrock-runtime",
                    region_name="us-east-1",
                    endpoint_url=f"https://127.0.0.1:{server.port}",
                    verify=str(certs["ca_cert"]),
                    config=Config(retries={"max_attempts": 1}),
                )

            bedrock = client(CALLER_KEY)
            out = bedrock.converse(
                modelId=MODEL, messages=[{"role": "user", "content": [{"text": "one two"}]}]
            )
            assert out["usage"]["inputTokens"] == 2
            stream = bedrock.converse_stream(
                modelId=ARN, messages=[{"role": "user", "content": [{"text": "one two three"}]}]
            )["stream"]
            assert list(stream)[-1]["metadata"]["usage"]["inputTokens"] == 3
            claude = {
                "anthropic_version": "bedrock-2023-05-31",
                "max_tokens": 20,
                "messages": [{"role": "user", "content": "a b c d"}],
            }
            invoked = bedrock.invoke_model(modelId=MODEL, body=orjson.dumps(claude))
            assert orjson.loads(invoked["body"].read())["usage"]["input_tokens"] == 4
            streamed = bedrock.invoke_model_with_response_stream(
                modelId=MODEL, body=orjson.dumps(claude)
            )["body"]
            assert sum(1 for _ in streamed) > 2
            wrong = client("sk-llmg-wrong-key")
            with pytest.raises(wrong.exceptions.AccessDeniedException):
                wrong.converse(
                    modelId=MODEL, messages=[{"role": "user", "content": [{"text": "x"}]}]
                )
    assert list(fake.signers) == [AKID] * 4


def test_a_stream_the_upstream_resets_ends_with_an_exception_frame(gateway):
    server, _, _ = gateway
    resp = post(server.url, f"/model/{MODEL}/converse-stream", **{"x-fake-reset-after-chunks": "2"})
    assert resp.status_code == 200
    parsed = frames(resp.content)
    assert parsed[0][0][":event-type"] == "messageStart"
    last_headers, _ = parsed[-1]
    assert last_headers[":message-type"] == "exception"
    assert last_headers[":exception-type"] == "internalServerException"
