"""The real Claude Code CLI in its Bedrock mode (``CLAUDE_CODE_USE_BEDROCK=1``) against the fake
Bedrock Runtime: the fake speaks what Claude Code expects, signatures included."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from asgi_llmguard.testing import FakeBedrock, serve
from tests.clients.conftest import NODE_DIR, require_node_package

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
