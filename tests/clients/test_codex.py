"""The real Codex CLI (``codex exec``) with a model provider whose base URL is the gateway."""

from __future__ import annotations

import os
import subprocess
import time

from asgi_llmguard.testing import FakeProvider
from tests.clients.conftest import CALLER_KEY, NODE_DIR, UPSTREAM_KEY, require_node_package

REPLY = "Hello from the fake provider."
CODEX = NODE_DIR / "node_modules" / ".bin" / "codex"


def test_codex_exec_answers_through_the_gateway_and_is_recorded(gateway, tmp_path):
    require_node_package("@openai/codex")
    home = tmp_path / "codex-home"
    home.mkdir()
    (home / "config.toml").write_text(
        'model = "gpt-4.1-mini"\n'
        'model_provider = "gateway"\n'
        "[model_providers.gateway]\n"
        'name = "gateway"\n'
        f'base_url = "{gateway.url}/v1"\n'
        'env_key = "GATEWAY_KEY"\n'
        'wire_api = "responses"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "CODEX_"))}
    env.update(CODEX_HOME=str(home), HOME=str(tmp_path), GATEWAY_KEY=CALLER_KEY)
    done = subprocess.run(
        [str(CODEX), "exec", "--skip-git-repo-check", "--sandbox", "read-only", "say hello"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert REPLY in done.stdout

    answered = [r for r in gateway.fake.requests if r.path == "/v1/responses"]
    assert answered, [r.path for r in gateway.fake.requests]
    rows = [r for r in gateway.rows(len(gateway.fake.requests)) if r["endpoint"] == "responses"]
    assert len(rows) == len(answered)
    assert all(r["key_id"] == "clients" and r["outcome"] == "ok" for r in rows)
    assert all(r["model"] == "gpt-4.1-mini" for r in rows)
    assert all(r["output_tokens"] == 5 and r["input_tokens"] > 0 for r in rows)
    assert all(not r["estimated"] for r in rows)


def test_codex_uses_the_responses_websocket_through_the_gateway_without_falling_back(
    gateway, tmp_path
):
    """A provider that supports the Responses WebSocket: Codex opens ``GET /v1/responses`` with
    ``Upgrade: websocket`` first. The gateway relays it, so Codex gets its answer at once, with
    no HTTP fallback (which costs it seconds of retries), and every turn is in the ledger."""
    require_node_package("@openai/codex")
    home = tmp_path / "codex-home"
    home.mkdir()
    (home / "config.toml").write_text(
        'model = "gpt-4.1-mini"\n'
        'model_provider = "gateway"\n'
        "[model_providers.gateway]\n"
        'name = "gateway"\n'
        f'base_url = "{gateway.url}/v1"\n'
        'env_key = "GATEWAY_KEY"\n'
        'wire_api = "responses"\n'
        "supports_websockets = true\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "CODEX_"))}
    env.update(CODEX_HOME=str(home), HOME=str(tmp_path), GATEWAY_KEY=CALLER_KEY)
    began = time.perf_counter()
    done = subprocess.run(
        [str(CODEX), "exec", "--skip-git-repo-check", "--sandbox", "read-only", "say hello"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    took = time.perf_counter() - began
    assert done.returncode == 0, done.stdout + done.stderr
    assert REPLY in done.stdout
    # Without the relay Codex retries the socket and falls back to HTTP after about 6 s.
    assert took < 4.0, (took, done.stderr)
    assert "Reconnecting" not in done.stdout + done.stderr

    requests = gateway.fake.requests
    assert next(r.method for r in requests if r.path == "/v1/responses") == "GET"
    assert not [r for r in requests if r.method == "POST"], "fell back to HTTP"
    turns = [r for r in requests if r.method == "WEBSOCKET"]
    assert turns
    upgrade = requests[0]
    assert upgrade.header("authorization") == f"Bearer {UPSTREAM_KEY}"
    assert CALLER_KEY not in str(upgrade.headers)

    rows = gateway.rows(len(turns))
    assert all(r["key_id"] == "clients" and r["endpoint"] == "responses" for r in rows)
    assert all(r["outcome"] == "ok" and not r["estimated"] for r in rows)
    assert len({r["request_id"] for r in rows}) == len(rows)
    # The fake's numbers: the warm-up (generate: false) produces nothing; a turn, the reply's
    # five words; each prompt counted word by word.
    expected_inputs = [FakeProvider.count_tokens(_input_text(t.json())) for t in turns]
    assert sorted(r["input_tokens"] for r in rows) == sorted(expected_inputs)
    generated = sorted(r["output_tokens"] for r in rows)
    assert generated == sorted(0 if t.json().get("generate") is False else 5 for t in turns)
    assert all(r["cost_nanos"] > 0 for r in rows)


def _input_text(event: dict) -> str:
    words = [event.get("instructions") or ""]
    for item in event.get("input") or []:
        content = item.get("content")
        if isinstance(content, str):
            words.append(content)
        elif isinstance(content, list):
            words.extend(p.get("text", "") for p in content if isinstance(p, dict))
    return " ".join(words)
