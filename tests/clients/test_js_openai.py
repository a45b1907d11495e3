"""The JS ``openai`` package: chat completions (plain and streamed) and the Responses API."""

from __future__ import annotations

from asgi_llmguard.testing import FakeProvider
from tests.clients.conftest import CALLER_KEY, require_node_package, run_node

REPLY = "Hello from the fake provider."


def test_openai_js_chat_and_responses_are_answered_and_recorded(gateway):
    require_node_package("openai")
    gateway.fake.configure(cached_tokens=2, reasoning_tokens=3)
    out = run_node("openai.mjs", {"GATEWAY_URL": gateway.url, "GATEWAY_KEY": CALLER_KEY})

    words = FakeProvider.count_tokens
    reply = words(REPLY) + 3  # the reply's words and the reported reasoning tokens
    # What the client got: the upstream's answer and its own usage numbers.
    assert out["chat"]["text"] == REPLY
    assert out["chat_stream"]["text"] == REPLY
    assert out["responses"]["text"] == REPLY
    assert out["responses_stream"]["text"] == REPLY
    chat_usage = out["chat"]["usage"]
    assert (chat_usage["prompt_tokens"], chat_usage["completion_tokens"]) == (5, reply)
    assert out["chat_stream"]["usage"]["completion_tokens"] == reply
    assert out["responses"]["usage"]["input_tokens"] == words("one two three")
    assert out["responses_stream"]["usage"]["input_tokens"] == words("four five be brief")

    # One ledger row per request, with the upstream's numbers, in order.
    rows = gateway.rows(4)
    expected = [
        ("gpt-4o-mini", "chat.completions", chat_usage["prompt_tokens"], reply),
        ("gpt-4o-mini", "chat.completions", out["chat_stream"]["usage"]["prompt_tokens"], reply),
        ("gpt-4.1-mini", "responses", out["responses"]["usage"]["input_tokens"], reply),
        ("gpt-4.1-mini", "responses", out["responses_stream"]["usage"]["input_tokens"], reply),
    ]
    got = [(r["model"], r["endpoint"], r["input_tokens"], r["output_tokens"]) for r in rows]
    assert got == expected
    assert all(r["key_id"] == "clients" and r["outcome"] == "ok" for r in rows)
    assert all(not r["estimated"] for r in rows)
    assert [(r["cached_input_tokens"], r["reasoning_tokens"]) for r in rows] == [(2, 3)] * 4
    assert out["chat"]["usage"]["prompt_tokens_details"]["cached_tokens"] == 2
    assert out["responses"]["usage"]["output_tokens_details"]["reasoning_tokens"] == 3
    assert len(gateway.fake.requests) == 4
