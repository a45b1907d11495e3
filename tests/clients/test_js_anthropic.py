"""The JS ``@anthropic-ai/sdk`` package: messages.create and messages.stream."""

from __future__ import annotations

from asgi_llmguard.testing import FakeProvider
from tests.clients.conftest import CALLER_KEY, require_node_package, run_node

REPLY = "Hello from the fake provider."


def test_anthropic_js_messages_are_answered_and_recorded(gateway):
    require_node_package("@anthropic-ai/sdk")
    out = run_node("anthropic.mjs", {"GATEWAY_URL": gateway.url, "GATEWAY_KEY": CALLER_KEY})

    reply = FakeProvider.count_tokens(REPLY)
    assert out["create"]["text"] == REPLY
    assert out["stream"]["text"] == REPLY
    assert out["create"]["usage"]["input_tokens"] == 3
    assert out["stream"]["usage"]["input_tokens"] == 5
    assert out["stream"]["usage"]["output_tokens"] == reply

    rows = gateway.rows(2)
    got = [(r["model"], r["endpoint"], r["input_tokens"], r["output_tokens"]) for r in rows]
    assert got == [
        ("claude-haiku-4-5", "messages", out["create"]["usage"]["input_tokens"], reply),
        ("claude-haiku-4-5", "messages", out["stream"]["usage"]["input_tokens"], reply),
    ]
    assert all(r["outcome"] == "ok" and not r["estimated"] for r in rows)
