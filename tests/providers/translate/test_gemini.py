# ruff: noqa: E501  (wire examples are kept one object per line)
"""Gemini ``generateContent``: what it expresses survives the trip through the model and the
other formats, requests, answers and streams split anywhere; what it cannot is refused by name."""

from __future__ import annotations

import msgspec
import pytest
from google.genai import types
from hypothesis import given
from hypothesis import strategies as st

from asgi_llmguard.providers.translate import anthropic_messages as an
from asgi_llmguard.providers.translate import gemini_generate as gm
from asgi_llmguard.providers.translate import openai_chat as oa
from asgi_llmguard.providers.translate.model import (
    Answer,
    Finish,
    MalformedInput,
    Message,
    RedactedThinking,
    StreamError,
    Text,
    TextDelta,
    Thinking,
    ToolCall,
    ToolCallStart,
    ToolResult,
    Turn,
    Untranslatable,
    UsageDelta,
    answer_deltas,
)
from asgi_llmguard.tokens import TokenUsage
from tests.providers.translate.strategies import answers, turns
from tests.providers.translate.test_properties import (
    SETTINGS,
    _collect,
    _cuts,
    _feed,
    _normal,
    _retained,
)

enc = msgspec.json.encode


def _gemini_can(turn: Turn) -> Turn:
    """``turn`` without what Gemini refuses (an end-user id, one call per answer, a schema
    description)."""
    so = turn.structured_output
    if so is not None:
        so = msgspec.structs.replace(so, description=None)
    return msgspec.structs.replace(
        turn,
        user=None,
        parallel_tool_calls=None if turn.parallel_tool_calls is False else turn.parallel_tool_calls,
        structured_output=so,
    )


def _as_gemini_reads_it(turn: Turn) -> Turn:
    """The same request as Gemini has it: the schema has no name or strictness (Gemini enforces
    it), and the defaults made explicit."""
    so = turn.structured_output
    if so is not None:
        so = msgspec.structs.replace(so, name=gm.STRUCTURED_NAME, strict=None)
    return _normal(msgspec.structs.replace(turn, structured_output=so))


def _via_gemini(turn: Turn) -> Turn:
    body, dropped = gm.write_request(turn)
    assert dropped == []
    return gm.read_request(enc(body), model=turn.model, stream=turn.stream)


@SETTINGS
@given(turns())
def test_a_chat_request_survives_the_trip_through_gemini(turn):
    turn = _gemini_can(turn)
    there = _via_gemini(turn)
    assert _normal(there) == _as_gemini_reads_it(turn)
    back, dropped = oa.write_request(there)
    assert dropped == []
    assert _normal(oa.read_request(enc(back))) == _as_gemini_reads_it(turn)


@SETTINGS
@given(turns())
def test_a_gemini_request_survives_the_trip_through_chat_and_messages(turn):
    first, _ = gm.write_request(_gemini_can(turn))  # as a Gemini client would send it
    turn = gm.read_request(enc(first), model="gemini-x")
    body, _ = oa.write_request(turn)
    again, dropped = gm.write_request(oa.read_request(enc(body)))
    assert dropped == []
    assert again == first
    if turn.structured_output is None:  # Messages has it as a forced tool, with the name
        body, _ = an.write_request(turn)
        again, _ = gm.write_request(an.read_request(enc(body)))
        assert _normal(gm.read_request(enc(again), model="gemini-x")) == _normal(turn)


def _as_gemini_sees_it(answer: Answer) -> Answer:
    """What Gemini carries of an answer: no redacted thinking, no stop sequence, no cache writes
    (they stay in the prompt count)."""
    usage = answer.usage
    if usage is not None:
        usage = msgspec.structs.replace(usage, cache_creation_tokens=0, cache_creation_1h_tokens=0)
    parts = tuple(p for p in answer.parts if not isinstance(p, RedactedThinking))
    return msgspec.structs.replace(answer, parts=parts, usage=usage, stop_sequence=None)


@SETTINGS
@given(answers(anthropic=False) | answers(anthropic=True))
def test_an_answer_written_as_gemini_keeps_what_gemini_carries(answer):
    assert gm.read_answer(gm.write_answer(answer)) == _as_gemini_sees_it(answer)


@SETTINGS
@given(answers(anthropic=True), st.data())
def test_a_messages_stream_relayed_as_gemini_keeps_the_answer(answer, data):
    sse = an.StreamEncoder().encode_many(answer_deltas(answer))
    deltas = _feed(an.StreamDecoder(), sse, _cuts(data, len(sse)))
    relayed = gm.StreamEncoder().encode_many(deltas)
    back = _feed(gm.StreamDecoder(), relayed, _cuts(data, len(relayed)))
    assert _collect(back) == _as_gemini_sees_it(answer)


@SETTINGS
@given(answers(anthropic=False), st.data())
def test_a_gemini_stream_relayed_as_chat_keeps_the_answer(answer, data):
    sse = gm.StreamEncoder().encode_many(answer_deltas(answer))
    deltas = _feed(gm.StreamDecoder(), sse, _cuts(data, len(sse)))
    assert _collect(deltas) == answer
    relayed = oa.StreamEncoder(created=1).encode_many(deltas)
    back = _feed(oa.StreamDecoder(), relayed, _cuts(data, len(relayed)))
    assert _collect(back) == answer


def test_the_gemini_decoder_holds_no_more_than_the_unfinished_event():
    small, most_small = _retained(gm.StreamDecoder, gm.StreamEncoder(), 1_000)
    large, most_large = _retained(gm.StreamDecoder, gm.StreamEncoder(), 50_000)
    assert most_small < 997
    assert most_large < 997
    assert large < small + 4096, (small, large)


@st.composite
def _gemini_cannot(draw: st.DrawFn) -> tuple[Turn, set[str]]:
    turn = draw(turns())
    present: set[str] = set()
    if turn.user is not None:
        present.add("user")
    if turn.parallel_tool_calls is False and (
        turn.tool_choice is None or turn.tool_choice.mode != "none"
    ):
        present.add("parallel_tool_calls")
    if turn.structured_output is not None and turn.structured_output.description is not None:
        present.add("response_format.json_schema.description")
    messages = list(turn.messages)
    if draw(st.booleans()):
        messages.append(Message("system", (Text("late"),)))
        present.add("messages.system")
    if draw(st.booleans()):
        messages.append(Message("assistant", (RedactedThinking("x"), Text("a"))))
        present.add("messages.redacted_thinking")
    return msgspec.structs.replace(turn, messages=tuple(messages)), present


@SETTINGS
@given(_gemini_cannot())
def test_what_gemini_cannot_carry_is_refused_or_dropped_by_name(case):
    turn, present = case
    if present:
        with pytest.raises(Untranslatable) as error:
            gm.write_request(turn)
        assert error.value.field in present
    _, dropped = gm.write_request(turn, drop=present)
    assert set(dropped) == present


# -- documented examples ----------------------------------------------------------------------

# Function calling with thinking, as Gemini's documentation shows a multi-turn request: the
# signature sits on the functionCall part and must go back on it.
GEMINI_TOOL_TURN = {
    "systemInstruction": {"parts": [{"text": "You are a helpful assistant."}]},
    "contents": [
        {"role": "user", "parts": [{"text": "What's the temperature in London?"}]},
        {"role": "model", "parts": [{"functionCall": {"name": "get_current_temperature", "args": {"location": "London"}}, "thoughtSignature": "CiQBcsjafFWq"}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "get_current_temperature", "response": {"output": "15C"}}}]},
    ],
    "tools": [{"functionDeclarations": [{"name": "get_current_temperature", "description": "Gets the current temperature for a given location.", "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}]}],
    "toolConfig": {"functionCallingConfig": {"mode": "AUTO"}},
    "generationConfig": {"maxOutputTokens": 8192, "topP": 0.95, "thinkingConfig": {"thinkingBudget": 2048, "includeThoughts": True}},
}  # fmt: skip


def test_a_documented_gemini_tool_turn_reaches_messages_and_comes_back_signed():
    turn = gm.read_request(enc(GEMINI_TOOL_TURN), model="gemini-2.5-flash")
    call = turn.messages[1].parts
    assert call[0] == Thinking("", "CiQBcsjafFWq")
    assert isinstance(call[1], ToolCall)
    assert call[1].id == "call-0"
    assert turn.messages[2].parts == (ToolResult("call-0", (Text("15C"),)),)
    assert turn.thinking_budget == 2048
    body, _ = an.write_request(turn)
    assert body["messages"][1]["content"][0] == {
        "type": "thinking",
        "thinking": "",
        "signature": "CiQBcsjafFWq",
    }
    back, dropped = gm.write_request(an.read_request(enc(body)))
    assert dropped == []
    model_turn = back["contents"][1]["parts"]
    assert model_turn == [
        {
            "functionCall": {
                "id": "call-0",
                "name": "get_current_temperature",
                "args": {"location": "London"},
            },
            "thoughtSignature": "CiQBcsjafFWq",
        }
    ]
    assert back["contents"][2]["parts"][0]["functionResponse"]["name"] == "get_current_temperature"
    assert back["tools"][0]["functionDeclarations"][0]["parametersJsonSchema"]["required"] == [
        "location"
    ]


# A streamed answer in Gemini's documented shape (alt=sse, CRLF between events): thoughts, text in
# pieces, the usage in each piece, the finish reason in the last.
GEMINI_STREAM = b"".join(
    b"data: " + enc(chunk) + b"\r\n\r\n"
    for chunk in [
        {"candidates": [{"content": {"parts": [{"text": "**Weighing** the question", "thought": True}], "role": "model"}, "index": 0}], "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9}, "modelVersion": "gemini-2.5-flash", "responseId": "r1"},
        {"candidates": [{"content": {"parts": [{"text": "The sky is"}], "role": "model"}, "index": 0}], "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 3, "thoughtsTokenCount": 20, "totalTokenCount": 32}, "modelVersion": "gemini-2.5-flash", "responseId": "r1"},
        {"candidates": [{"content": {"parts": [{"text": " blue."}], "role": "model"}, "finishReason": "STOP", "index": 0}], "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 5, "cachedContentTokenCount": 4, "thoughtsTokenCount": 20, "totalTokenCount": 34}, "modelVersion": "gemini-2.5-flash", "responseId": "r1"},
    ]
)  # fmt: skip


def test_the_documented_gemini_stream_becomes_messages_events():
    decoder = gm.StreamDecoder()
    deltas = decoder.feed(GEMINI_STREAM) + decoder.close()
    assert [d for d in deltas if isinstance(d, TextDelta)] == [
        TextDelta(1, "The sky is"),
        TextDelta(1, " blue."),
    ]
    assert deltas[-2:] == [UsageDelta(TokenUsage(9, 25, 4, reasoning_tokens=20)), deltas[-1]]
    assert Finish("stop") in deltas
    answer = _collect(deltas)
    assert answer.parts == (Thinking("**Weighing** the question"), Text("The sky is blue."))
    message = an.read_answer(an.write_answer(answer))
    assert message.usage == TokenUsage(9, 25, 4)


def test_a_gemini_stream_cut_short_ends_with_an_error():
    decoder = gm.StreamDecoder()
    deltas = decoder.feed(GEMINI_STREAM.split(b"\r\n\r\n")[0] + b"\r\n\r\n") + decoder.close()
    assert isinstance(deltas[-1], StreamError)


def test_function_calls_arrive_whole_and_get_ids_when_gemini_gives_none():
    chunk = {"candidates": [{"content": {"parts": [{"functionCall": {"name": "f", "args": {"a": 1}}}, {"functionCall": {"name": "g", "args": {}}}], "role": "model"}, "finishReason": "STOP", "index": 0}], "responseId": "r9"}  # fmt: skip
    decoder = gm.StreamDecoder()
    deltas = decoder.feed(b"data: " + enc(chunk) + b"\n\n") + decoder.close()
    assert [d for d in deltas if isinstance(d, ToolCallStart)] == [
        ToolCallStart(0, "r9-0", "f"),
        ToolCallStart(1, "r9-1", "g"),
    ]
    assert Finish("tool_calls") in deltas
    answer = gm.read_answer(enc(chunk))
    assert [p.id for p in answer.parts if isinstance(p, ToolCall)] == ["r9-0", "r9-1"]
    assert answer.finish_reason == "tool_calls"


@pytest.mark.parametrize(
    ("reason", "finish"),
    [("STOP", "stop"), ("MAX_TOKENS", "length"), ("SAFETY", "content_filter"), ("RECITATION", "content_filter"), ("PROHIBITED_CONTENT", "content_filter"), ("MALFORMED_FUNCTION_CALL", "other"), ("OTHER", "other")],
)  # fmt: skip
def test_gemini_finish_reasons(reason, finish):
    body = {
        "candidates": [
            {"content": {"parts": [{"text": "x"}], "role": "model"}, "finishReason": reason}
        ]
    }
    assert gm.read_answer(enc(body)).finish_reason == finish


def test_usage_counts_tool_prompts_as_input_and_thoughts_as_output():
    body = {"candidates": [], "usageMetadata": {"promptTokenCount": 100, "toolUsePromptTokenCount": 7, "cachedContentTokenCount": 60, "candidatesTokenCount": 10, "thoughtsTokenCount": 30}, "promptFeedback": {"blockReason": "SAFETY"}}  # fmt: skip
    answer = gm.read_answer(enc(body))
    assert answer.usage == TokenUsage(107, 40, 60, reasoning_tokens=30)
    assert answer.finish_reason == "content_filter"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"safetySettings": [{"category": "HARM_CATEGORY_HATE_SPEECH", "threshold": "BLOCK_NONE"}]}, "safetySettings"),
        ({"cachedContent": "cachedContents/abc"}, "cachedContent"),
        ({"tools": [{"googleSearch": {}}]}, "tools.googleSearch"),
        ({"tools": [{"functionDeclarations": [{"name": "f", "behavior": "NON_BLOCKING"}]}]}, "functionDeclarations.behavior"),
        ({"generationConfig": {"topK": 3}}, "generationConfig.topK"),
        ({"generationConfig": {"candidateCount": 2}}, "generationConfig.candidateCount"),
        ({"generationConfig": {"responseMimeType": "application/json"}}, "generationConfig.responseMimeType"),
        ({"toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["a", "b"]}}}, "toolConfig.functionCallingConfig.allowedFunctionNames"),
    ],
)  # fmt: skip
def test_what_the_model_cannot_hold_is_named_when_read(change, field):
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}], **change}
    turn = gm.read_request(enc(body))
    assert field in turn.unsupported
    with pytest.raises(Untranslatable) as error:
        oa.write_request(turn)
    assert error.value.field == field


def test_a_tool_result_for_an_unknown_call_is_refused():
    turn = Turn(model="m", messages=(Message("user", (ToolResult("nope", (Text("x"),)),)),))
    with pytest.raises(Untranslatable) as error:
        gm.write_request(turn)
    assert error.value.field == "messages.tool_result.tool_use_id"
    with pytest.raises(MalformedInput):
        gm.read_request(
            enc(
                {
                    "contents": [
                        {
                            "role": "user",
                            "parts": [{"functionResponse": {"name": "f", "response": {}}}],
                        }
                    ]
                }
            )
        )


def test_structured_output_and_effort_map_to_generation_config():
    body, _ = gm.write_request(oa.read_request(enc({
        "model": "m", "messages": [{"role": "user", "content": "hi"}], "reasoning_effort": "low",
        "response_format": {"type": "json_schema", "json_schema": {"name": "r", "strict": True, "schema": {"type": "object"}}},
    })))  # fmt: skip
    assert body["generationConfig"] == {
        "responseMimeType": "application/json",
        "responseJsonSchema": {"type": "object"},
        "thinkingConfig": {"thinkingBudget": 2048, "includeThoughts": True},
    }
    off, _ = gm.write_request(Turn(model="m", messages=(), reasoning_effort="none"))
    assert off["generationConfig"]["thinkingConfig"]["thinkingBudget"] == 0


# -- the SDK ----------------------------------------------------------------------------------


def test_google_genai_parses_what_the_writers_send():
    answer = an.read_answer(enc({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
        "content": [{"type": "thinking", "thinking": "Hmm.", "signature": "c2ln"}, {"type": "text", "text": "Calling."}, {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}],
        "stop_reason": "tool_use", "usage": {"input_tokens": 5, "cache_read_input_tokens": 10, "output_tokens": 7},
    }))  # fmt: skip
    parsed = types.GenerateContentResponse.model_validate_json(gm.write_answer(answer))
    assert parsed.text == "Calling."
    assert parsed.function_calls[0].args == {"city": "Paris"}
    assert parsed.function_calls[0].id == "toolu_1"
    assert parsed.candidates[0].content.parts[0].thought is True
    assert parsed.candidates[0].finish_reason == types.FinishReason.STOP
    assert parsed.usage_metadata.prompt_token_count == 15
    assert parsed.usage_metadata.cached_content_token_count == 10

    sse = gm.StreamEncoder().encode_many(answer_deltas(answer))
    pieces = [
        types.GenerateContentResponse.model_validate_json(event[6:])
        for event in sse.split(b"\n\n")
        if event
    ]
    assert (
        "".join(
            p.text or ""
            for p in pieces
            if p.candidates[0].content.parts and not p.candidates[0].content.parts[0].thought
        )
        == "Calling."
    )
    assert pieces[-1].usage_metadata.total_token_count == 22

    request, _ = gm.write_request(an.read_request(enc({
        "model": "claude-x", "max_tokens": 100, "system": "Be brief.",
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"name": "f", "input_schema": {"type": "object"}}], "tool_choice": {"type": "any"},
    })))  # fmt: skip
    config = types.GenerateContentConfig.model_validate(
        {
            **request["generationConfig"],
            "tools": request["tools"],
            "tool_config": request["toolConfig"],
            "system_instruction": request["systemInstruction"],
        }
    )
    assert config.max_output_tokens == 100
    assert config.tools[0].function_declarations[0].parameters_json_schema == {"type": "object"}
    assert config.tool_config.function_calling_config.mode == types.FunctionCallingConfigMode.ANY
    contents = [types.Content.model_validate(c) for c in request["contents"]]
    assert contents[0].parts[0].text == "hi"


def test_a_signature_on_a_text_part_goes_back_on_that_part():
    # Gemini 3 signs the text of an answer without function calls on its (last) text part.
    answer = gm.read_answer(enc({
        "candidates": [{"content": {"role": "model", "parts": [{"text": "1+1 equals 2.", "thoughtSignature": "EjQKMgEM"}]}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 15, "candidatesTokenCount": 6, "totalTokenCount": 21},
        "modelVersion": "gemini-3-flash", "responseId": "Il0t",
    }))  # fmt: skip
    assert answer.parts == (Thinking("", "EjQKMgEM"), Text("1+1 equals 2."))
    said = msgspec.json.decode(an.write_answer(answer))["content"]  # what a Messages client got
    history = an.read_request(enc({
        "model": "gemini-3-flash", "max_tokens": 100,
        "messages": [
            {"role": "user", "content": "What is 1+1?"},
            {"role": "assistant", "content": said},
            {"role": "user", "content": "And 2+2?"},
        ],
    }))  # fmt: skip
    body, _ = gm.write_request(history)
    assert body["contents"][1] == {
        "role": "model",
        "parts": [{"text": "1+1 equals 2.", "thoughtSignature": "EjQKMgEM"}],
    }
