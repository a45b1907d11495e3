"""The real Claude Code CLI (``claude -p``) with ANTHROPIC_BASE_URL pointing at the gateway."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from tests.clients.conftest import CALLER_KEY, NODE_DIR, require_node_package

REPLY = "Hello from the fake provider."
CLAUDE = NODE_DIR / "node_modules" / ".bin" / "claude"


def _claude(gateway_url: str, key: str, home, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "CLAUDE_"))}
    env.update(
        HOME=str(home),
        ANTHROPIC_BASE_URL=gateway_url,
        ANTHROPIC_API_KEY=key,
        DISABLE_AUTOUPDATER="1",
        DISABLE_TELEMETRY="1",
        DISABLE_ERROR_REPORTING="1",
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
    )
    return subprocess.run(
        [str(CLAUDE), "-p", "say hello", "--model", "claude-haiku-4-5"],
        cwd=home,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_claude_code_answers_through_the_gateway_and_is_recorded(gateway, tmp_path):
    require_node_package("@anthropic-ai/claude-code")
    done = _claude(gateway.url, CALLER_KEY, tmp_path, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert REPLY in done.stdout

    messages = [r for r in gateway.fake.requests if r.path == "/v1/messages"]
    assert messages, [r.path for r in gateway.fake.requests]
    rows = [r for r in gateway.rows(len(gateway.fake.requests)) if r["endpoint"] == "messages"]
    assert len(rows) == len(messages)
    assert all(r["key_id"] == "clients" and r["outcome"] == "ok" for r in rows)
    assert all(r["output_tokens"] > 0 and not r["estimated"] for r in rows)


def test_claude_code_with_a_wrong_key_fails_fast(gateway, tmp_path):
    # Claude Code retries a 401 for minutes unless the response says ``x-should-retry: false``;
    # this test needs the gateway to send that header on its own 401.
    require_node_package("@anthropic-ai/claude-code")
    started = time.monotonic()
    try:
        done = _claude(gateway.url, "sk-llmg-wrong-key-0123456789abcdef", tmp_path, timeout=10)
    except subprocess.TimeoutExpired:
        pytest.fail("claude -p was still retrying a wrong key after 10 s")
    elapsed = time.monotonic() - started
    assert done.returncode != 0
    assert elapsed < 5, f"claude -p took {elapsed:.1f} s to give up on a wrong key"
    assert not gateway.fake.requests
