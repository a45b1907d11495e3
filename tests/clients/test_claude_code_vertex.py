"""The real Claude Code CLI in its Vertex AI mode, through the gateway, to the fake Vertex AI.

Claude Code is told to skip Google authentication (``CLAUDE_CODE_SKIP_VERTEX_AUTH=1``) and to use
the gateway as its Vertex endpoint (``ANTHROPIC_VERTEX_BASE_URL=<gateway>/v1``, the root the
AnthropicVertex SDK puts ``/projects/...`` under). Skipping Google's auth, it sends
``ANTHROPIC_AUTH_TOKEN`` as ``Authorization: Bearer``, or the ``Authorization`` header of
``ANTHROPIC_CUSTOM_HEADERS`` as it is: the virtual key goes in either. The
gateway authenticates upstream with its own service account (tokens from the fake's token
endpoint) and sends every request to its own project and location, whatever Claude Code's
``ANTHROPIC_VERTEX_PROJECT_ID`` and ``CLOUD_ML_REGION`` say.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

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
from asgi_llmguard.testing import FakeProvider, FakeVertex, serve
from tests.clients.conftest import NODE_DIR, require_node_package
from tests.ledger import ledger_rows as _rows

CLAUDE = NODE_DIR / "node_modules" / ".bin" / "claude"
CALLER_KEY = "sk-llmg-claude-code-vertex-0123456789abcdefghijklmn"
MODEL = "claude-sonnet-4-5@20250929"
REPLY = "Hello from the fake provider."
GATEWAY_PROJECT, GATEWAY_LOCATION = "gateway-project", "us-east5"
CALLER_PROJECT, CALLER_REGION = "callers-own-project", "europe-west1"


@pytest.mark.parametrize(
    "key_env",
    [
        {"ANTHROPIC_AUTH_TOKEN": CALLER_KEY},
        {"ANTHROPIC_CUSTOM_HEADERS": f"Authorization: Bearer {CALLER_KEY}"},
    ],
    ids=["auth-token", "custom-header"],
)
def test_claude_code_in_vertex_mode_through_the_gateway(
    tmp_path: Path, key_env: dict[str, str]
) -> None:
    require_node_package("@anthropic-ai/claude-code")
    # Only the gateway's project is served: a request in Claude Code's own project would be 403.
    fake = FakeVertex(project=GATEWAY_PROJECT)
    keys = StaticKeyStore(
        [StaticKey(KeyPolicy(key_id="claude-code"), key_hash=hash_key(CALLER_KEY))]
    )
    ledger = tmp_path / "ledger.sqlite3"
    pipeline = UsagePipeline(
        [SQLiteSink(str(ledger))], spill_path=str(tmp_path / "spill"), flush_interval=0.05
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ANTHROPIC_", "CLAUDE_", "CLOUD_ML_", "GOOGLE_", "VERTEX_"))
    }
    with serve(fake) as upstream:
        sa = fake.write_service_account_file(tmp_path / "sa.json", upstream.url)
        app = build_stack(
            upstreams=[
                Upstream(
                    "vertex",
                    upstream.url,
                    name="vertex-gw",
                    credentials_file=str(sa),
                    project=GATEWAY_PROJECT,
                    location=GATEWAY_LOCATION,
                )
            ],
            keys=keys,
            pipeline=pipeline,
        )
        with serve(app) as gateway:
            env.update(
                HOME=str(tmp_path),
                CLAUDE_CODE_USE_VERTEX="1",
                CLAUDE_CODE_SKIP_VERTEX_AUTH="1",
                ANTHROPIC_VERTEX_BASE_URL=f"{gateway.url}/v1",
                ANTHROPIC_VERTEX_PROJECT_ID=CALLER_PROJECT,
                CLOUD_ML_REGION=CALLER_REGION,
                **key_env,
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
            assert REPLY in done.stdout
            calls = fake.calls("anthropic")
            rows = _rows(ledger, len(calls))
    streamed = [c for c in calls if c.path.endswith(f"/models/{MODEL}:streamRawPredict")]
    assert len(streamed) == 1, [c.path for c in calls]
    (call,) = streamed
    # The gateway's project and location, the gateway's own token; never the caller's key.
    assert call.path == (
        f"/v1/projects/{GATEWAY_PROJECT}/locations/{GATEWAY_LOCATION}/publishers/anthropic/"
        f"models/{MODEL}:streamRawPredict"
    )
    assert (call.header("authorization") or "").startswith("Bearer ya29.")
    assert all(CALLER_KEY not in repr(c.headers) for c in calls)
    assert call.json()["anthropic_version"]
    assert len(rows) == len(calls), rows
    (row,) = [r for r in rows if r["endpoint"] == "streamRawPredict"]
    assert (row["provider"], row["model"], row["key_id"], row["status"], row["stream"]) == (
        "vertex_anthropic",
        MODEL,
        "claude-code",
        200,
        1,
    )
    # The fake's numbers: one token per word of the prompt Claude Code sent, and of the reply.
    prompt_words = _prompt_words(call.json())
    assert row["input_tokens"] == prompt_words
    assert row["output_tokens"] == FakeProvider.count_tokens(REPLY)
    assert row["cost_nanos"] > 0
    assert row["outcome"] == "ok"


def _prompt_words(body: dict[str, Any]) -> int:
    """The fake's input count of a Messages body: a token per word of its text."""
    texts: list[str] = []
    system = body.get("system")
    if isinstance(system, str):
        texts.append(system)
    elif isinstance(system, list):
        texts += [b.get("text", "") for b in system if isinstance(b, dict)]
    for message in body.get("messages", []):
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
        else:
            texts += [b.get("text", "") for b in content if isinstance(b, dict)]
    return sum(FakeProvider.count_tokens(t) for t in texts)
