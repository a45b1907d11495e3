# ruff: noqa: E501  (wire examples are kept one object per line)
"""Whatever a client or upstream sends, the codecs answer with a Turn, an Answer, deltas, or a
ValueError naming the problem (``MalformedInput`` or ``Untranslatable``), never another error."""

from __future__ import annotations

import contextlib

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asgi_llmguard.providers.translate import anthropic_messages as an
from asgi_llmguard.providers.translate import openai_chat as oa
from tests.providers.translate.test_examples import (
    ANTHROPIC_TOOL_STREAM,
    CLAUDE_CODE_TURN,
    OPENAI_PARALLEL_STREAM,
    STRUCTURED,
)
from tests.providers.translate.test_sdks import CHAT_ANSWER

json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)
ANTHROPIC_ANSWER = {
    "id": "m", "type": "message", "role": "assistant", "model": "c",
    "content": [{"type": "text", "text": "a"}, {"type": "tool_use", "id": "t", "name": "f", "input": {}}],
    "stop_reason": "tool_use", "usage": {"input_tokens": 1, "output_tokens": 1},
}  # fmt: skip
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _paths(item, (*prefix, i))


def _replace(value, path, new):
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: _replace(value[head], rest, new)}
    copy = list(value)
    copy[head] = _replace(copy[head], rest, new)
    return copy


def _mutated(document):
    paths = list(_paths(document))
    return st.tuples(st.sampled_from(paths), json).map(lambda c: _replace(document, c[0], c[1]))


def _only_value_errors(fn, body):
    with contextlib.suppress(ValueError):
        fn(msgspec.json.encode(body))


@pytest.mark.parametrize(
    ("read", "document"),
    [
        (oa.read_request, STRUCTURED),
        (an.read_request, CLAUDE_CODE_TURN),
        (oa.read_answer, CHAT_ANSWER),
        (an.read_answer, ANTHROPIC_ANSWER),
    ],
)
def test_readers_refuse_malformed_bodies_with_value_errors(read, document):
    @SETTINGS
    @given(_mutated(document))
    def check(body):
        _only_value_errors(read, body)

    check()


def _event_documents(stream: bytes) -> list[tuple[bytes | None, object]]:
    out = []
    for block in stream.split(b"\n\n"):
        lines = dict(line.split(b": ", 1) for line in block.split(b"\n") if b": " in line)
        if lines.get(b"data", b"").startswith(b"{"):
            out.append((lines.get(b"event"), msgspec.json.decode(lines[b"data"])))
    return out


@pytest.mark.parametrize(
    ("decoder", "stream"),
    [(oa.StreamDecoder, OPENAI_PARALLEL_STREAM), (an.StreamDecoder, ANTHROPIC_TOOL_STREAM)],
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
