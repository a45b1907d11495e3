"""The Vercel AI SDK: generateText and streamText through ``@ai-sdk/openai`` (Responses API) and
``@ai-sdk/anthropic`` (Messages)."""

from __future__ import annotations

from asgi_llmguard.testing import FakeProvider
from tests.clients.conftest import CALLER_KEY, require_node_package, run_node

REPLY = "Hello from the fake provider."


def test_vercel_ai_generate_and_stream_are_answered_and_recorded(gateway):
    require_node_package("ai")
    out = run_node("vercel-ai.mjs", {"GATEWAY_URL": gateway.url, "GATEWAY_KEY": CALLER_KEY})

    reply = FakeProvider.count_tokens(REPLY)
    for provider in ("openai", "anthropic"):
        for call, prompt in (("generate", "one two three"), ("stream", "four five")):
            got = out[provider][call]
            assert got["text"] == REPLY, (provider, call)
            assert got["usage"]["inputTokens"] == FakeProvider.count_tokens(prompt)
            assert got["usage"]["outputTokens"] == reply

    rows = gateway.rows(4)
    got_rows = [(r["model"], r["endpoint"], r["input_tokens"], r["output_tokens"]) for r in rows]
    assert got_rows == [
        ("gpt-4.1-mini", "responses", 3, reply),
        ("gpt-4.1-mini", "responses", 2, reply),
        ("claude-haiku-4-5", "messages", 3, reply),
        ("claude-haiku-4-5", "messages", 2, reply),
    ]
    assert all(r["outcome"] == "ok" and not r["estimated"] for r in rows)
