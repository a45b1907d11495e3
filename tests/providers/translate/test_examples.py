# ruff: noqa: E501  (wire examples are kept one event per line, as the providers document them)
"""Translation of the providers' documented examples, and of what one side cannot express."""

from __future__ import annotations

import msgspec
import pytest

from asgi_llmguard.providers.translate import anthropic_messages as an
from asgi_llmguard.providers.translate import openai_chat as oa
from asgi_llmguard.providers.translate.model import (
    Finish,
    MalformedInput,
    StreamError,
    Text,
    TextDelta,
    ToolArgumentsDelta,
    ToolCallStart,
    Untranslatable,
    UsageDelta,
)
from asgi_llmguard.tokens import TokenUsage

enc = msgspec.json.encode


def _events(sse: bytes) -> list[tuple[str | None, dict | str]]:
    out = []
    for block in sse.split(b"\n\n"):
        if not block:
            continue
        name = None
        data = b""
        for line in block.split(b"\n"):
            if line.startswith(b"event: "):
                name = line[7:].decode()
            elif line.startswith(b"data: "):
                data = line[6:]
        out.append((name, "[DONE]" if data == b"[DONE]" else msgspec.json.decode(data)))
    return out


# The streaming example of Anthropic's Messages documentation ("Streaming request with tool use").
ANTHROPIC_TOOL_STREAM = b"""event: message_start
data: {"type":"message_start","message":{"id":"msg_014p7gG3wDgGV9EUtLvnow3U","type":"message","role":"assistant","model":"claude-opus-4-1-20250805","stop_sequence":null,"usage":{"input_tokens":472,"output_tokens":2},"content":[],"stop_reason":null}}

event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}

event: ping
data: {"type": "ping"}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Okay"}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":", let's check the weather."}}

event: content_block_stop
data: {"type":"content_block_stop","index":0}

event: content_block_start
data: {"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_01T1x1fJ34qAmk2tNTrN7Up6","name":"get_weather","input":{}}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\\"location\\":"}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":" \\"San Francisco, CA\\"}"}}

event: content_block_stop
data: {"type":"content_block_stop","index":1}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":89}}

event: message_stop
data: {"type":"message_stop"}

"""


def test_the_documented_messages_tool_stream_becomes_chat_chunks():
    decoder = an.StreamDecoder()
    deltas = decoder.feed(ANTHROPIC_TOOL_STREAM) + decoder.close()
    chunks = _events(oa.StreamEncoder(created=7).encode_many(deltas))
    assert chunks[-1] == (None, "[DONE]")
    bodies = [c for _, c in chunks[:-1]]
    assert {b["id"] for b in bodies} == {"msg_014p7gG3wDgGV9EUtLvnow3U"}
    assert bodies[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(b["choices"][0]["delta"].get("content", "") for b in bodies if b["choices"])
    assert text == "Okay, let's check the weather."
    calls = [
        c for b in bodies if b["choices"] for c in b["choices"][0]["delta"].get("tool_calls", [])
    ]
    assert calls[0] == {
        "index": 0,
        "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    arguments = "".join(c["function"]["arguments"] for c in calls)
    assert msgspec.json.decode(arguments) == {"location": "San Francisco, CA"}
    finishes = [b["choices"][0]["finish_reason"] for b in bodies if b["choices"]]
    assert [f for f in finishes if f] == ["tool_calls"]
    assert bodies[-1]["choices"] == []
    assert bodies[-1]["usage"]["prompt_tokens"] == 472
    assert bodies[-1]["usage"]["completion_tokens"] == 89


# OpenAI's documented streaming of parallel function calls: arguments keyed by index.
OPENAI_PARALLEL_STREAM = b"".join(
    b"data: " + enc(chunk) + b"\n\n"
    for chunk in [
        {"id": "c", "model": "gpt-4o", "choices": [{"index": 0, "delta": {"role": "assistant", "content": None}, "finish_reason": None}]},
        {"id": "c", "model": "gpt-4o", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}, "finish_reason": None}]},
        {"id": "c", "model": "gpt-4o", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"location": "Paris"}'}}]}, "finish_reason": None}]},
        {"id": "c", "model": "gpt-4o", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 1, "id": "call_b", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}, "finish_reason": None}]},
        {"id": "c", "model": "gpt-4o", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 1, "function": {"arguments": '{"location": '}}]}, "finish_reason": None}]},
        {"id": "c", "model": "gpt-4o", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 1, "function": {"arguments": '"Bogota"}'}}]}, "finish_reason": None}]},
        {"id": "c", "model": "gpt-4o", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
        {"id": "c", "model": "gpt-4o", "choices": [], "usage": {"prompt_tokens": 80, "completion_tokens": 40, "total_tokens": 120, "prompt_tokens_details": {"cached_tokens": 64}, "completion_tokens_details": {"reasoning_tokens": 0}}},
    ]
) + b"data: [DONE]\n\n"  # fmt: skip


def test_parallel_chat_tool_calls_become_successive_tool_use_blocks():
    decoder = oa.StreamDecoder()
    deltas = decoder.feed(OPENAI_PARALLEL_STREAM) + decoder.close()
    events = _events(an.StreamEncoder().encode_many(deltas))
    names = [n for n, _ in events]
    assert names == [
        "message_start",
        "content_block_start", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "message_delta", "message_stop",
    ]  # fmt: skip
    starts = [e for n, e in events if n == "content_block_start"]
    assert [(s["index"], s["content_block"]["id"]) for s in starts] == [
        (0, "call_a"),
        (1, "call_b"),
    ]
    delta = events[-2][1]
    assert delta["delta"]["stop_reason"] == "tool_use"
    # OpenAI's prompt_tokens include the cached part; Anthropic's input_tokens exclude it.
    assert delta["usage"]["input_tokens"] == 16
    assert delta["usage"]["cache_read_input_tokens"] == 64
    assert delta["usage"]["output_tokens"] == 40


def test_interleaved_tool_arguments_are_refused_not_reordered():
    chunks = [
        {"choices": [{"delta": {"tool_calls": [{"index": 0, "id": "a", "function": {"name": "f", "arguments": "{"}}]}}]},
        {"choices": [{"delta": {"tool_calls": [{"index": 1, "id": "b", "function": {"name": "f", "arguments": "{"}}]}}]},
        {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": "}"}}]}}]},
    ]  # fmt: skip
    stream = b"".join(b"data: " + enc(chunk) + b"\n\n" for chunk in chunks)
    with pytest.raises(Untranslatable) as error:
        oa.StreamDecoder().feed(stream)
    assert error.value.field == "tool_calls"


def test_usage_is_converted_both_ways():
    anthropic = {
        "input_tokens": 100,
        "cache_read_input_tokens": 1000,
        "cache_creation_input_tokens": 50,
        "output_tokens": 20,
    }
    usage = an.usage_in(anthropic)
    assert usage == TokenUsage(
        input_tokens=1150, output_tokens=20, cached_input_tokens=1000, cache_creation_tokens=50
    )
    chat = oa.usage_out(usage)
    assert chat["prompt_tokens"] == 1150
    assert chat["prompt_tokens_details"]["cached_tokens"] == 1000
    assert chat["prompt_tokens_details"]["cache_write_tokens"] == 50
    back = an.usage_out(oa.usage_in({**chat, "completion_tokens_details": {"reasoning_tokens": 7}}))
    assert back["input_tokens"] == 100
    assert back["cache_read_input_tokens"] == 1000
    assert back["cache_creation_input_tokens"] == 50
    assert back["output_tokens"] == 20  # reasoning tokens stay counted in the output


STRUCTURED = {
    "model": "gpt-4o",
    "messages": [{"role": "developer", "content": "Extract."}, {"role": "user", "content": "Ann is 3"}],
    "response_format": {
        "type": "json_schema",
        "json_schema": {"name": "person", "schema": {"type": "object", "properties": {"age": {"type": "integer"}}}},
    },
}  # fmt: skip


def test_structured_output_is_a_forced_tool_and_its_input_the_answer():
    body, dropped = an.write_request(oa.read_request(enc(STRUCTURED)), default_max_tokens=1000)
    assert dropped == []
    assert body["system"] == "Extract."
    assert body["max_tokens"] == 1000
    assert body["tools"] == [
        {"name": "person", "input_schema": STRUCTURED["response_format"]["json_schema"]["schema"]}
    ]
    assert body["tool_choice"] == {"type": "tool", "name": "person"}

    answer = {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
        "content": [{"type": "tool_use", "id": "toolu_1", "name": "person", "input": {"age": 3}}],
        "stop_reason": "tool_use", "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 5},
    }  # fmt: skip
    chat = msgspec.json.decode(
        oa.write_answer(an.read_answer(enc(answer), structured_tool="person"))
    )
    choice = chat["choices"][0]
    assert msgspec.json.decode(choice["message"]["content"]) == {"age": 3}
    assert "tool_calls" not in choice["message"]
    assert choice["finish_reason"] == "stop"


def test_structured_output_streams_as_text():
    stream = b"".join(
        b"event: " + name.encode() + b"\ndata: " + enc(data) + b"\n\n"
        for name, data in [
            ("message_start", {"type": "message_start", "message": {"id": "m", "model": "c", "usage": {"input_tokens": 3, "output_tokens": 1}}}),
            ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "t", "name": "person", "input": {}}}),
            ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": '{"age":'}}),
            ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": " 3}"}}),
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}}),
            ("message_stop", {"type": "message_stop"}),
        ]
    )  # fmt: skip
    decoder = an.StreamDecoder(structured_tool="person")
    deltas = decoder.feed(stream)
    assert not any(isinstance(d, ToolCallStart | ToolArgumentsDelta) for d in deltas)
    assert "".join(d.text for d in deltas if isinstance(d, TextDelta)) == '{"age": 3}'
    assert [d for d in deltas if isinstance(d, Finish)] == [Finish("stop")]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"seed": 7}, "seed"),
        ({"temperature": 1.5}, "temperature"),
        ({"response_format": {"type": "json_object"}}, "response_format.json_object"),
        (
            {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AA", "format": "wav"}}]}]},
            "messages.content.input_audio",
        ),
        (
            {"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "late"}]},
            "messages.system",
        ),
        (
            {"reasoning_effort": "high", "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}], "tool_choice": "required"},
            "tool_choice",
        ),
        ({"reasoning_effort": "low", "temperature": 0.5}, "temperature"),
        ({"reasoning_effort": "high", "max_completion_tokens": 900}, "reasoning_effort"),
    ],
)  # fmt: skip
def test_what_messages_cannot_express_is_refused_or_dropped_on_request(change, field):
    request = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], **change}
    turn = oa.read_request(enc(request))
    with pytest.raises(Untranslatable) as error:
        an.write_request(turn)
    assert error.value.field == field
    _, dropped = an.write_request(turn, drop={field})
    assert dropped == [field]


CLAUDE_CODE_TURN = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 32000,
    "system": [{"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}],
    "thinking": {"type": "enabled", "budget_tokens": 8000},
    "messages": [
        {"role": "user", "content": "ls"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "run ls", "signature": "sig"},
            {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": "ls"}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "No such dir", "is_error": True},
        ]},
    ],
    "tools": [{"name": "Bash", "description": "Run", "input_schema": {"type": "object"}}],
    "metadata": {"user_id": "u1"},
    "stream": True,
}  # fmt: skip


def test_a_claude_code_turn_on_chat_names_what_it_loses():
    turn = an.read_request(enc(CLAUDE_CODE_TURN))
    with pytest.raises(Untranslatable) as error:
        oa.write_request(turn)
    assert error.value.field == "cache_control"
    drop = {"cache_control", "messages.thinking", "messages.tool_result.is_error"}
    body, dropped = oa.write_request(turn, drop=drop)
    assert sorted(dropped) == sorted(drop)
    assert body["messages"] == [
        {"role": "system", "content": "You are Claude Code."},
        {"role": "user", "content": "ls"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "Bash", "arguments": '{"command":"ls"}'}},
        ]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "No such dir"},
    ]  # fmt: skip
    assert body["reasoning_effort"] == "medium"
    assert body["max_completion_tokens"] == 32000
    assert body["stream_options"] == {"include_usage": True}
    assert body["user"] == "u1"


def test_effort_and_budget_use_the_gateways_table():
    request = {
        "model": "m",
        "messages": [{"role": "user", "content": "x"}],
        "reasoning_effort": "high",
    }
    body, _ = an.write_request(oa.read_request(enc(request)), default_max_tokens=4096)
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 24576}
    assert body["max_tokens"] == 4096 + 24576


def test_errors_mid_stream_reach_the_client_in_its_dialect():
    error = b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n'
    deltas = an.StreamDecoder().feed(error)
    assert deltas == [StreamError("overloaded_error", "Overloaded")]
    assert _events(oa.StreamEncoder().encode_many(deltas)) == [
        (None, {"error": {"message": "Overloaded", "type": "overloaded_error"}})
    ]
    back = oa.StreamDecoder().feed(oa.StreamEncoder().encode_many(deltas))
    assert _events(an.StreamEncoder().encode_many(back)) == [
        ("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    ]


@pytest.mark.parametrize(
    ("decoder", "start"),
    [
        (
            oa.StreamDecoder,
            b'data: {"id":"c","model":"m","choices":[{"delta":{"content":"hi"}}]}\n\n',
        ),
        (
            an.StreamDecoder,
            ANTHROPIC_TOOL_STREAM[: ANTHROPIC_TOOL_STREAM.index(b"event: message_delta")],
        ),
    ],
)
def test_a_stream_cut_short_ends_with_an_error(decoder, start):
    instance = decoder()
    instance.feed(start)
    tail = instance.close()
    assert isinstance(tail[-1], StreamError)


def test_thinking_on_a_tool_loop_without_signed_thinking_is_refused():
    # Messages rejects such a request (the last assistant turn must start with its thinking).
    request = {
        "model": "m",
        "reasoning_effort": "medium",
        "messages": [
            {"role": "user", "content": "ls"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "c", "content": "ok"},
        ],
    }
    turn = oa.read_request(enc(request))
    with pytest.raises(Untranslatable) as error:
        an.write_request(turn)
    assert error.value.field == "reasoning_effort"
    body, dropped = an.write_request(turn, drop={"reasoning_effort"})
    assert "thinking" not in body
    assert dropped == ["reasoning_effort"]


def test_usage_deltas_are_running_totals():
    decoder = an.StreamDecoder()
    deltas = decoder.feed(ANTHROPIC_TOOL_STREAM)
    usages = [d.usage for d in deltas if isinstance(d, UsageDelta)]
    assert usages[-1] == TokenUsage(input_tokens=472, output_tokens=89)


def test_images_map_between_url_and_data_uri_and_source_blocks():
    request = {"model": "m", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}},
        {"type": "text", "text": "compare"},
    ]}]}  # fmt: skip
    body, _ = an.write_request(oa.read_request(enc(request)))
    assert body["messages"][0]["content"] == [
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQ"}},
        {"type": "text", "text": "compare"},
    ]  # fmt: skip
    back, _ = oa.write_request(an.read_request(enc(body)))
    assert back["messages"] == request["messages"]
    assert an.read_request(enc(body)).messages[0].parts[2] == Text("compare")


def test_events_in_other_sse_spellings_decode_the_same():
    # CRLF line ends, no space after the colon, data split over lines: all valid SSE.
    plain = an.StreamDecoder().feed(ANTHROPIC_TOOL_STREAM)
    crlf = ANTHROPIC_TOOL_STREAM.replace(b"\n", b"\r\n").replace(b"data: ", b"data:")
    assert an.StreamDecoder().feed(crlf) == plain
    assert an.StreamDecoder().feed(ANTHROPIC_TOOL_STREAM.replace(b"\n", b"\r\n")) == plain
    split = b'data: {"id":"c","model":"m",\ndata: "choices":[{"delta":{"content":"hi"}}]}\n\n'
    assert oa.StreamDecoder().feed(split)[-1] == TextDelta(0, "hi")


def test_a_service_tier_crosses_only_into_a_format_that_names_it():
    answer = oa.read_answer(enc({**_CHAT_ANSWER, "service_tier": "flex"}))
    assert answer.usage.service_tier == "flex"
    assert "service_tier" not in msgspec.json.decode(an.write_answer(answer))["usage"]
    assert msgspec.json.decode(oa.write_answer(answer))["service_tier"] == "flex"
    anthropic = msgspec.json.decode(an.write_answer(an.read_answer(an.write_answer(answer))))
    assert "service_tier" not in anthropic["usage"]


_CHAT_ANSWER = {
    "id": "c",
    "object": "chat.completion",
    "model": "gpt-4o",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1},
}


@pytest.mark.parametrize(
    "change",
    [{"parallel_tool_calls": "no"}, {"user": 5}, {"messages": "hi"}, {"tool_choice": "any"}],
)
def test_malformed_requests_are_refused_as_such(change):
    request = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **change}
    with pytest.raises(MalformedInput):
        oa.read_request(enc(request))


def test_empty_text_beside_tool_calls_is_not_sent_to_messages():
    # Many Chat clients send content "" with tool calls; Messages rejects empty text blocks.
    request = {
        "model": "m",
        "system": None,
        "messages": [
            {"role": "user", "content": "ls"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "c", "content": "ok"},
        ],
    }
    body, _ = an.write_request(oa.read_request(enc(request)))
    assert body["messages"][1]["content"] == [
        {"type": "tool_use", "id": "c", "name": "f", "input": {}}
    ]


def test_tool_calls_from_servers_without_an_index_are_told_apart_by_id():
    chunks = [
        {"choices": [{"delta": {"tool_calls": [{"id": "a", "function": {"name": "f", "arguments": '{"x":'}}]}}]},
        {"choices": [{"delta": {"tool_calls": [{"function": {"arguments": "1}"}}]}}]},
        {"choices": [{"delta": {"tool_calls": [{"id": "b", "function": {"name": "g", "arguments": "{}"}}]}}]},
        {"choices": [{"delta": {"tool_calls": [{"id": "b", "function": {"arguments": " "}}]}}], "usage": None},
        {"choices": [{"delta": {}, "finish_reason": "tool_calls"}]},
    ]  # fmt: skip
    stream = b"".join(b"data: " + enc(c) + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"
    decoder = oa.StreamDecoder()
    deltas = decoder.feed(stream) + decoder.close()
    starts = [d for d in deltas if isinstance(d, ToolCallStart)]
    assert [(s.index, s.id, s.name) for s in starts] == [(0, "a", "f"), (1, "b", "g")]
    arguments = [(d.index, d.json) for d in deltas if isinstance(d, ToolArgumentsDelta)]
    assert arguments == [(0, '{"x":'), (0, "1}"), (1, "{}"), (1, " ")]


def test_a_stream_of_several_choices_is_refused():
    chunk = {"choices": [{"index": 1, "delta": {"content": "b"}}]}
    with pytest.raises(Untranslatable) as error:
        oa.StreamDecoder().feed(b"data: " + enc(chunk) + b"\n\n")
    assert error.value.field == "choices"
