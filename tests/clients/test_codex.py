"""The real Codex CLI (``codex exec``) with a model provider whose base URL is the gateway."""

from __future__ import annotations

import os
import subprocess

from tests.clients.conftest import CALLER_KEY, NODE_DIR, require_node_package

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
