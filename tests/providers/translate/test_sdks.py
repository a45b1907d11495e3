# ruff: noqa: E501  (wire examples are kept one object per line)
"""The official SDKs accept what the encoders write, and the readers accept what the SDKs send.

The SDKs talk to an in-process upstream (httpx's MockTransport) that answers with the output of
the translation layer: a Chat Completions upstream's answer translated for an Anthropic client,
and the reverse.
"""

from __future__ import annotations

import anthropic
import httpx
import httpx2
import msgspec
import openai

from asgi_llmguard.providers.translate import anthropic_messages as an
from asgi_llmguard.providers.translate import openai_chat as oa
from tests.providers.translate.test_examples import ANTHROPIC_TOOL_STREAM, OPENAI_PARALLEL_STREAM

CHAT_ANSWER = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-4o",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Checking.",
                "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
                ],
            },
            "finish_reason": "tool_calls",
        }
    ],
    "usage": {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150, "prompt_tokens_details": {"cached_tokens": 100}},
}  # fmt: skip


def _client(kind, handler):
    if kind == "anthropic":  # this SDK is built on httpx2
        http2 = httpx2.Client(transport=httpx2.MockTransport(handler))
        return anthropic.Anthropic(
            api_key="k", base_url="http://upstream", http_client=http2, max_retries=0
        )
    http = httpx.Client(transport=httpx.MockTransport(handler))
    return openai.OpenAI(
        api_key="k", base_url="http://upstream/v1", http_client=http, max_retries=0
    )


def test_an_anthropic_client_streams_a_chat_upstream_answer():
    sent = {}

    def upstream(request: httpx2.Request) -> httpx2.Response:
        # What the client sent, translated for the Chat Completions upstream ...
        sent["chat"], _ = oa.write_request(an.read_request(request.content))
        # ... and the upstream's stream translated back.
        decoder, encoder = oa.StreamDecoder(), an.StreamEncoder()
        body = encoder.encode_many(decoder.feed(OPENAI_PARALLEL_STREAM) + decoder.close())
        return httpx2.Response(200, content=body, headers={"content-type": "text/event-stream"})

    client = _client("anthropic", upstream)
    with client.messages.stream(
        model="claude-x",
        max_tokens=1000,
        system="Be brief.",
        messages=[{"role": "user", "content": "Weather in Paris and Bogota?"}],
        tools=[{"name": "get_weather", "input_schema": {"type": "object"}}],
    ) as stream:
        message = stream.get_final_message()
    assert sent["chat"]["messages"][0] == {"role": "system", "content": "Be brief."}
    assert sent["chat"]["stream"] is True
    assert [(b.type, b.id, b.input) for b in message.content] == [
        ("tool_use", "call_a", {"location": "Paris"}),
        ("tool_use", "call_b", {"location": "Bogota"}),
    ]
    assert message.stop_reason == "tool_use"
    assert message.usage.input_tokens == 16
    assert message.usage.cache_read_input_tokens == 64
    assert message.usage.output_tokens == 40


def test_an_anthropic_client_reads_a_chat_upstream_answer():
    def upstream(request: httpx2.Request) -> httpx2.Response:
        answer = oa.read_answer(msgspec.json.encode(CHAT_ANSWER))
        return httpx2.Response(
            200, content=an.write_answer(answer), headers={"content-type": "application/json"}
        )

    message = _client("anthropic", upstream).messages.create(
        model="claude-x", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
    )
    assert message.content[0].text == "Checking."
    assert message.content[1].input == {"city": "Paris"}
    assert message.stop_reason == "tool_use"
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens) == (20, 100)


def test_an_openai_client_streams_a_messages_upstream_answer():
    sent = {}

    def upstream(request: httpx.Request) -> httpx.Response:
        sent["messages"], _ = an.write_request(oa.read_request(request.content))
        decoder, encoder = an.StreamDecoder(), oa.StreamEncoder()
        body = encoder.encode_many(decoder.feed(ANTHROPIC_TOOL_STREAM) + decoder.close())
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    client = _client("openai", upstream)
    with client.chat.completions.stream(
        model="gpt-4o",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather?"},
        ],
        tools=[
            {
                "type": "function",
                "function": {"name": "get_weather", "parameters": {"type": "object"}},
            }
        ],
        stream_options={"include_usage": True},
    ) as stream:
        completion = stream.get_final_completion()
    assert sent["messages"]["system"] == "Be brief."
    assert sent["messages"]["max_tokens"] == an.DEFAULT_MAX_TOKENS
    choice = completion.choices[0]
    assert choice.message.content == "Okay, let's check the weather."
    call = choice.message.tool_calls[0]
    assert (call.id, call.function.name) == ("toolu_01T1x1fJ34qAmk2tNTrN7Up6", "get_weather")
    assert msgspec.json.decode(call.function.arguments) == {"location": "San Francisco, CA"}
    assert choice.finish_reason == "tool_calls"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (472, 89)


def test_an_openai_client_reads_a_messages_upstream_answer():
    anthropic_answer = {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
        "content": [{"type": "text", "text": "Hello"}],
        "stop_reason": "max_tokens", "stop_sequence": None,
        "usage": {"input_tokens": 5, "cache_read_input_tokens": 10, "output_tokens": 2},
    }  # fmt: skip

    def upstream(request: httpx.Request) -> httpx.Response:
        answer = an.read_answer(msgspec.json.encode(anthropic_answer))
        return httpx.Response(
            200, content=oa.write_answer(answer), headers={"content-type": "application/json"}
        )

    completion = _client("openai", upstream).chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
    )
    assert completion.choices[0].message.content == "Hello"
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.prompt_tokens == 15
    assert completion.usage.prompt_tokens_details.cached_tokens == 10


def test_an_anthropic_client_sees_vllm_reasoning_as_thinking():
    chunks = [
        {"id": "c", "model": "qwen", "choices": [{"index": 0, "delta": {"role": "assistant", "reasoning_content": "Two and "}}]},
        {"id": "c", "model": "qwen", "choices": [{"index": 0, "delta": {"reasoning_content": "two."}}]},
        {"id": "c", "model": "qwen", "choices": [{"index": 0, "delta": {"content": "4"}}]},
        {"id": "c", "model": "qwen", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {"id": "c", "model": "qwen", "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 6, "completion_tokens_details": {"reasoning_tokens": 4}}},
    ]  # fmt: skip
    upstream_stream = b"".join(b"data: " + msgspec.json.encode(c) + b"\n\n" for c in chunks)
    upstream_stream += b"data: [DONE]\n\n"

    def upstream(request: httpx2.Request) -> httpx2.Response:
        decoder, encoder = oa.StreamDecoder(), an.StreamEncoder()
        body = encoder.encode_many(decoder.feed(upstream_stream) + decoder.close())
        return httpx2.Response(200, content=body, headers={"content-type": "text/event-stream"})

    with _client("anthropic", upstream).messages.stream(
        model="qwen", max_tokens=100, messages=[{"role": "user", "content": "2+2?"}]
    ) as stream:
        message = stream.get_final_message()
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert message.content[0].thinking == "Two and two."
    assert message.content[1].text == "4"
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens == 6
