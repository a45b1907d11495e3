"""Whatever a client or upstream sends, the Gemini, Converse and Responses codecs answer with a
Turn, an Answer, deltas, or a ValueError naming the problem, never another error."""

from __future__ import annotations

import contextlib

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from asgi_llmguard.providers.translate import bedrock_converse as bc
from asgi_llmguard.providers.translate import gemini_generate as gm
from asgi_llmguard.providers.translate import openai_responses as rs
from asgi_llmguard.providers.translate.model import Answer, Text, ToolCall, answer_deltas
from asgi_llmguard.tokens import TokenUsage
from tests.providers.translate.test_bedrock import CONVERSE_STREAM, CONVERSE_TOOL_TURN
from tests.providers.translate.test_gemini import GEMINI_STREAM, GEMINI_TOOL_TURN
from tests.providers.translate.test_malformed import (
    SETTINGS,
    _event_documents,
    _mutated,
    _only_value_errors,
)
from tests.providers.translate.test_responses import CODEX_TURN

ANSWER = Answer(
    id="r",
    model="m",
    parts=(Text("a"), ToolCall("c", "f", '{"x":1}')),
    finish_reason="tool_calls",
    usage=TokenUsage(5, 3, 1, reasoning_tokens=1),
)


@pytest.mark.parametrize(
    ("read", "document"),
    [
        (gm.read_request, GEMINI_TOOL_TURN),
        (gm.read_answer, msgspec.json.decode(gm.write_answer(ANSWER))),
        (bc.read_request, CONVERSE_TOOL_TURN),
        (bc.read_answer, msgspec.json.decode(bc.write_answer(ANSWER))),
        (rs.read_request, CODEX_TURN),
        (rs.read_answer, msgspec.json.decode(rs.write_answer(ANSWER, created=1))),
    ],
)
def test_readers_refuse_malformed_bodies_with_value_errors(read, document):
    @SETTINGS
    @given(_mutated(document))
    def check(body):
        _only_value_errors(read, body)

    check()


@pytest.mark.parametrize(
    ("decoder", "stream"),
    [
        (gm.StreamDecoder, GEMINI_STREAM.replace(b"\r\n", b"\n")),
        (rs.StreamDecoder, rs.StreamEncoder(created=1).encode_many(answer_deltas(ANSWER))),
    ],
)
def test_decoders_refuse_malformed_events_with_value_errors(decoder, stream):
    events = _event_documents(stream)

    @SETTINGS
    @given(st.integers(0, len(events) - 1), st.data())
    def check(index, data):
        name, document = events[index]
        body = data.draw(_mutated(document))
        raw = (b"event: " + name + b"\n" if name else b"") + b"data: " + msgspec.json.encode(body)
        _only_value_errors(decoder().feed, raw + b"\n\n")

    check()


def test_the_converse_decoder_refuses_malformed_events_with_value_errors():
    @SETTINGS
    @given(st.integers(0, len(CONVERSE_STREAM) - 1), st.data())
    def check(index, data):
        kind, document = CONVERSE_STREAM[index]
        body = msgspec.json.encode(data.draw(_mutated(document)))
        with contextlib.suppress(ValueError):
            bc.StreamDecoder().feed_event(kind, body)

    check()
