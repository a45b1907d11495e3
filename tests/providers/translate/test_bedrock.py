# ruff: noqa: E501  (wire examples are kept one object per line)
"""Bedrock Converse: what it expresses survives the trip through the model and the other formats,
requests, answers and ConverseStream events; what it cannot is refused by name."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from asgi_llmguard.providers.translate import anthropic_messages as an
from asgi_llmguard.providers.translate import bedrock_converse as bc
from asgi_llmguard.providers.translate import openai_chat as oa
from asgi_llmguard.providers.translate.model import (
    Answer,
    Finish,
    Image,
    Message,
    StreamError,
    TextDelta,
    ToolArgumentsDelta,
    ToolCallStart,
    ToolChoice,
    Turn,
    Untranslatable,
    answer_deltas,
)
from asgi_llmguard.tokens import TokenUsage
from tests.providers.translate.strategies import answers, turns
from tests.providers.translate.test_properties import SETTINGS, _collect, _cuts, _feed, _normal

enc = msgspec.json.encode
PNG = Image(data="iVBORw0KGgo=", media_type="image/png")


def _bedrock_can(turn: Turn) -> Turn:
    """``turn`` without what Converse refuses: images by URL, an end-user id, one call per
    answer, a choice of no tool."""
    messages = tuple(
        Message(m.role, tuple(PNG if isinstance(p, Image) and p.url else p for p in m.parts))
        for m in turn.messages
    )
    choice = turn.tool_choice
    return msgspec.structs.replace(
        turn,
        messages=messages,
        user=None,
        parallel_tool_calls=None if turn.parallel_tool_calls is False else turn.parallel_tool_calls,
        tool_choice=None if choice is not None and choice.mode == "none" else choice,
    )


def _as_bedrock_reads_it(turn: Turn) -> Turn:
    so = turn.structured_output
    if so is not None:  # Converse enforces the schema: strictness has no field
        so = msgspec.structs.replace(so, strict=None)
    return _normal(msgspec.structs.replace(turn, structured_output=so))


@SETTINGS
@given(turns())
def test_a_chat_request_survives_the_trip_through_converse(turn):
    turn = _bedrock_can(turn)
    body, dropped = bc.write_request(turn)
    assert dropped == []
    there = bc.read_request(enc(body), model=turn.model, stream=turn.stream)
    assert _normal(there) == _as_bedrock_reads_it(turn)
    back, dropped = oa.write_request(there)
    assert dropped == []
    assert _normal(oa.read_request(enc(back))) == _as_bedrock_reads_it(turn)


@SETTINGS
@given(turns())
def test_a_converse_request_survives_the_trip_through_messages(turn):
    first, _ = bc.write_request(_bedrock_can(turn))
    turn = bc.read_request(enc(first), model="anthropic.claude-x")
    name = turn.structured_output.name if turn.structured_output else None
    body, _ = an.write_request(turn)
    again, dropped = bc.write_request(an.read_request(enc(body), structured_tool=name))
    assert dropped == []
    first.setdefault("inferenceConfig", {}).setdefault("maxTokens", an.DEFAULT_MAX_TOKENS)
    assert _normal(bc.read_request(enc(again))) == _normal(bc.read_request(enc(first)))


def _as_bedrock_sees_it(answer: Answer) -> Answer:
    """What Converse carries of an answer: no id or model (the caller has them), no stop sequence
    text, no reasoning tokens of their own, no 1-hour cache writes."""
    usage = answer.usage
    if usage is not None:
        usage = msgspec.structs.replace(usage, cache_creation_1h_tokens=0, reasoning_tokens=0)
    return msgspec.structs.replace(answer, usage=usage, stop_sequence=None)


@SETTINGS
@given(answers(anthropic=True) | answers(anthropic=False))
def test_an_answer_written_as_converse_keeps_what_converse_carries(answer):
    back = bc.read_answer(bc.write_answer(answer), id=answer.id, model=answer.model)
    assert back == _as_bedrock_sees_it(answer)


@SETTINGS
@given(answers(anthropic=True), st.data())
def test_a_converse_stream_relayed_as_messages_and_chat_keeps_the_answer(answer, data):
    events = bc.StreamEncoder().encode_many(answer_deltas(answer))
    decoder = bc.StreamDecoder(id=answer.id, model=answer.model)
    deltas = [d for kind, payload in events for d in decoder.feed_event(kind, payload)]
    deltas += decoder.close()
    assert _collect(deltas) == _as_bedrock_sees_it(answer)
    relayed = an.StreamEncoder().encode_many(deltas)
    back = _feed(an.StreamDecoder(), relayed, _cuts(data, len(relayed)))
    assert _collect(back) == _as_bedrock_sees_it(answer)


@SETTINGS
@given(answers(anthropic=False), st.data())
def test_a_chat_stream_relayed_as_converse_keeps_the_answer(answer, data):
    sse = oa.StreamEncoder(created=1).encode_many(answer_deltas(answer))
    deltas = _feed(oa.StreamDecoder(), sse, _cuts(data, len(sse)))
    decoder = bc.StreamDecoder(id=answer.id, model=answer.model)
    back = [d for k, p in bc.StreamEncoder().encode_many(deltas) for d in decoder.feed_event(k, p)]
    assert _collect(back + decoder.close()) == _as_bedrock_sees_it(answer)


@st.composite
def _bedrock_cannot(draw: st.DrawFn) -> tuple[Turn, set[str]]:
    turn = draw(turns())
    present: set[str] = set()
    if turn.user is not None:
        present.add("user")
    choice = turn.tool_choice
    if turn.tools and choice is not None and choice.mode == "none":
        present.add("tool_choice")
    if (
        turn.tools
        and turn.parallel_tool_calls is False
        and (choice is None or choice.mode != "none")
    ):
        present.add("parallel_tool_calls")
    if any(isinstance(p, Image) and p.url for m in turn.messages for p in m.parts):
        present.add("messages.content.image_url")
    return turn, present


@SETTINGS
@given(_bedrock_cannot())
def test_what_converse_cannot_carry_is_refused_or_dropped_by_name(case):
    turn, present = case
    if present:
        with pytest.raises(Untranslatable) as error:
            bc.write_request(turn)
        assert error.value.field in present
    _, dropped = bc.write_request(turn, drop=present)
    assert set(dropped) == present


# -- documented examples ----------------------------------------------------------------------

# The Converse documentation's tool use example: the model asks for a tool, the result goes back.
CONVERSE_TOOL_TURN = {
    "system": [{"text": "You are a music assistant."}],
    "messages": [
        {"role": "user", "content": [{"text": "What is the most popular song on WZPZ?"}]},
        {"role": "assistant", "content": [{"toolUse": {"toolUseId": "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q", "name": "top_song", "input": {"sign": "WZPZ"}}}]},
        {"role": "user", "content": [{"toolResult": {"toolUseId": "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q", "content": [{"json": {"song": "Elemental Hotel", "artist": "8 Storey Hike"}}]}}]},
    ],
    "toolConfig": {"tools": [{"toolSpec": {"name": "top_song", "description": "Get the most popular song played on a radio station.", "inputSchema": {"json": {"type": "object", "properties": {"sign": {"type": "string"}}, "required": ["sign"]}}}}], "toolChoice": {"auto": {}}},
    "inferenceConfig": {"maxTokens": 512, "temperature": 0.5},
}  # fmt: skip


def test_the_documented_converse_tool_turn_reaches_chat():
    turn = bc.read_request(enc(CONVERSE_TOOL_TURN), model="anthropic.claude-3-haiku")
    body, dropped = oa.write_request(turn)
    assert dropped == []
    assert body["model"] == "anthropic.claude-3-haiku"
    assert body["messages"][0] == {"role": "system", "content": "You are a music assistant."}
    assert body["messages"][2]["tool_calls"][0]["function"] == {
        "name": "top_song",
        "arguments": '{"sign":"WZPZ"}',
    }
    assert body["messages"][3] == {
        "role": "tool",
        "tool_call_id": "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q",
        "content": '{"song":"Elemental Hotel","artist":"8 Storey Hike"}',
    }
    assert body["tool_choice"] == "auto"
    assert body["max_completion_tokens"] == 512


# The ConverseStream events of a tool-using answer, as the documentation lists them (payloads
# as they appear in the event-stream frames, the padding field ``p`` included).
CONVERSE_STREAM = [
    ("messageStart", {"p": "abcd", "role": "assistant"}),
    ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Let me check"}, "p": "abcdefgh"}),
    ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": " the charts."}, "p": "ab"}),
    ("contentBlockStop", {"contentBlockIndex": 0, "p": "abc"}),
    ("contentBlockStart", {"contentBlockIndex": 1, "start": {"toolUse": {"name": "top_song", "toolUseId": "tooluse_1"}}, "p": "ab"}),
    ("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": '{"sign": '}}, "p": "a"}),
    ("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": '"WZPZ"}'}}, "p": "a"}),
    ("contentBlockStop", {"contentBlockIndex": 1, "p": "abcd"}),
    ("messageStop", {"stopReason": "tool_use", "p": "abc"}),
    ("metadata", {"metrics": {"latencyMs": 1195}, "usage": {"inputTokens": 375, "outputTokens": 58, "totalTokens": 1433, "cacheReadInputTokens": 1000, "cacheWriteInputTokens": 0}, "p": "abcdef"}),
]  # fmt: skip


def _decode_stream(events, **names):
    decoder = bc.StreamDecoder(**names)
    out = [d for kind, payload in events for d in decoder.feed_event(kind, enc(payload))]
    return out + decoder.close()


def test_the_documented_converse_stream_becomes_chat_chunks():
    deltas = _decode_stream(CONVERSE_STREAM, id="req-1", model="anthropic.claude-x")
    assert [d for d in deltas if isinstance(d, TextDelta)] == [
        TextDelta(0, "Let me check"),
        TextDelta(0, " the charts."),
    ]
    assert ToolCallStart(1, "tooluse_1", "top_song") in deltas
    assert [d for d in deltas if isinstance(d, ToolArgumentsDelta)] == [
        ToolArgumentsDelta(1, '{"sign": '),
        ToolArgumentsDelta(1, '"WZPZ"}'),
    ]
    assert Finish("tool_calls") in deltas
    answer = _collect(deltas)
    assert answer.usage == TokenUsage(1375, 58, 1000)
    chat = oa.read_answer(oa.write_answer(answer))
    assert chat.usage.input_tokens == 1375
    assert chat.id == "req-1"


def test_a_converse_stream_cut_short_or_failing_ends_with_an_error():
    assert isinstance(_decode_stream(CONVERSE_STREAM[:5])[-1], StreamError)
    failed = _decode_stream(
        [*CONVERSE_STREAM[:3], ("throttlingException", {"message": "Too many requests"})]
    )
    assert failed[-1] == StreamError("throttlingException", "Too many requests")
    sse = an.StreamEncoder().encode_many(failed)
    assert (
        b'event: error\ndata: {"type":"error","error":{"type":"throttlingException","message":"Too many requests"}}'
        in sse
    )


@pytest.mark.parametrize(
    ("reason", "finish"),
    [("end_turn", "stop"), ("stop_sequence", "stop"), ("tool_use", "tool_calls"), ("max_tokens", "length"), ("guardrail_intervened", "content_filter"), ("content_filtered", "content_filter"), ("malformed_tool_use", "other")],
)  # fmt: skip
def test_converse_stop_reasons(reason, finish):
    body = {
        "output": {"message": {"role": "assistant", "content": [{"text": "x"}]}},
        "stopReason": reason,
        "usage": {"inputTokens": 1, "outputTokens": 1},
    }
    assert bc.read_answer(enc(body)).finish_reason == finish


def test_thinking_and_signed_reasoning_cross_between_messages_and_converse():
    claude = an.read_request(enc({
        "model": "claude-x", "max_tokens": 20000, "thinking": {"type": "enabled", "budget_tokens": 8000},
        "messages": [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": [{"type": "thinking", "thinking": "Use the tool.", "signature": "sig=="}, {"type": "redacted_thinking", "data": "cmVk"}, {"type": "tool_use", "id": "t1", "name": "w", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "sunny", "is_error": True}]},
        ],
    }))  # fmt: skip
    body, dropped = bc.write_request(claude)
    assert dropped == []
    assert body["additionalModelRequestFields"] == {
        "thinking": {"type": "enabled", "budget_tokens": 8000}
    }
    assert body["messages"][1]["content"][:2] == [
        {"reasoningContent": {"reasoningText": {"text": "Use the tool.", "signature": "sig=="}}},
        {"reasoningContent": {"redactedContent": "cmVk"}},
    ]
    assert body["messages"][2]["content"][0]["toolResult"]["status"] == "error"
    assert bc.read_request(enc(body)) == msgspec.structs.replace(claude, model="", stream=False)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"guardrailConfig": {"guardrailIdentifier": "g", "guardrailVersion": "1"}}, "guardrailConfig"),
        ({"additionalModelRequestFields": {"top_k": 5}}, "additionalModelRequestFields.top_k"),
        ({"system": [{"text": "a"}, {"cachePoint": {"type": "default"}}]}, "system.cachePoint"),
        ({"messages": [{"role": "user", "content": [{"document": {"format": "pdf", "name": "d", "source": {"bytes": "AA=="}}}]}]}, "content.document"),
        ({"messages": [{"role": "user", "content": [{"image": {"format": "png", "source": {"s3Location": {"uri": "s3://b/k"}}}}]}]}, "image.source.s3Location"),
        ({"performanceConfig": {"latency": "optimized"}}, "performanceConfig"),
        ({"toolConfig": {"tools": [{"toolSpec": {"name": "f", "inputSchema": {"json": {}}, "inputExamples": [{}]}}]}}, "toolSpec.inputExamples"),
    ],
)  # fmt: skip
def test_what_the_model_cannot_hold_is_named_when_read(change, field):
    body = {"messages": [{"role": "user", "content": [{"text": "hi"}]}], **change}
    turn = bc.read_request(enc(body))
    assert field in turn.unsupported
    with pytest.raises(Untranslatable) as error:
        oa.write_request(turn)
    assert error.value.field == field


def test_structured_output_is_output_config_with_the_schema_as_text():
    turn = oa.read_request(enc({
        "model": "m", "messages": [{"role": "user", "content": "hi"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "person", "schema": {"type": "object"}}},
    }))  # fmt: skip
    body, _ = bc.write_request(turn)
    assert body["outputConfig"] == {
        "textFormat": {
            "type": "json_schema",
            "structure": {"jsonSchema": {"schema": '{"type":"object"}', "name": "person"}},
        }
    }
    choice = bc.write_request(
        msgspec.structs.replace(
            turn,
            tools=oa.read_request(
                enc(
                    {
                        "model": "m",
                        "messages": [],
                        "tools": [{"type": "function", "function": {"name": "f"}}],
                    }
                )
            ).tools,
            tool_choice=ToolChoice("named", "f"),
        )
    )[0]
    assert choice["toolConfig"]["toolChoice"] == {"tool": {"name": "f"}}


def test_botocore_parses_what_the_answer_writer_sends():
    import botocore.session
    from botocore.parsers import create_parser

    model = botocore.session.get_session().get_service_model("bedrock-runtime")
    answer = an.read_answer(enc({
        "id": "m", "type": "message", "role": "assistant", "model": "c",
        "content": [{"type": "thinking", "thinking": "Hm.", "signature": "c2ln"}, {"type": "text", "text": "Calling."}, {"type": "tool_use", "id": "t", "name": "f", "input": {"a": 1}}],
        "stop_reason": "tool_use", "usage": {"input_tokens": 3, "cache_read_input_tokens": 10, "output_tokens": 4},
    }))  # fmt: skip
    response = {"status_code": 200, "headers": {}, "body": bc.write_answer(answer)}
    parsed = create_parser("rest-json").parse(
        response, model.operation_model("Converse").output_shape
    )
    content = parsed["output"]["message"]["content"]
    assert content[0]["reasoningContent"]["reasoningText"] == {"text": "Hm.", "signature": "c2ln"}
    assert content[1] == {"text": "Calling."}
    assert content[2]["toolUse"] == {"toolUseId": "t", "name": "f", "input": {"a": 1}}
    assert parsed["stopReason"] == "tool_use"
    assert parsed["usage"]["cacheReadInputTokens"] == 10
    assert parsed["usage"]["inputTokens"] == 3


def test_blank_text_beside_other_blocks_is_not_sent():
    # Converse rejects a blank text block; Chat clients send content "" beside tool calls.
    turn = oa.read_request(enc({"model": "m", "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c", "content": "ok"},
    ]}))  # fmt: skip
    body, _ = bc.write_request(turn)
    assert body["messages"][1]["content"] == [
        {"toolUse": {"toolUseId": "c", "name": "f", "input": {}}}
    ]
