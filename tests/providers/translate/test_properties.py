"""Properties of the translation layer: what one format expresses survives the trip through the
other, request and answer, whole and streamed in arbitrary pieces."""

from __future__ import annotations

import tracemalloc

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asgi_llmguard.providers.translate import anthropic_messages as an
from asgi_llmguard.providers.translate import openai_chat as oa
from asgi_llmguard.providers.translate.effort import effort_for_budget
from asgi_llmguard.providers.translate.model import (
    Answer,
    AnswerCollector,
    Message,
    MessageStart,
    PartStop,
    RedactedThinking,
    StreamError,
    Text,
    TextDelta,
    Thinking,
    ToolChoice,
    ToolResult,
    Turn,
    Untranslatable,
    answer_deltas,
)
from tests.providers.translate.strategies import answers, turns

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _without_empty_texts(parts: tuple) -> tuple:
    kept = tuple(p for p in parts if not (isinstance(p, Text) and not p.text))
    return kept if kept or not parts else parts[:1]


def _normal(turn: Turn) -> Turn:
    """The same request in one spelling: defaults made explicit, effort rather than budget,
    no empty texts beside other parts."""
    changes: dict = {
        "system": _without_empty_texts(turn.system),
        "messages": tuple(
            Message(
                m.role,
                _without_empty_texts(
                    tuple(
                        msgspec.structs.replace(p, content=_without_empty_texts(p.content))
                        if isinstance(p, ToolResult)
                        else p
                        for p in m.parts
                    )
                ),
            )
            for m in turn.messages
        ),
    }
    if turn.tools:
        if turn.tool_choice is None:
            changes["tool_choice"] = ToolChoice("auto")
        # With no calls allowed, or with the default, the flag says nothing.
        none = turn.tool_choice is not None and turn.tool_choice.mode == "none"
        if turn.parallel_tool_calls is True or none:
            changes["parallel_tool_calls"] = None
    if turn.structured_output is not None and turn.structured_output.strict is False:
        changes["structured_output"] = msgspec.structs.replace(turn.structured_output, strict=None)
    if turn.thinking_budget is not None:
        changes["reasoning_effort"] = effort_for_budget(turn.thinking_budget)
        changes["thinking_budget"] = None
    return msgspec.structs.replace(turn, **changes)


def _via_anthropic(turn: Turn) -> Turn:
    body, dropped = an.write_request(turn)
    assert dropped == []
    name = turn.structured_output.name if turn.structured_output else None
    return an.read_request(msgspec.json.encode(body), structured_tool=name)


@SETTINGS
@given(turns())
def test_a_chat_request_survives_the_trip_through_messages(turn):
    body, dropped = oa.write_request(turn)
    assert dropped == []
    assert oa.read_request(msgspec.json.encode(body)) == turn

    there = _via_anthropic(turn)
    assert _normal(there) == _normal(turn)
    back, dropped = oa.write_request(there)
    assert dropped == []
    assert _normal(oa.read_request(msgspec.json.encode(back))) == _normal(turn)


@SETTINGS
@given(turns())
def test_a_messages_request_survives_the_trip_through_chat(turn):
    first = _via_anthropic(turn)  # a request as a Messages client would send it
    body, _ = oa.write_request(first)
    again = _via_anthropic(oa.read_request(msgspec.json.encode(body)))
    assert _normal(again) == _normal(first)


def _feed(decoder, data: bytes, cuts: list[int]) -> list:
    out = []
    start = 0
    for cut in sorted(cuts):
        out += decoder.feed(data[start:cut])
        start = cut
    out += decoder.feed(data[start:])
    out += decoder.close()
    assert not any(isinstance(d, StreamError) for d in out), out
    return out


def _collect(deltas) -> Answer:
    collector = AnswerCollector()
    for delta in deltas:
        collector.add(delta)
    return collector.answer()


def _cuts(data: st.DataObject, size: int) -> list[int]:
    return data.draw(st.lists(st.integers(0, size), max_size=12))


def _as_chat_sees_it(answer: Answer) -> Answer:
    """What Chat Completions can carry of a Messages answer."""
    usage = answer.usage
    if usage is not None:
        usage = msgspec.structs.replace(usage, cache_creation_1h_tokens=0)
    parts = tuple(  # no signatures, no redacted thinking
        Thinking(p.text) if isinstance(p, Thinking) else p
        for p in answer.parts
        if not isinstance(p, RedactedThinking)
    )
    return msgspec.structs.replace(answer, parts=parts, usage=usage, stop_sequence=None)


def _as_messages_sees_it(answer: Answer) -> Answer:
    """What Messages can carry of a Chat Completions answer: reasoning tokens stay in the
    output tokens but have no field of their own."""
    usage = answer.usage
    if usage is not None:
        usage = msgspec.structs.replace(usage, reasoning_tokens=0)
    return msgspec.structs.replace(answer, usage=usage)


@SETTINGS
@given(answers(anthropic=False), st.data())
def test_a_chat_stream_relayed_as_messages_keeps_the_answer(answer, data):
    sse = oa.StreamEncoder(created=1).encode_many(answer_deltas(answer))
    deltas = _feed(oa.StreamDecoder(), sse, _cuts(data, len(sse)))
    assert _collect(deltas) == answer
    relayed = an.StreamEncoder().encode_many(deltas)
    back = _feed(an.StreamDecoder(), relayed, _cuts(data, len(relayed)))
    assert _collect(back) == _as_messages_sees_it(answer)


@SETTINGS
@given(answers(anthropic=True), st.data())
def test_a_messages_stream_relayed_as_chat_keeps_the_answer(answer, data):
    sse = an.StreamEncoder().encode_many(answer_deltas(answer))
    deltas = _feed(an.StreamDecoder(), sse, _cuts(data, len(sse)))
    assert _collect(deltas) == answer
    relayed = oa.StreamEncoder(created=1).encode_many(deltas)
    back = _feed(oa.StreamDecoder(), relayed, _cuts(data, len(relayed)))
    assert _collect(back) == _as_chat_sees_it(answer)


@SETTINGS
@given(answers(anthropic=False))
def test_a_chat_answer_written_as_messages_keeps_the_answer(answer):
    assert oa.read_answer(oa.write_answer(answer)) == answer
    there = an.read_answer(an.write_answer(answer))
    assert there == _as_messages_sees_it(answer)


@SETTINGS
@given(answers(anthropic=True))
def test_a_messages_answer_written_as_chat_keeps_the_answer(answer):
    assert an.read_answer(an.write_answer(answer)) == answer
    assert oa.read_answer(oa.write_answer(answer)) == _as_chat_sees_it(answer)


def _retained(decoder_type, encoder, events: int) -> tuple[int, int]:
    """Bytes the decoder holds after ``events`` text events, and the most it held unfinished."""
    body = encoder.encode_many(
        [MessageStart("m", "x"), *[TextDelta(0, "tok")] * events, PartStop(0)]
    )
    tracemalloc.start()
    decoder = decoder_type()
    before = tracemalloc.get_traced_memory()[0]
    most = 0
    for start in range(0, len(body), 997):
        decoder.feed(body[start : start + 997])
        most = max(most, decoder._splitter.pending)
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return held, most


def test_decoders_hold_no_more_than_the_unfinished_event():
    for decoder_type, encoder in (
        (oa.StreamDecoder, oa.StreamEncoder(created=1)),
        (an.StreamDecoder, an.StreamEncoder()),
    ):
        small, most_small = _retained(decoder_type, encoder, 1_000)
        large, most_large = _retained(decoder_type, encoder, 50_000)
        assert most_small < 997
        assert most_large < 997
        # 50x the events, the same memory (allowing allocator noise)
        assert large < small + 4096, (decoder_type, small, large)


@st.composite
def _messages_only(draw: st.DrawFn) -> tuple[Turn, set[str]]:
    """A Messages request with what Chat Completions cannot carry (signed thinking, tool results
    marked as errors), and the fields that names."""
    turn = draw(turns())
    present: set[str] = set()
    messages = []
    for message in turn.messages:
        parts = list(message.parts)
        if message.role == "assistant" and draw(st.booleans()):
            parts.insert(0, Thinking(draw(st.text(max_size=20)), draw(st.text("abc", min_size=1))))
            present.add("messages.thinking")
        for i, part in enumerate(parts):
            if isinstance(part, ToolResult) and draw(st.booleans()):
                parts[i] = msgspec.structs.replace(part, is_error=True)
                present.add("messages.tool_result.is_error")
        messages.append(Message(message.role, tuple(parts)))
    return msgspec.structs.replace(turn, messages=tuple(messages)), present


@SETTINGS
@given(_messages_only())
def test_what_chat_cannot_carry_is_refused_or_dropped_by_name(case):
    turn, present = case
    drop = {"messages.thinking", "messages.tool_result.is_error"}
    if present:
        with pytest.raises(Untranslatable) as error:
            oa.write_request(turn)
        assert error.value.field in present
    body, dropped = oa.write_request(turn, drop=drop)
    assert set(dropped) == present
    plain = tuple(
        Message(
            m.role,
            tuple(
                msgspec.structs.replace(p, is_error=False) if isinstance(p, ToolResult) else p
                for p in m.parts
                if not isinstance(p, Thinking)
            ),
        )
        for m in turn.messages
    )
    assert oa.read_request(msgspec.json.encode(body)) == msgspec.structs.replace(
        turn, messages=plain
    )
