"""The event-stream meter: Bedrock's binary frames, split anywhere, metered exactly.

The streams are the fake Bedrock's (served by uvicorn, read with httpx), so the frames were made
by an encoder the meter shares no code with; botocore's own parser judges the terminal frame.
"""

from __future__ import annotations

import base64
import functools
import itertools
import struct
import zlib

import botocore.session
import httpx
import orjson
import pytest
from botocore.eventstream import EventStream, EventStreamBuffer
from botocore.exceptions import EventStreamError
from botocore.parsers import EventStreamJSONParser
from hypothesis import given, settings
from hypothesis import strategies as st

from asgi_llmguard.providers.anthropic_usage import usage_from_json as anthropic_usage
from asgi_llmguard.providers.bedrock_usage import (
    ConverseStreamMeter,
    InvokeStreamMeter,
    usage_from_converse_json,
)
from asgi_llmguard.providers.eventstream import (
    FrameSplitter,
    WholeFrames,
    decode_frame,
    error_in_first_frame,
    exception_frame,
    first_frame_end,
)
from asgi_llmguard.testing import FakeBedrock, serve
from asgi_llmguard.tokens import TokenUsage

MODEL = "anthropic.claude-3-5-haiku-20241022-v1%3A0"
CONVERSE = {"messages": [{"role": "user", "content": [{"text": "one two three"}]}]}
CLAUDE = {
    "anthropic_version": "bedrock-2023-05-31",
    "max_tokens": 100,
    "messages": [{"role": "user", "content": "four words right here"}],
}
KNOBS = {"x-fake-chunks": "7", "x-fake-cached-tokens": "3", "x-fake-cache-write-5m": "2"}
#: Converse: 3 uncached prompt words, 3 read from the cache, 2 written to it; 7 chunks out.
CONVERSE_USAGE = TokenUsage(
    input_tokens=8, output_tokens=7, cached_input_tokens=3, cache_creation_tokens=2
)
#: Claude: 4 prompt words, 2 written to the cache (its fake reports no cache reads), 7 out.
CLAUDE_USAGE = TokenUsage(
    input_tokens=6, output_tokens=7, cache_creation_tokens=2, service_tier="standard"
)


@functools.cache
def _streams() -> dict[str, bytes]:
    """Real answers of the fake Bedrock, fetched once over a socket."""
    fake = FakeBedrock()
    out = {}
    with serve(fake) as upstream, httpx.Client(base_url=upstream.url) as client:
        for name, path, body, headers in (
            ("converse", "converse-stream", CONVERSE, KNOBS),
            ("invoke", "invoke-with-response-stream", CLAUDE, KNOBS),
            (
                "throttled",
                "converse-stream",
                CONVERSE,
                {"x-fake-error": "ThrottlingException", "x-fake-exception-after-chunks": "0"},
            ),
            ("converse-json", "converse", CONVERSE, KNOBS),
            ("invoke-json", "invoke", CLAUDE, KNOBS),
        ):
            response = client.post(f"/model/{MODEL}/{path}", json=body, headers=headers)
            assert response.status_code == 200, response.text
            out[name] = response.content
    return out


def _frames(data: bytes) -> list[bytes]:
    frames, pos = [], 0
    while pos < len(data):
        (total,) = struct.unpack_from(">I", data, pos)
        frames.append(data[pos : pos + total])
        pos += total
    return frames


def _meter_all(meter: ConverseStreamMeter | InvokeStreamMeter, data: bytes, cuts: list[int]):
    splitter = FrameSplitter()
    seen = []
    bounds = [0, *sorted(cuts), len(data)]
    for start, end in itertools.pairwise(bounds):
        for frame in splitter.feed(data[start:end]):
            seen.append(frame)
            meter.event(frame)
    seen += splitter.close()
    return splitter, seen


def _cuts(name: str) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(0, len(_streams()[name])), max_size=40)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_converse_stream_usage_is_exact_for_any_split(data: st.DataObject) -> None:
    raw = _streams()["converse"]
    meter = ConverseStreamMeter()
    splitter, frames = _meter_all(meter, raw, data.draw(_cuts("converse")))
    assert meter.usage == CONVERSE_USAGE
    assert meter.finished
    assert not meter.error
    assert not meter.estimated
    assert meter.deltas == 7
    # The meter only observes: the frames handed out are the stream's bytes, all of them.
    assert b"".join(frames) == raw
    assert splitter.pending == 0
    assert not splitter.broken
    assert splitter.corrupt == 0


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_invoke_stream_usage_is_exact_for_any_split(data: st.DataObject) -> None:
    raw = _streams()["invoke"]
    meter = InvokeStreamMeter()
    _, frames = _meter_all(meter, raw, data.draw(_cuts("invoke")))
    assert meter.usage == CLAUDE_USAGE
    assert meter.finished
    assert not meter.error
    assert not meter.estimated
    assert meter.model == "anthropic.claude-3-5-haiku-20241022-v1:0"
    assert meter.deltas == 7
    assert b"".join(frames) == raw


usage_numbers = st.integers(0, 2**31 - 1)


@settings(max_examples=200, deadline=None)
@given(
    numbers=st.tuples(usage_numbers, usage_numbers, usage_numbers, usage_numbers),
    texts=st.lists(st.text(max_size=300), max_size=20),
    cached=st.booleans(),
    data=st.data(),
)
def test_any_converse_usage_any_text_any_split(
    numbers: tuple[int, int, int, int], texts: list[str], cached: bool, data: st.DataObject
) -> None:
    """Frames built by the fake's encoder, with any numbers and any (unicode) text."""
    from asgi_llmguard.testing._eventstream import event

    read, write, inp, out = numbers
    usage = {"inputTokens": inp, "outputTokens": out, "totalTokens": inp + out + read + write}
    if cached:
        usage |= {"cacheReadInputTokens": read, "cacheWriteInputTokens": write}
    raw = b"".join(
        [
            event("messageStart", {"role": "assistant"}),
            *(event("contentBlockDelta", {"delta": {"text": t}, "p": "x" * len(t)}) for t in texts),
            event("messageStop", {"stopReason": "end_turn"}),
            event("metadata", {"usage": usage, "metrics": {"latencyMs": 1}}),
        ]
    )
    meter = ConverseStreamMeter()
    _, frames = _meter_all(meter, raw, data.draw(st.lists(st.integers(0, len(raw)), max_size=30)))
    read, write = (read, write) if cached else (0, 0)
    assert meter.usage == TokenUsage(
        input_tokens=inp + read + write,
        output_tokens=out,
        cached_input_tokens=read,
        cache_creation_tokens=write,
    )
    assert meter.deltas == len(texts)
    assert b"".join(frames) == raw


def _without(raw: bytes, anthropic_type: str) -> bytes:
    kept = []
    for frame in _frames(raw):
        decoded = decode_frame(frame)
        assert decoded is not None
        inner = orjson.loads(base64.b64decode(orjson.loads(decoded.payload)["bytes"]))
        if inner["type"] != anthropic_type:
            kept.append(frame)
    return b"".join(kept)


def test_invoke_stream_falls_back_to_bedrock_invocation_metrics() -> None:
    """Without ``message_delta``, Bedrock's ``amazon-bedrock-invocationMetrics`` count."""
    meter = InvokeStreamMeter()
    _meter_all(meter, _without(_streams()["invoke"], "message_delta"), [])
    assert meter.usage == CLAUDE_USAGE
    assert not meter.estimated


def test_invoke_stream_cut_before_its_counts_is_estimated() -> None:
    raw = _without(_without(_streams()["invoke"], "message_delta"), "message_stop")
    meter = InvokeStreamMeter()
    _meter_all(meter, raw, [])
    assert meter.estimated
    assert not meter.finished
    # The Messages meter's estimate: at least one token per delta.
    assert meter.usage is not None
    assert meter.usage.output_tokens >= 7


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_truncated_stream_gives_no_usage_and_holds_one_frame_at_most(data: st.DataObject) -> None:
    raw = _streams()["converse"]
    frames = _frames(raw)
    end = data.draw(st.integers(0, len(raw) - 1))  # anywhere before the end of the last frame
    meter = ConverseStreamMeter()
    splitter, seen = _meter_all(meter, raw[:end], data.draw(st.lists(st.integers(0, end))))
    assert meter.usage is None
    assert not meter.finished
    assert splitter.pending <= max(len(f) for f in frames)
    assert b"".join(seen) == raw[: len(b"".join(seen))]


def test_a_frame_whose_message_crc_fails_is_dropped_and_the_rest_read() -> None:
    frames = _frames(_streams()["converse"])
    damaged = bytearray(frames[1])  # the first contentBlockDelta
    damaged[-10] ^= 0xFF
    raw = b"".join([frames[0], bytes(damaged), *frames[2:]])
    for cuts in ([], list(range(len(raw)))):
        meter = ConverseStreamMeter()
        splitter, _ = _meter_all(meter, raw, cuts)
        assert splitter.corrupt == 1
        assert not splitter.broken
        assert meter.deltas == 6
        assert meter.usage == CONVERSE_USAGE


def test_a_prelude_whose_crc_fails_stops_the_splitter() -> None:
    frames = _frames(_streams()["converse"])
    damaged = bytearray(frames[2])
    damaged[1] ^= 0x01  # the total length
    raw = b"".join([frames[0], frames[1], bytes(damaged), *frames[3:]])
    meter = ConverseStreamMeter()
    splitter, seen = _meter_all(meter, raw, [5, 100])
    assert splitter.broken
    assert splitter.pending == 0
    assert seen == frames[:2]
    assert meter.usage is None
    assert splitter.feed(frames[-1]) == []


def _prelude(total: int, headers: int = 0) -> bytes:
    head = struct.pack(">II", total, headers)
    return head + struct.pack(">I", zlib.crc32(head))


def test_absurd_frame_lengths_are_skipped_without_being_held() -> None:
    frames = _frames(_streams()["converse"])
    splitter = FrameSplitter(max_frame=1 << 16)
    huge = 1 << 20
    assert splitter.feed(frames[0] + _prelude(huge)) == [frames[0]]
    for _ in range(15):
        assert splitter.feed(b"\0" * (1 << 16)) == []
        assert splitter.pending == 0
    # The oversized frame's last bytes, then the stream goes on.
    rest = huge - 12 - 15 * (1 << 16)
    assert splitter.feed(b"\0" * rest + frames[1] + frames[2][:5]) == [frames[1]]
    assert splitter.oversized == 1
    assert not splitter.broken
    assert splitter.feed(frames[2][5:]) == [frames[2]]


def test_a_length_shorter_than_a_frame_breaks_the_stream() -> None:
    splitter = FrameSplitter()
    assert splitter.feed(_prelude(8) + b"\0" * 40) == []
    assert splitter.broken


@settings(max_examples=300, deadline=None)
@given(garbage=st.binary(max_size=4096), cuts=st.lists(st.integers(0, 4096), max_size=10))
def test_garbage_never_raises(garbage: bytes, cuts: list[int]) -> None:
    for meter in (ConverseStreamMeter(), InvokeStreamMeter()):
        splitter, _ = _meter_all(meter, garbage, [c for c in cuts if c <= len(garbage)])
        assert splitter.pending <= len(garbage)
        assert decode_frame(garbage) is None or len(garbage) >= 16


def test_exception_frames_are_errors_and_their_status_is_known() -> None:
    raw = _streams()["throttled"]
    frames = _frames(raw)
    meter = ConverseStreamMeter()
    _meter_all(meter, raw, [])
    assert meter.error
    assert meter.exception == "throttlingException"
    assert not meter.finished
    assert meter.usage is None
    # The first frame held: messageStart is not an error; the exception right after it is.
    assert first_frame_end(raw[:11]) == -1
    assert first_frame_end(raw[: len(frames[0]) - 1]) == -1
    assert first_frame_end(raw) == len(frames[0])
    assert error_in_first_frame(frames[0]) is None
    assert error_in_first_frame(frames[1]) == 429
    assert (
        error_in_first_frame(exception_frame(exception_type="serviceUnavailableException")) == 503
    )
    assert error_in_first_frame(exception_frame()) == 500
    assert first_frame_end(b"not an event stream at all") == -1


class _Raw:
    def __init__(self, data: bytes) -> None:
        self._data = data

    def stream(self):  # what botocore's EventStream reads
        yield from (self._data[i : i + 7] for i in range(0, len(self._data), 7))

    def close(self) -> None:
        pass


def test_the_terminal_exception_frame_is_raised_by_botocore() -> None:
    frame = exception_frame("The upstream broke the stream.")
    parsed = EventStreamBuffer()
    parsed.add_data(frame)
    (message,) = list(parsed)
    assert message.headers == {
        ":exception-type": "internalServerException",
        ":content-type": "application/json",
        ":message-type": "exception",
    }
    assert orjson.loads(message.payload) == {"message": "The upstream broke the stream."}

    # A ConverseStream answer cut after two frames, ended with the frame: the SDK's error.
    session = botocore.session.get_session()
    model = session.get_service_model("bedrock-runtime")
    operation = model.operation_model("ConverseStream")
    shape = operation.output_shape.members["stream"]
    raw = b"".join(_frames(_streams()["converse"])[:2]) + frame
    events = EventStream(_Raw(raw), shape, EventStreamJSONParser(), "ConverseStream")
    received: list[dict] = []

    def read_all() -> None:
        for event in events:
            received.append(event)

    with pytest.raises(EventStreamError) as caught:
        read_all()
    assert received == [
        {"messageStart": {"role": "assistant"}},
        {"contentBlockDelta": {"delta": {"text": "Hello"}, "contentBlockIndex": 0}},
    ]
    assert caught.value.response["Error"] == {
        "Code": "internalServerException",
        "Message": "The upstream broke the stream.",
    }


def test_json_answers() -> None:
    usage, model, calls = usage_from_converse_json(_streams()["converse-json"])
    assert usage == CONVERSE_USAGE
    assert model is None
    assert calls == {}
    assert usage_from_converse_json(b"{not json") == (None, None, {})
    # InvokeModel with Claude answers Anthropic's JSON: its reader applies as it is.
    usage, model, _ = anthropic_usage(_streams()["invoke-json"])
    assert usage == CLAUDE_USAGE
    assert model == "anthropic.claude-3-5-haiku-20241022-v1:0"


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_whole_frames_cuts_any_split_at_frame_ends(data: st.DataObject) -> None:
    raw = _streams()["invoke"]
    ends = set(itertools.accumulate(len(f) for f in _frames(raw)))
    cuts = data.draw(_cuts("invoke"))
    limit = data.draw(st.sampled_from([1 << 20, 64]))  # 64: the longer frames pass as they come
    whole = WholeFrames(limit)
    out = b""
    for start, end in itertools.pairwise([0, *sorted(cuts), len(raw)]):
        out += whole.feed(raw[start:end])
        if whole.aligned:
            assert len(out) in ends | {0}
            assert len(out) + whole.pending == end
    assert out == raw
    assert whole.pending == 0
