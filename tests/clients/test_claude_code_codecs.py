"""The real Claude Code CLI (``claude -p``) answered by Gemini and Bedrock Converse upstreams
through the translation layer: a small ASGI app reads Claude Code's Messages request, writes it
as ``generateContent`` (or Converse) for the fake upstream, and relays the answer (streamed or
whole) back as Messages."""

from __future__ import annotations

import os
import subprocess
import urllib.parse
from typing import Any

import httpx

from asgi_llmguard.providers.eventstream import FrameSplitter, decode_frame
from asgi_llmguard.providers.translate import anthropic_messages as an
from asgi_llmguard.providers.translate import bedrock_converse as bc
from asgi_llmguard.providers.translate import gemini_generate as gm
from asgi_llmguard.testing import FakeBedrock, FakeProvider, serve
from tests.clients.conftest import NODE_DIR, UPSTREAM_KEY, require_node_package

REPLY = "Hello from the fake provider."
CLAUDE = NODE_DIR / "node_modules" / ".bin" / "claude"
#: What Gemini cannot carry of a Claude Code request, which the relay lets drop.
DROPPABLE = {"user", "parallel_tool_calls", "tools.strict", "messages.system"}


async def _body(receive: Any) -> bytes:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


def _translating_app(upstream: str, dropped: list[list[str]]) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = await _body(receive)
        if scope["path"] != "/v1/messages" or scope["method"] != "POST":
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b"{}"})
            return
        turn = an.read_request(body)
        request, lost = gm.write_request(turn, drop={*turn.unsupported, *DROPPABLE})
        dropped.append(lost)
        url = f"{upstream}/v1beta/models/gemini-2.5-flash"
        headers = {"x-goog-api-key": UPSTREAM_KEY}
        async with httpx.AsyncClient(timeout=30) as http:
            if not turn.stream:
                answer = await http.post(url + ":generateContent", json=request, headers=headers)
                content = an.write_answer(gm.read_answer(answer.content))
                await send(
                    {
                        "type": "http.response.start",
                        "status": answer.status_code,
                        "headers": [(b"content-type", b"application/json")],
                    }
                )
                await send({"type": "http.response.body", "body": content})
                return
            decoder, encoder = gm.StreamDecoder(), an.StreamEncoder()
            async with http.stream(
                "POST", url + ":streamGenerateContent?alt=sse", json=request, headers=headers
            ) as answer:
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


def _claude(url: str, home: Any) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "CLAUDE_"))}
    env.update(
        HOME=str(home),
        ANTHROPIC_BASE_URL=url,
        ANTHROPIC_API_KEY="k",
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
        timeout=90,
        check=False,
    )


def test_claude_code_answers_from_a_gemini_upstream(tmp_path):
    require_node_package("@anthropic-ai/claude-code")
    provider = FakeProvider(api_key=UPSTREAM_KEY, reply=REPLY)
    dropped: list[list[str]] = []
    with serve(provider) as upstream, serve(_translating_app(upstream.url, dropped)) as gateway:
        done = _claude(gateway.url, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert REPLY in done.stdout
    sent = [r.json() for r in provider.requests if r.path.lower().endswith("generatecontent")]
    assert sent
    names = [d["name"] for s in sent for t in s.get("tools", []) for d in t["functionDeclarations"]]
    assert "Bash" in names
    assert all(s["systemInstruction"]["parts"] for s in sent)
    # Claude Code's Anthropic-only fields, named when refused and dropped here:
    assert set(dropped[0]) <= {"cache_control", "context_management", "user"}, dropped


def _converse_app(upstream: str, dropped: list[list[str]]) -> Any:
    """Messages in, ConverseStream upstream (frames split by the gateway's splitter), Messages
    out."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = await _body(receive)
        if scope["path"] != "/v1/messages" or scope["method"] != "POST":
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b"{}"})
            return
        turn = an.read_request(body)
        request, lost = bc.write_request(turn, drop={*turn.unsupported, *DROPPABLE})
        dropped.append(lost)
        model = urllib.parse.quote(BEDROCK_MODEL, safe="")
        url = f"{upstream}/model/{model}/converse"
        headers = {"authorization": "Bearer bedrock-key"}
        async with httpx.AsyncClient(timeout=30) as http:
            if not turn.stream:
                answer = await http.post(url, json=request, headers=headers)
                content = an.write_answer(bc.read_answer(answer.content, model=BEDROCK_MODEL))
                await send(
                    {
                        "type": "http.response.start",
                        "status": answer.status_code,
                        "headers": [(b"content-type", b"application/json")],
                    }
                )
                await send({"type": "http.response.body", "body": content})
                return
            splitter = FrameSplitter()
            decoder = bc.StreamDecoder(id="msg_translated", model=BEDROCK_MODEL)
            encoder = an.StreamEncoder()
            async with http.stream(
                "POST", url + "-stream", json=request, headers=headers
            ) as answer:
                await send(
                    {
                        "type": "http.response.start",
                        "status": answer.status_code,
                        "headers": [(b"content-type", b"text/event-stream")],
                    }
                )
                async for chunk in answer.aiter_raw():
                    deltas = []
                    for raw in splitter.feed(chunk):
                        frame = decode_frame(raw)
                        assert frame is not None
                        kind = frame.error_type if frame.is_error else frame.event_type
                        deltas += decoder.feed_event(kind, frame.payload)
                    out = encoder.encode_many(deltas)
                    if out:
                        await send({"type": "http.response.body", "body": out, "more_body": True})
            await send({"type": "http.response.body", "body": encoder.encode_many(decoder.close())})

    return app


BEDROCK_MODEL = "anthropic.claude-haiku-4-5-20251001-v1:0"


def test_claude_code_answers_from_a_converse_upstream(tmp_path):
    require_node_package("@anthropic-ai/claude-code")
    bedrock = FakeBedrock(api_key="bedrock-key", reply=REPLY)
    dropped: list[list[str]] = []
    with serve(bedrock) as upstream, serve(_converse_app(upstream.url, dropped)) as gateway:
        done = _claude(gateway.url, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert REPLY in done.stdout
    sent = [r.json() for r in bedrock.requests if "/converse" in r.path]
    assert sent
    names = [t["toolSpec"]["name"] for s in sent for t in s.get("toolConfig", {}).get("tools", [])]
    assert "Bash" in names
    assert all(s["system"] for s in sent)
    assert set(dropped[0]) <= {"cache_control", "context_management", "user"}, dropped
