"""The real Claude Code CLI runs a tool loop against the fake provider directly: the fake asks
for ``Bash``, Claude Code runs the command and sends back the ``tool_result``, the fake answers
quoting it. Only ``echo`` is allowed, in a temporary HOME and working directory."""

from __future__ import annotations

import json
import os
import subprocess

from asgi_llmguard.testing import FakeProvider, serve
from tests.clients.conftest import NODE_DIR, require_node_package

CLAUDE = NODE_DIR / "node_modules" / ".bin" / "claude"
KEY = "sk-fake-claude-code-tools"


def test_claude_code_runs_the_tool_the_fake_calls_and_gets_its_result_quoted(tmp_path):
    require_node_package("@anthropic-ai/claude-code")
    # The shell computes the marker, so the quoted result proves the command really ran.
    command = "echo fake-tool-$((6*7))"
    fake = FakeProvider(
        api_key=KEY,
        tool_call="Bash",
        tool_arguments=json.dumps({"command": command, "description": "Print a marker"}),
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "CLAUDE_"))}
    with serve(fake) as upstream:
        env.update(
            HOME=str(tmp_path),
            ANTHROPIC_BASE_URL=upstream.url,
            ANTHROPIC_API_KEY=KEY,
            DISABLE_AUTOUPDATER="1",
            DISABLE_TELEMETRY="1",
            DISABLE_ERROR_REPORTING="1",
            CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
        )
        done = subprocess.run(
            [
                str(CLAUDE),
                "-p",
                "print the marker",
                "--model",
                "claude-haiku-4-5",
                "--permission-mode",
                "default",
                "--allowedTools",
                "Bash(echo:*)",
                "--output-format",
                "json",
            ],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert result["is_error"] is False
    assert result["num_turns"] == 2
    assert not result["permission_denials"]
    assert result["result"].startswith("Tool result: fake-tool-42")

    turns = [r.json() for r in fake.requests if r.path == "/v1/messages"]
    asked, answered = turns[-2], turns[-1]
    assert "Bash" in [tool["name"] for tool in asked["tools"]]
    (use,) = answered["messages"][-2]["content"]
    assert use["type"] == "tool_use"
    assert use["input"]["command"] == command
    (result_block,) = answered["messages"][-1]["content"]
    assert result_block["type"] == "tool_result"
    assert result_block["tool_use_id"] == use["id"]
    assert "fake-tool-42" in result_block["content"]
