# ruff: noqa: E501  (wire examples are kept one object per line)
"""OpenAI Responses as a client format: a Responses request reaches the other formats, and their
answers and streams come back as Responses, as the openai SDK reads them."""

from __future__ import annotations

import msgspec
import openai
import pytest
from hypothesis import given
from hypothesis import strategies as st

from asgi_llmguard.providers.translate import anthropic_messages as an
from asgi_llmguard.providers.translate import openai_chat as oa
from asgi_llmguard.providers.translate import openai_responses as rs
from asgi_llmguard.providers.translate.model import (
    Answer,
    MessageStart,
    PartStop,
    RedactedThinking,
    StreamError,
    Text,
    TextDelta,
    Thinking,
    ToolCall,
    Untranslatable,
    answer_deltas,
)
from asgi_llmguard.testing import serve
from asgi_llmguard.tokens import TokenUsage
from tests.providers.translate.strategies import answers, turns
from tests.providers.translate.test_examples import ANTHROPIC_TOOL_STREAM, OPENAI_PARALLEL_STREAM
from tests.providers.translate.test_properties import (
    SETTINGS,
    _collect,
    _cuts,
    _feed,
    _normal,
    _retained,
)

enc = msgspec.json.encode


@SETTINGS
@given(turns())
def test_a_chat_request_survives_the_trip_through_responses(turn):
    turn = msgspec.structs.replace(turn, stop=())  # Responses has no stop sequences
    body, dropped = rs.write_request(turn)
    assert dropped == []
    there = rs.read_request(enc(body))
    assert _normal(there) == _normal(turn)
    back, dropped = oa.write_request(there)
    assert dropped == []
    assert _normal(oa.read_request(enc(back))) == _normal(turn)


@SETTINGS
@given(turns())
def test_a_responses_request_reaches_messages_and_comes_back(turn):
    first, _ = rs.write_request(msgspec.structs.replace(turn, stop=()))
    turn = rs.read_request(enc(first))
    name = turn.structured_output.name if turn.structured_output else None
    body, dropped = an.write_request(turn)
    assert dropped == []
    back = an.read_request(enc(body), structured_tool=name)
    again, dropped = rs.write_request(back)
    assert dropped == []
    assert _normal(rs.read_request(enc(again))) == _normal(
        msgspec.structs.replace(turn, max_output_tokens=back.max_output_tokens)
    )


def _as_responses_sees_it(answer: Answer) -> Answer:
    """What Responses carries of an answer: no redacted thinking, no stop sequence, no cache
    writes (they stay in the input tokens)."""
    usage = answer.usage
    if usage is not None:
        usage = msgspec.structs.replace(usage, cache_creation_tokens=0, cache_creation_1h_tokens=0)
    parts = tuple(p for p in answer.parts if not isinstance(p, RedactedThinking))
    return msgspec.structs.replace(answer, parts=parts, usage=usage, stop_sequence=None)


@SETTINGS
@given(answers(anthropic=True) | answers(anthropic=False))
def test_an_answer_written_as_responses_keeps_what_responses_carries(answer):
    assert rs.read_answer(rs.write_answer(answer, created=1)) == _as_responses_sees_it(answer)


@SETTINGS
@given(answers(anthropic=True) | answers(anthropic=False), st.data())
def test_a_stream_relayed_as_responses_keeps_the_answer(answer, data):
    sse = an.StreamEncoder().encode_many(answer_deltas(answer))
    deltas = _feed(an.StreamDecoder(), sse, _cuts(data, len(sse)))
    relayed = rs.StreamEncoder(created=1).encode_many(deltas)
    back = _feed(rs.StreamDecoder(), relayed, _cuts(data, len(relayed)))
    expected = _as_responses_sees_it(an.read_answer(an.write_answer(answer)))
    assert _collect(back) == expected
    numbers = [e["sequence_number"] for e in _events(relayed)]
    assert numbers == list(range(len(numbers)))


def test_the_responses_decoder_holds_no_more_than_the_unfinished_event():
    # The unfinished event is at most the item's .done event, which repeats its whole text; once
    # the events are through, nothing of them is held.
    small, _ = _retained(rs.StreamDecoder, rs.StreamEncoder(created=1), 1_000)
    large, _ = _retained(rs.StreamDecoder, rs.StreamEncoder(created=1), 50_000)
    assert large < small + 4096, (small, large)


def _events(sse: bytes) -> list[dict]:
    out = []
    for block in sse.split(b"\n\n"):
        if block:
            name, data = block.split(b"\n")
            event = msgspec.json.decode(data[6:])
            assert name[7:].decode() == event["type"]
            out.append(event)
    return out


# -- documented examples ----------------------------------------------------------------------

# A turn as Codex sends it: instructions, developer and user messages, a function call and its
# output, reasoning carried back encrypted, flat function tools, no storage.
CODEX_TURN = {
    "model": "gpt-5-codex",
    "instructions": "You are a coding agent.",
    "input": [
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Sandbox: workspace-write."}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "List the files."}]},
        {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "Run ls."}], "encrypted_content": "gAAAAB"},
        {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "shell", "arguments": "{\"command\":[\"ls\"]}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "README.md\nsrc"},
    ],
    "tools": [{"type": "function", "name": "shell", "description": "Runs a command.", "strict": False, "parameters": {"type": "object", "properties": {"command": {"type": "array", "items": {"type": "string"}}}, "required": ["command"]}}],
    "tool_choice": "auto",
    "parallel_tool_calls": False,
    "reasoning": {"effort": "medium", "summary": "auto"},
    "store": False,
    "stream": True,
    "include": ["reasoning.encrypted_content"],
}  # fmt: skip


def test_a_codex_turn_reaches_chat_and_messages():
    turn = rs.read_request(enc(CODEX_TURN))
    assert turn.unsupported == ()
    assert turn.system == (Text("You are a coding agent."), Text("Sandbox: workspace-write."))
    assert turn.messages[1].parts == (
        Thinking("Run ls.", "gAAAAB"),
        ToolCall("call_1", "shell", '{"command":["ls"]}'),
    )
    chat, dropped = oa.write_request(turn, drop={"messages.thinking"})
    assert dropped == ["messages.thinking"]
    assert chat["messages"][-1] == {
        "role": "tool",
        "tool_call_id": "call_1",
        "content": "README.md\nsrc",
    }
    assert chat["parallel_tool_calls"] is False
    assert chat["reasoning_effort"] == "medium"
    messages, dropped = an.write_request(turn)
    assert dropped == []
    assert messages["messages"][1]["content"][0] == {
        "type": "thinking",
        "thinking": "Run ls.",
        "signature": "gAAAAB",
    }
    assert messages["thinking"] == {"type": "enabled", "budget_tokens": 8192}
    assert messages["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"store": True}, "store"),
        ({"tools": [{"type": "web_search"}]}, "tools.web_search"),
        ({"tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]}, "tools.file_search"),
        ({"tools": [{"type": "computer_use_preview", "display_width": 1024, "display_height": 768, "environment": "browser"}]}, "tools.computer_use_preview"),
        ({"tool_choice": {"type": "web_search_preview"}}, "tool_choice.web_search_preview"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input.item_reference"),
        ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file-1"}]}]}, "input.content.input_file"),
        ({"include": ["file_search_call.results"]}, "include.file_search_call.results"),
        ({"text": {"format": {"type": "json_object"}}}, "text.format.json_object"),
        ({"prompt_cache_key": "k"}, "prompt_cache_key"),
        ({"tools": [{"type": "function", "name": "f", "parameters": {}, "strict": None, "defer_loading": True}]}, "tools.function.defer_loading"),
    ],
)  # fmt: skip
def test_what_a_chat_upstream_cannot_do_is_refused_by_name(change, field):
    body = {"model": "m", "input": "hi", **change}
    turn = rs.read_request(enc(body))
    assert field in turn.unsupported
    for write in (oa.write_request, an.write_request):
        with pytest.raises(Untranslatable) as error:
            write(turn)
        assert error.value.field == field
        _, dropped = write(turn, drop={field})
        assert dropped == [field]


def test_a_string_input_and_structured_output():
    turn = rs.read_request(enc({
        "model": "m", "input": "Extract.", "max_output_tokens": 50, "temperature": 0.2,
        "text": {"format": {"type": "json_schema", "name": "person", "strict": True, "schema": {"type": "object"}}},
    }))  # fmt: skip
    chat, _ = oa.write_request(turn)
    assert chat["messages"] == [{"role": "user", "content": "Extract."}]
    assert chat["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "person", "schema": {"type": "object"}, "strict": True},
    }
    assert chat["max_completion_tokens"] == 50


def test_the_documented_messages_tool_stream_becomes_responses_events():
    decoder = an.StreamDecoder()
    sse = rs.StreamEncoder(created=7).encode_many(
        decoder.feed(ANTHROPIC_TOOL_STREAM) + decoder.close()
    )
    events = _events(sse)
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta", "response.function_call_arguments.delta", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.completed",
    ]  # fmt: skip
    done = events[-1]["response"]
    assert done["status"] == "completed"
    assert done["output"][0]["content"][0]["text"] == "Okay, let's check the weather."
    call = done["output"][1]
    assert (call["type"], call["call_id"], call["name"]) == (
        "function_call",
        "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
        "get_weather",
    )
    assert msgspec.json.decode(call["arguments"]) == {"location": "San Francisco, CA"}
    assert done["usage"]["input_tokens"] == 472
    assert done["usage"]["output_tokens"] == 89


def test_a_length_stop_is_an_incomplete_response_and_errors_are_error_events():
    answer = Answer(
        id="r", model="m", parts=(Text("cut"),), finish_reason="length", usage=TokenUsage(1, 2)
    )
    body = msgspec.json.decode(rs.write_answer(answer, created=1))
    assert (body["status"], body["incomplete_details"]) == (
        "incomplete",
        {"reason": "max_output_tokens"},
    )
    events = _events(rs.StreamEncoder(created=1).encode_many(answer_deltas(answer)))
    assert events[-1]["type"] == "response.incomplete"
    error = _events(
        rs.StreamEncoder(created=1).encode_many(
            [MessageStart("r", "m"), TextDelta(0, "a"), StreamError("overloaded_error", "busy")]
        )
    )
    assert error[-1] == {
        "type": "error",
        "sequence_number": len(error) - 1,
        "code": "overloaded_error",
        "message": "busy",
        "param": None,
    }
    decoder = rs.StreamDecoder()
    assert isinstance(
        (
            decoder.feed(
                b'event: response.created\ndata: {"type":"response.created","response":{"id":"r"}}\n\n'
            )
            + decoder.close()
        )[-1],
        StreamError,
    )


# -- the SDK, over a real socket --------------------------------------------------------------


def _upstream_app(stream: bytes, answer: bytes):
    """A tiny ASGI app answering ``/v1/responses`` with the encoders' output."""

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        streaming = msgspec.json.decode(body).get("stream")
        content = stream if streaming else answer
        kind = b"text/event-stream" if streaming else b"application/json"
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", kind)]}
        )
        await send({"type": "http.response.body", "body": content})

    return app


def test_the_openai_sdk_reads_responses_from_chat_and_messages_upstreams():
    decoder = oa.StreamDecoder()
    from_chat = rs.StreamEncoder().encode_many(
        decoder.feed(OPENAI_PARALLEL_STREAM) + decoder.close()
    )
    thinking = Answer(
        id="msg_1", model="claude-x",
        parts=(Thinking("Think.", "sig"), Text("Hello"), ToolCall("toolu_1", "f", '{"a":1}')),
        finish_reason="tool_calls", usage=TokenUsage(30, 9, 20),
    )  # fmt: skip
    with serve(_upstream_app(from_chat, rs.write_answer(thinking))) as upstream:
        client = openai.OpenAI(api_key="k", base_url=f"{upstream.url}/v1", max_retries=0)
        events = list(client.responses.create(model="gpt-4o", input="Weather?", stream=True))
        response = client.responses.create(model="gpt-4o", input="hi")
        with client.responses.stream(model="gpt-4o", input="Weather?") as stream:
            final = stream.get_final_response()
    assert events[0].type == "response.created"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    completed = events[-1].response
    calls = [i for i in completed.output if i.type == "function_call"]
    assert [(c.call_id, c.name, c.arguments) for c in calls] == [
        ("call_a", "get_weather", '{"location": "Paris"}'),
        ("call_b", "get_weather", '{"location": "Bogota"}'),
    ]
    assert completed.usage.input_tokens == 80
    assert completed.usage.input_tokens_details.cached_tokens == 64
    assert [i.type for i in final.output] == ["function_call", "function_call"]
    assert final.output[1].arguments == '{"location": "Bogota"}'
    assert response.output_text == "Hello"
    assert response.output[0].type == "reasoning"
    assert response.output[0].encrypted_content == "sig"
    assert response.output[2].call_id == "toolu_1"
    assert response.usage.input_tokens_details.cached_tokens == 20
    assert response.status == "completed"


def test_the_openai_sdk_streams_text_and_reasoning_from_a_messages_upstream():
    deltas = [
        MessageStart("msg_2", "claude-x"),
        *answer_deltas(
            Answer(
                id="msg_2",
                model="claude-x",
                parts=(Thinking("Hm", "s"), Text("Hi there")),
                finish_reason="stop",
                usage=TokenUsage(5, 3),
            )
        )[1:],
    ]
    sse = an.StreamEncoder().encode_many(deltas)
    decoder = an.StreamDecoder()
    relayed = rs.StreamEncoder().encode_many(decoder.feed(sse) + decoder.close())
    with serve(_upstream_app(relayed, b"{}")) as upstream:
        client = openai.OpenAI(api_key="k", base_url=f"{upstream.url}/v1", max_retries=0)
        with client.responses.stream(model="claude-x", input="hi") as stream:
            texts = [e.delta for e in stream if e.type == "response.output_text.delta"]
            final = stream.get_final_response()
    assert "".join(texts) == "Hi there"
    assert final.output_text == "Hi there"
    assert final.output[0].summary[0].text == "Hm"
    assert final.output[0].encrypted_content == "s"
    assert final.usage.output_tokens == 3
    assert PartStop(0) in deltas
