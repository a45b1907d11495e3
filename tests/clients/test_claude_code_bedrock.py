"""The real Claude Code CLI in its Bedrock mode (``CLAUDE_CODE_USE_BEDROCK=1``): directly against
the fake Bedrock Runtime (the fake speaks what Claude Code expects, signatures included), and
through the gateway, which signs upstream with SigV4."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx
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
from asgi_llmguard.testing import FakeBedrock, serve
from tests.clients.conftest import NODE_DIR, require_node_package
from tests.ledger import ledger_rows as _rows

CLAUDE = NODE_DIR / "node_modules" / ".bin" / "claude"
ACCESS_KEY, SECRET = "AKIDCLAUDECODE", "claude-code-bedrock-secret"
MODEL = "us.anthropic.claude-haiku-4-5-20251001-v1:0"


def test_claude_code_in_bedrock_mode_against_the_fake(tmp_path: Path) -> None:
    require_node_package("@anthropic-ai/claude-code")
    fake = FakeBedrock(access_keys={ACCESS_KEY: SECRET}, region="us-east-1")
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "CLAUDE_", "AWS_"))
    }
    with serve(fake) as upstream:
        env.update(
            HOME=str(tmp_path),
            CLAUDE_CODE_USE_BEDROCK="1",
            ANTHROPIC_BEDROCK_BASE_URL=upstream.url,
            AWS_REGION="us-east-1",
            AWS_ACCESS_KEY_ID=ACCESS_KEY,
            AWS_SECRET_ACCESS_KEY=SECRET,
            AWS_EC2_METADATA_DISABLED="true",
            AWS_CONFIG_FILE=str(tmp_path / "aws-config"),
            AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "aws-credentials"),
            DISABLE_AUTOUPDATER="1",
            DISABLE_TELEMETRY="1",
            DISABLE_ERROR_REPORTING="1",
            CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
        )
        done = subprocess.run(
            [str(CLAUDE), "-p", "say hello", "--model", MODEL],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Hello from the fake provider." in done.stdout
    invoked = [r for r in fake.requests if r.path.startswith("/model/")]
    streamed = [r for r in invoked if r.path == f"/model/{MODEL}/invoke-with-response-stream"]
    # One streamed call answered the prompt: Claude Code falls back to a plain ``invoke`` when it
    # cannot read a stream, so that fallback must not have happened.
    assert len(streamed) == 1, [r.path for r in fake.requests]
    assert invoked[-1] is streamed[0], [r.path for r in fake.requests]
    assert streamed[-1].json()["anthropic_version"]
    # Every model call was signed with SigV4 and accepted by the fake's own checker.
    assert all((r.header("authorization") or "").startswith("AWS4-HMAC-SHA256 ") for r in invoked)
    assert list(fake.signers) == [ACCESS_KEY] * len(invoked)


GATEWAY_AKID, GATEWAY_SECRET = "AKIDGATEWAYSIGNS", "gateway-signing-secret"
CALLER_KEY = "sk-llmg-claude-code-bedrock-0123456789abcdef"
REPLAY_KEY = "bedrock-api-key-for-replaying"


@pytest.mark.parametrize("key_variable", ["ANTHROPIC_AUTH_TOKEN", "AWS_BEARER_TOKEN_BEDROCK"])
def test_claude_code_in_bedrock_mode_through_the_gateway(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key_variable: str
) -> None:
    """Claude Code's Bedrock mode pointed at the gateway: ``CLAUDE_CODE_SKIP_BEDROCK_AUTH=1``
    makes it sign nothing, and it then sends ``ANTHROPIC_AUTH_TOKEN`` (or a Bedrock API key,
    ``AWS_BEARER_TOKEN_BEDROCK``) as ``Authorization: Bearer``: the virtual key. The gateway
    signs upstream with SigV4 (its own AWS credentials) and records the fake's token numbers."""
    require_node_package("@anthropic-ai/claude-code")
    # The gateway (in this process) signs with these; Claude Code gets no AWS credentials.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", GATEWAY_AKID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", GATEWAY_SECRET)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    fake = FakeBedrock(access_keys={GATEWAY_AKID: GATEWAY_SECRET}, api_key=REPLAY_KEY)
    policy = KeyPolicy(key_id="cc-bedrock", models=("us.anthropic.*", "anthropic.*"))
    keys = StaticKeyStore([StaticKey(policy, key_hash=hash_key(CALLER_KEY))])
    ledger = tmp_path / "ledger.sqlite3"
    pipeline = UsagePipeline(
        [SQLiteSink(str(ledger))], spill_path=str(tmp_path / "spill"), flush_interval=0.05
    )
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "CLAUDE_", "AWS_"))
    }
    with serve(fake) as upstream:
        app = build_stack(
            upstreams=[Upstream("bedrock", upstream.url, name="br", region="us-east-1")],
            keys=keys,
            pipeline=pipeline,
        )
        with serve(app) as server:
            env.update(
                HOME=str(tmp_path),
                CLAUDE_CODE_USE_BEDROCK="1",
                CLAUDE_CODE_SKIP_BEDROCK_AUTH="1",
                ANTHROPIC_BEDROCK_BASE_URL=server.url,
                AWS_REGION="us-east-1",
                AWS_EC2_METADATA_DISABLED="true",
                AWS_CONFIG_FILE=str(tmp_path / "aws-config"),
                AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "aws-credentials"),
                DISABLE_AUTOUPDATER="1",
                DISABLE_TELEMETRY="1",
                DISABLE_ERROR_REPORTING="1",
                CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
                **{key_variable: CALLER_KEY},
            )
            done = subprocess.run(
                [str(CLAUDE), "-p", "say hello", "--model", MODEL],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=90,
                check=False,
            )
            assert done.returncode == 0, done.stdout + done.stderr
            assert "Hello from the fake provider." in done.stdout
            invoked = [r for r in fake.requests if r.path.startswith("/model/")]
            assert invoked, [r.path for r in fake.requests]
            # Signed by the gateway, never carrying the caller's key.
            assert list(fake.signers) == [GATEWAY_AKID] * len(invoked)
            assert all(CALLER_KEY not in repr(r.headers) for r in invoked)
            streamed = invoked[-1]
            assert streamed.path == f"/model/{MODEL}/invoke-with-response-stream"
            # The fake's own numbers for that request: the same body, answered as JSON.
            replay = httpx.post(
                f"{upstream.url}/model/{MODEL}/invoke",
                content=streamed.body,
                headers={"authorization": f"Bearer {REPLAY_KEY}"},
                timeout=10,
            )
            assert replay.status_code == 200, replay.text
            usage = replay.json()["usage"]
            rows = _rows(ledger, len(invoked))
    row = rows[-1]
    assert (row["provider"], row["endpoint"], row["model"]) == (
        "bedrock",
        "invoke-with-response-stream",
        MODEL,
    )
    assert (row["key_id"], row["credential_id"], row["outcome"]) == ("cc-bedrock", "br", "ok")
    cached = usage.get("cache_read_input_tokens") or 0
    written = usage.get("cache_creation_input_tokens") or 0
    assert row["input_tokens"] == usage["input_tokens"] + cached + written
    assert row["output_tokens"] == usage["output_tokens"]
    assert not row["estimated"]
