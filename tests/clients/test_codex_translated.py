"""The real Codex CLI (``codex exec``, Responses over HTTP) answered by a Chat Completions
upstream through the translation layer: a small ASGI app reads Codex's Responses request, writes
it as Chat Completions for the fake upstream, and relays the upstream's stream back as Responses
events as it arrives."""

from __future__ import annotations

import os
import subprocess
from typing import Any

import httpx
import msgspec

from asgi_llmguard.providers.translate import openai_chat as oa
from asgi_llmguard.providers.translate import openai_responses as rs
from asgi_llmguard.testing import FakeProvider, serve
from tests.clients.conftest import NODE_DIR, UPSTREAM_KEY, require_node_package

REPLY = "Hello from the fake provider."
CODEX = NODE_DIR / "node_modules" / ".bin" / "codex"


def _translating_app(upstream: str, dropped: list[list[str]]) -> Any:
    """Responses in, Chat Completions upstream, Responses out (streamed)."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["path"] != "/v1/responses" or scope["method"] != "POST":
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b"{}"})
            return
        turn = rs.read_request(body)
        # What Codex sends that a Chat upstream cannot do is named; the relay drops it.
        chat, lost = oa.write_request(turn, drop={*turn.unsupported, "messages.thinking"})
        dropped.append(lost)
        headers = {"authorization": f"Bearer {UPSTREAM_KEY}"}
        decoder, encoder = oa.StreamDecoder(), rs.StreamEncoder()
        async with (
            httpx.AsyncClient(timeout=30) as http,
            http.stream(
                "POST", f"{upstream}/v1/chat/completions", json=chat, headers=headers
            ) as answer,
        ):
            await send(
                {
                    "type": "http.response.start",
                    "status": answer.status_code,
                    "headers": [(b"content-type", b"text/event-stream")],
                }
            )
            async for chunk in answer.aiter_raw():
                out = encoder.encode_many(decoder.feed(chunk))
                if out:
                    await send({"type": "http.response.body", "body": out, "more_body": True})
        await send({"type": "http.response.body", "body": encoder.encode_many(decoder.close())})

    return app


def test_codex_exec_answers_from_a_chat_completions_upstream(tmp_path):
    require_node_package("@openai/codex")
    provider = FakeProvider(api_key=UPSTREAM_KEY, reply=REPLY)
    dropped: list[list[str]] = []
    with serve(provider) as upstream, serve(_translating_app(upstream.url, dropped)) as gateway:
        home = tmp_path / "codex-home"
        home.mkdir()
        (home / "config.toml").write_text(
            'model = "gpt-4.1-mini"\n'
            'model_provider = "translated"\n'
            "[model_providers.translated]\n"
            'name = "translated"\n'
            f'base_url = "{gateway.url}/v1"\n'
            'env_key = "GATEWAY_KEY"\n'
            'wire_api = "responses"\n'
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "CODEX_"))}
        env.update(CODEX_HOME=str(home), HOME=str(tmp_path), GATEWAY_KEY="k")
        done = subprocess.run(
            [str(CODEX), "exec", "--skip-git-repo-check", "--sandbox", "read-only", "say hello"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    assert done.returncode == 0, done.stdout + done.stderr
    assert REPLY in done.stdout
    sent = [r.json() for r in provider.requests if r.path == "/v1/chat/completions"]
    assert sent
    assert sent[0]["stream"] is True
    assert sent[0]["messages"][0]["role"] == "system"  # Codex's instructions
    assert sent[0]["messages"][-1]["role"] == "user"
    assert "say hello" in msgspec.json.encode(sent[0]["messages"][-1]).decode()
    assert "exec_command" in [t["function"]["name"] for t in sent[0]["tools"]]
    # Codex's own service features, named when refused and dropped here:
    assert set(dropped[0]) <= {
        "tools.namespace",
        "tools.web_search",
        "prompt_cache_key",
        "client_metadata",
    }, dropped
