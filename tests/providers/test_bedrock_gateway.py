"""Amazon Bedrock through a served gateway, its harder cases: budgets that read Bedrock's output
caps, streams whose first frame is an exception (retried elsewhere), streams cut in the middle of
a frame (the client still gets whole frames, then the terminal exception)."""

from __future__ import annotations

from typing import Any

import boto3
import botocore.exceptions
import httpx
import orjson
import pytest
from botocore.config import Config
from botocore.eventstream import EventStreamBuffer

from asgi_llmguard import (
    Budget,
    KeyPolicy,
    MemoryBudgetStore,
    SQLiteSink,
    StaticKey,
    StaticKeyStore,
    Upstream,
    UsagePipeline,
    build_stack,
    hash_key,
)
from asgi_llmguard.forward.cooldowns import CooldownPolicy
from asgi_llmguard.forward.router import Routing
from asgi_llmguard.testing import FakeBedrock, serve
from tests.ledger import ledger_rows as rows

CALLER_KEY = "sk-llmg-bedrock-caller-0123456789abcdefghijklmnop"
AKID, SECRET = "AKIDEXAMPLEBEDGW0001", "bed-gateway-test-secret-access-key"
MODEL = "anthropic.claude-sonnet-4-5-20250929-v1:0"
MESSAGES = [{"role": "user", "content": [{"text": "one two three"}]}]


@pytest.fixture
def aws_env(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", AKID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def keys(**policy: object) -> StaticKeyStore:
    rules = KeyPolicy(key_id="br", models=("anthropic.*",), **policy)  # type: ignore[arg-type]
    return StaticKeyStore([StaticKey(rules, key_hash=hash_key(CALLER_KEY))])


def post(url: str, path: str, body: dict, **headers: str) -> httpx.Response:
    return httpx.post(
        url + path,
        content=orjson.dumps(body),
        headers={
            "authorization": f"Bearer {CALLER_KEY}",
            "content-type": "application/json",
            **headers,
        },
        timeout=10,
    )


# -- budgets -------------------------------------------------------------------------------------


def test_a_budget_reservation_counts_bedrocks_max_tokens(aws_env):
    """$0.02 left: the default 1,024 output tokens fit (15.4M nanos at $15/Mtok), 2,000 do not.
    Converse names its cap in ``inferenceConfig.maxTokens``, InvokeModel (Claude's body) in
    ``max_tokens``: both are reserved for."""
    fake = FakeBedrock(access_keys={AKID: SECRET})
    with serve(fake) as upstream:
        app = build_stack(
            upstreams=[Upstream("bedrock", upstream.url, name="br")],
            keys=keys(budget=Budget(total=0.02)),
            usage={"budgets": MemoryBudgetStore()},
        )
        with serve(app) as server:
            big = {"messages": MESSAGES, "inferenceConfig": {"maxTokens": 2000}}
            refused = post(server.url, f"/model/{MODEL}/converse", big)
            assert refused.status_code == 429, refused.text
            assert refused.headers["x-amzn-errortype"] == "ThrottlingException"
            claude = {
                "anthropic_version": "bedrock-2023-05-31",
                "max_tokens": 2000,
                "messages": [{"role": "user", "content": "one two"}],
            }
            refused = post(server.url, f"/model/{MODEL}/invoke-with-response-stream", claude)
            assert refused.status_code == 429, refused.text
            assert len(fake.requests) == 0
            small = {"messages": MESSAGES, "inferenceConfig": {"maxTokens": 100}}
            admitted = post(server.url, f"/model/{MODEL}/converse", small)
            assert admitted.status_code == 200, admitted.text
            admitted = post(server.url, f"/model/{MODEL}/invoke", {**claude, "max_tokens": 100})
            assert admitted.status_code == 200, admitted.text


# -- a stream whose first frame is an exception ---------------------------------------------------


def frames(raw: bytes) -> list[tuple[dict, dict]]:
    """(headers, payload) of each frame, parsed by botocore."""
    buffer = EventStreamBuffer()
    buffer.add_data(raw)
    return [(dict(m.headers), orjson.loads(m.payload) if m.payload else {}) for m in buffer]


@pytest.mark.parametrize(
    "exception", ["ThrottlingException", "ServiceUnavailableException", "ModelStreamErrorException"]
)
def test_an_exception_as_the_first_frame_fails_over_and_cools_down(aws_env, tmp_path, exception):
    primary = FakeBedrock(access_keys={AKID: SECRET}, error=exception, exception_first=True)
    spare = FakeBedrock(access_keys={AKID: SECRET})
    routing = Routing(
        selector="fill-first", hold_first_event=True, cooldowns=CooldownPolicy(base=30, cap=60)
    )
    ledger = tmp_path / "ledger.sqlite3"
    pipeline = UsagePipeline([SQLiteSink(str(ledger))], spill_path=str(tmp_path / "spill"))
    with serve(primary) as a, serve(spare) as b:
        upstreams = [Upstream("bedrock", a.url, name="a"), Upstream("bedrock", b.url, name="b")]
        app = build_stack(upstreams=upstreams, keys=keys(), routing=routing, pipeline=pipeline)
        with serve(app) as server:
            for _ in range(3):
                body = {"messages": MESSAGES}
                resp = post(server.url, f"/model/{MODEL}/converse-stream", body)
                assert resp.status_code == 200, resp.text
                parsed = frames(resp.content)
                assert [h[":message-type"] for h, _ in parsed] == ["event"] * len(parsed)
                assert parsed[-1][0][":event-type"] == "metadata"
    # The first request moved to the spare; the primary then cooled down.
    assert (len(primary.requests), len(spare.requests)) == (1, 3)
    found = rows(ledger, 4)
    failed = [r for r in found if r["credential_id"] == "a"]
    assert [r["outcome"] for r in failed] == ["upstream_error"]
    assert failed[0]["status"] in (429, 500, 503)


def test_without_another_credential_the_first_frame_exception_reaches_the_sdk(aws_env):
    """The last possible attempt is relayed as it is: boto3 raises the modeled exception."""
    fake = FakeBedrock(
        access_keys={AKID: SECRET}, error="ThrottlingException", exception_first=True
    )
    routing = Routing(hold_first_event=True)
    with serve(fake) as upstream:
        upstreams = [Upstream("bedrock", upstream.url, name="br")]
        with serve(build_stack(upstreams=upstreams, keys=keys(), routing=routing)) as server:
            resp = post(server.url, f"/model/{MODEL}/converse-stream", {"messages": MESSAGES})
    assert resp.status_code == 200
    ((headers, _),) = frames(resp.content)
    assert headers[":exception-type"] == "throttlingException"


# -- a stream cut in the middle of a frame --------------------------------------------------------


@pytest.fixture
def tls_gateway(aws_env, tmp_path, monkeypatch):
    """boto3 sends a bearer token over HTTPS only: the gateway is served over TLS."""
    from tests.test_redis_tls import make_certs

    certs = make_certs(tmp_path)
    fake = FakeBedrock(access_keys={AKID: SECRET})
    tls = {"ssl_certfile": str(certs["server_cert"]), "ssl_keyfile": str(certs["server_key"])}
    with serve(fake) as upstream:
        app = build_stack(upstreams=[Upstream("bedrock", upstream.url, name="br")], keys=keys())
        with serve(app, **tls) as server:
            monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", CALLER_KEY)
            client = boto3.client(
                "bedrock-runtime",
                region_name="us-east-1",
                endpoint_url=f"https://127.0.0.1:{server.port}",
                verify=str(certs["ca_cert"]),
                config=Config(retries={"max_attempts": 1}),
            )
            yield client, fake


def with_headers(client: Any, **headers: str) -> Any:
    def add(request: Any, **_: Any) -> None:
        for name, value in headers.items():
            request.headers["x-fake-" + name.replace("_", "-")] = value

    client.meta.events.register("before-sign.bedrock-runtime.*", add)
    return client


def test_boto3_converse_stream_cut_mid_frame_raises_the_modeled_exception(tls_gateway):
    client, fake = tls_gateway
    with_headers(client, cut_mid_frame_after_chunks="2")
    answer = client.converse_stream(modelId=MODEL, messages=MESSAGES)
    received: list[dict[str, Any]] = []
    with pytest.raises(botocore.exceptions.EventStreamError) as caught:
        received.extend(answer["stream"])
    assert [next(iter(e)) for e in received] == ["messageStart", *["contentBlockDelta"] * 2]
    assert caught.value.response["Error"]["Code"] == "internalServerException"
    assert fake.resets == 1


def test_boto3_invoke_stream_cut_mid_frame_raises_the_modeled_exception(tls_gateway):
    client, _ = tls_gateway
    with_headers(client, cut_mid_frame_after_chunks="1")
    claude = {
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": 20,
        "messages": [{"role": "user", "content": "a b c d"}],
    }
    answer = client.invoke_model_with_response_stream(modelId=MODEL, body=orjson.dumps(claude))
    received: list[dict[str, Any]] = []
    with pytest.raises(botocore.exceptions.EventStreamError) as caught:
        received.extend(answer["body"])
    assert received
    assert all("chunk" in e for e in received)
    assert caught.value.response["Error"]["Code"] == "internalServerException"
