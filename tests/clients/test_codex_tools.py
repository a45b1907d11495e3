"""The real Codex CLI (``codex exec``) runs a tool loop against the fake provider directly, over
HTTP and over the Responses WebSocket: the fake calls ``exec_command``, Codex runs it in its
read-only sandbox and sends back the ``function_call_output``, the fake answers quoting it."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from asgi_llmguard.testing import FakeProvider, serve
from tests.clients.conftest import NODE_DIR, require_node_package

CODEX = NODE_DIR / "node_modules" / ".bin" / "codex"
KEY = "sk-fake-codex-tools"


@pytest.mark.parametrize("websocket", [False, True], ids=["http", "websocket"])
def test_codex_runs_the_tool_the_fake_calls_and_gets_its_output_quoted(tmp_path, websocket):
    require_node_package("@openai/codex")
    # The shell computes the marker, so the quoted output proves the command really ran.
    fake = FakeProvider(
        api_key=KEY,
        tool_call="exec_command",
        tool_arguments=json.dumps({"cmd": "echo fake-tool-$((6*7))"}),
    )
    home = tmp_path / "codex-home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "CODEX_"))}
    env.update(CODEX_HOME=str(home), HOME=str(tmp_path), FAKE_KEY=KEY)
    with serve(fake) as upstream:
        (home / "config.toml").write_text(
            'model = "gpt-4.1-mini"\n'
            'model_provider = "fake"\n'
            "[model_providers.fake]\n"
            'name = "fake"\n'
            f'base_url = "{upstream.url}/v1"\n'
            'env_key = "FAKE_KEY"\n'
            'wire_api = "responses"\n'
            f"supports_websockets = {'true' if websocket else 'false'}\n"
        )
        done = subprocess.run(
            [str(CODEX), "exec", "--skip-git-repo-check", "--sandbox", "read-only", "go"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    assert done.returncode == 0, done.stdout + done.stderr
    answer = done.stdout[done.stdout.rindex("Tool result:") :]
    assert "fake-tool-42" in answer

    method = "WEBSOCKET" if websocket else "POST"
    turns = [r.json() for r in fake.requests if r.method == method and r.path == "/v1/responses"]
    outputs = [
        item
        for turn in turns
        for item in turn.get("input", [])
        if item.get("type") == "function_call_output"
    ]
    assert outputs, turns
    assert outputs[-1]["call_id"].startswith("call_")
    assert "fake-tool-42" in outputs[-1]["output"]
