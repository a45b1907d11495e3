"""Amazon Bedrock through a served gateway, its harder cases: budgets that read Bedrock's output
caps, streams whose first frame is an exception (retried elsewhere), streams cut in the middle of
a frame (the client still gets whole frames, then the terminal exception)."""

from __future__ import annotations

import httpx
import orjson
import pytest

from asgi_llmguard import (
    Budget,
    KeyPolicy,
    MemoryBudgetStore,
    StaticKey,
    StaticKeyStore,
    Upstream,
    build_stack,
    hash_key,
)
from asgi_llmguard.testing import FakeBedrock, serve

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
