"""The real Claude Code CLI through the gateway on an OpenAI-compatible Chat Completions upstream
(a ``provider = "openai"`` upstream, as vLLM is configured): its Messages requests are translated,
the fake's answers translated back. The fake asks for ``Bash``, Claude Code runs the command and
sends the result back, the fake answers quoting it."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time

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
from asgi_llmguard.forward.router import Routing
from asgi_llmguard.testing import FakeProvider, serve
from tests.clients.conftest import CALLER_KEY, NODE_DIR, UPSTREAM_KEY, require_node_package

CLAUDE = NODE_DIR / "node_modules" / ".bin" / "claude"
#: What Claude Code sends that Chat Completions has no field for.
DROP = frozenset(
    {"cache_control", "context_management", "messages.thinking", "messages.tool_result.is_error"}
)


def _rows(ledger, count, timeout=5.0):
    deadline = time.monotonic() + timeout
    rows = []
    while time.monotonic() < deadline:
        if ledger.exists():
            with sqlite3.connect(ledger) as db:
                db.row_factory = sqlite3.Row
                if db.execute("SELECT 1 FROM sqlite_master WHERE name='usage_events'").fetchone():
                    rows = [dict(r) for r in db.execute("SELECT * FROM usage_events")]
        if len(rows) >= count:
            break
        time.sleep(0.05)
    return rows


def test_claude_code_runs_a_tool_loop_on_a_chat_completions_upstream(tmp_path):
    require_node_package("@anthropic-ai/claude-code")
    command = "echo fake-tool-$((6*7))"
    fake = FakeProvider(
        api_key=UPSTREAM_KEY,
        tool_call="Bash",
        tool_arguments=json.dumps({"command": command, "description": "Print a marker"}),
    )
    keys = StaticKeyStore([StaticKey(KeyPolicy(key_id="clients"), key_hash=hash_key(CALLER_KEY))])
    ledger = tmp_path / "ledger.sqlite3"
    pipeline = UsagePipeline(
        [SQLiteSink(str(ledger))], spill_path=str(tmp_path / "spill"), flush_interval=0.05
    )
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "CLAUDE_"))}
    with serve(fake) as upstream:
        app = build_stack(
            upstreams=[
                Upstream(
                    "openai",
                    f"{upstream.url}/v1",
                    api_key=UPSTREAM_KEY,
                    name="vllm",
                    models=("qwen3-*",),
                )
            ],
            keys=keys,
            pipeline=pipeline,
            routing=Routing(aliases={"claude-haiku-4-5": ["qwen3-coder"]}, translate_drop=DROP),
        )
        with serve(app) as server:
            env.update(
                HOME=str(home),
                ANTHROPIC_BASE_URL=server.url,
                ANTHROPIC_API_KEY=CALLER_KEY,
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
                cwd=home,
                env=env,
                capture_output=True,
                text=True,
                timeout=90,
                check=False,
            )
            assert done.returncode == 0, done.stdout + done.stderr
            result = json.loads(done.stdout)
            assert result["is_error"] is False, result
            assert result["num_turns"] == 2
            assert result["result"].startswith("Tool result: fake-tool-42")

            chats = [r for r in fake.requests if r.path == "/v1/chat/completions"]
            assert chats
            assert not [r for r in fake.requests if r.path == "/v1/messages"]
            asked, answered = chats[-2].json(), chats[-1].json()
            assert asked["model"] == "qwen3-coder"
            assert "Bash" in [tool["function"]["name"] for tool in asked["tools"]]
            (call,) = answered["messages"][-2]["tool_calls"]
            assert json.loads(call["function"]["arguments"])["command"] == command
            assert answered["messages"][-1]["role"] == "tool"
            assert "fake-tool-42" in answered["messages"][-1]["content"]

            rows = [r for r in _rows(ledger, len(chats)) if r["endpoint"] == "messages"]
            assert len(rows) == len(chats)
            for row in rows:
                assert row["served_api"] == "openai"
                assert row["model"] == "claude-haiku-4-5"
                assert row["served_model"] == "qwen3-coder"
                assert row["outcome"] == "ok"
                assert row["output_tokens"] > 0
                assert not row["estimated"]
                dropped = json.loads(row["metadata"])["llmguard.translation_dropped"]
                assert set(dropped.split(",")) <= DROP
