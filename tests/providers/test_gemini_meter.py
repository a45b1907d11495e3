"""Gemini's usage readers, and the streamed-JSON-array meter under any split of the bytes.

The streams are built here from Google's documented wire format (``GenerateContentResponse``
pieces with ``usageMetadata``), not from the fake or the gateway's own code.
"""

from __future__ import annotations

import asyncio
import itertools

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asgi_llmguard.context import RequestContext
from asgi_llmguard.middleware._usage_meter import Meter
from asgi_llmguard.providers.gemini_usage import GenerateStreamMeter, usage_from_json
from asgi_llmguard.providers.jsonarray import HeldArray, JsonArraySplitter
from asgi_llmguard.routes import classify, classify_google
from asgi_llmguard.tokens import TokenUsage

STREAM = classify("POST", "/v1beta/models/gemini-2.5-pro:streamGenerateContent").endpoint


def piece(text: str, usage: dict[str, int], finish: str | None = None) -> dict:
    candidate: dict = {"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    return {"candidates": [candidate], "usageMetadata": usage, "modelVersion": "gemini-2.5-pro"}


def answer(texts: list[str]) -> list[dict]:
    """A streamed answer whose pieces carry the counts so far; the last one's are final."""
    pieces = []
    for i, text in enumerate(texts, start=1):
        usage = {"promptTokenCount": 1000, "candidatesTokenCount": i, "totalTokenCount": 1000 + i}
        if i == len(texts):
            usage |= {
                "cachedContentTokenCount": 600,
                "thoughtsTokenCount": 40,
                "toolUsePromptTokenCount": 7,
                "totalTokenCount": 1000 + i + 40 + 7,
            }
        pieces.append(piece(text, usage, "STOP" if i == len(texts) else None))
    return pieces


def final_usage(count: int) -> TokenUsage:
    return TokenUsage(
        input_tokens=1007,
        output_tokens=count + 40,
        cached_input_tokens=600,
        reasoning_tokens=40,
    )


def test_usage_metadata_of_a_whole_answer():
    body = orjson.dumps(answer(["only"])[0])
    usage, model, calls = usage_from_json(body)
    # toolUsePromptTokenCount is prompt; thoughtsTokenCount is output, recorded as reasoning.
    assert usage == final_usage(1)
    assert (model, calls) == ("gemini-2.5-pro", {})


def as_json_array(pieces: list[dict]) -> bytes:
    """As Google writes it: ``[{...}`` then ``\\n,\\r\\n{...}`` per piece, then ``\\n]``."""
    encoded = [orjson.dumps(p, option=orjson.OPT_INDENT_2) for p in pieces]
    return b"[" + b"\n,\r\n".join(encoded) + b"\n]"


def as_sse(pieces: list[dict]) -> bytes:
    return b"".join(b"data: " + orjson.dumps(p) + b"\r\n\r\n" for p in pieces)


_TEXT = st.text(alphabet=st.sampled_from(list('ab {}[]",\\:\n\té€😀')), min_size=0, max_size=12)


async def _through_meter(data: bytes, cuts: list[int], content_type: bytes):
    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    ctx = RequestContext("POST", "/v1beta/models/gemini-2.5-pro:streamGenerateContent")
    meter = Meter(ctx, STREAM, send, GenerateStreamMeter(), False)
    await meter.send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", content_type)]}
    )
    bounds = [0, *sorted(set(cuts)), len(data)]
    for i, (start, end) in enumerate(itertools.pairwise(bounds)):
        last = i == len(bounds) - 2
        await meter.send(
            {"type": "http.response.body", "body": data[start:end], "more_body": not last}
        )
    relayed = b"".join(m["body"] for m in sent if m["type"] == "http.response.body")
    return meter, relayed


@settings(max_examples=200, deadline=None)
@given(
    texts=st.lists(_TEXT, min_size=1, max_size=6),
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=12),
    sse=st.booleans(),
)
def test_any_split_gives_the_same_usage_and_the_same_bytes(texts, cuts, sse):
    pieces = answer(texts)
    data = as_sse(pieces) if sse else as_json_array(pieces)
    cuts = [c % (len(data) + 1) for c in cuts]
    content_type = b"text/event-stream" if sse else b"application/json; charset=UTF-8"
    meter, relayed = asyncio.run(_through_meter(data, cuts, content_type))
    assert relayed == data  # relayed byte for byte
    usage, model, _ = meter.result()
    assert usage == final_usage(len(texts))
    assert model == "gemini-2.5-pro"
    assert meter.sse
    assert not meter.truncated
    assert not meter.stream_error


@settings(max_examples=100, deadline=None)
@given(
    texts=st.lists(_TEXT, min_size=1, max_size=5),
    cuts=st.lists(st.integers(min_value=0, max_value=3000), max_size=10),
)
def test_the_splitter_hands_out_each_element_whole(texts, cuts):
    pieces = answer(texts)
    data = as_json_array(pieces)
    bounds = [0, *sorted({c % (len(data) + 1) for c in cuts}), len(data)]
    splitter = JsonArraySplitter()
    elements = []
    for start, end in itertools.pairwise(bounds):
        elements += splitter.feed(data[start:end])
    assert [orjson.loads(e) for e in elements] == pieces
    assert splitter.ended
    assert splitter.pending == 0


_ERROR = b'{"error":{"code":500,"message":"broken","status":"INTERNAL"}}'


@settings(max_examples=200, deadline=None)
@given(
    texts=st.lists(_TEXT, min_size=1, max_size=5),
    cuts=st.lists(st.integers(min_value=0, max_value=3000), max_size=10),
    stop=st.integers(min_value=0, max_value=3000),
)
def test_an_array_broken_anywhere_is_ended_with_a_last_error_element(texts, cuts, stop):
    """Relayed whole elements at a time, a stream cut at any byte still ends as a well-formed
    array: the elements that arrived whole, then the error."""
    pieces = answer(texts)
    data = as_json_array(pieces)
    stop %= len(data)  # the upstream breaks before the closing bracket
    bounds = [0, *sorted({c % (stop + 1) for c in cuts}), stop]
    held = HeldArray()
    relayed = b""
    for start, end in itertools.pairwise(bounds):
        relayed += held.feed(data[start:end])
    assert data.startswith(relayed)
    end = held.terminal(_ERROR)
    assert end is not None
    *whole, last = orjson.loads(relayed + end)
    assert whole == pieces[: len(whole)]
    assert len(whole) == len(JsonArraySplitter().feed(data[:stop]))
    assert last == orjson.loads(_ERROR)
    assert held.terminal(_ERROR) is None  # ended once


def test_a_whole_array_is_relayed_unchanged_and_an_oversized_element_is_not_held():
    pieces = answer(["one", "two"])
    data = as_json_array(pieces)
    held = HeldArray()
    relayed = b"".join(held.feed(data[i : i + 7]) for i in range(0, len(data), 7))
    assert relayed + held.flush() == data
    assert held.terminal(_ERROR) is None  # the array ended: nothing to add
    small = HeldArray(limit=16)
    sent = small.feed(data[:40])
    assert sent == data[:40]  # past the limit, bytes pass as they come
    assert small.terminal(_ERROR) is None  # half an element went out: no well-formed end


def test_memory_is_bounded_by_the_largest_element():
    big = piece("x" * 5000, {"promptTokenCount": 1})
    small = piece("y", {"promptTokenCount": 2, "candidatesTokenCount": 1})
    data = as_json_array([big, small])
    splitter = JsonArraySplitter(max_event=1000)
    elements = []
    for i in range(0, len(data), 100):
        elements += splitter.feed(data[i : i + 100])
        assert splitter.pending <= 1100
    assert [orjson.loads(e) for e in elements] == [small]
    assert splitter.oversized == 1


def test_an_error_piece_and_a_cut_stream():
    meter = GenerateStreamMeter()
    meter.event(b'data: {"error": {"code": 500, "message": "x", "status": "INTERNAL"}}')
    assert meter.error
    cut = GenerateStreamMeter()
    cut.event(orjson.dumps(answer(["a", "b"])[0]))
    assert not cut.finished
    assert cut.usage == TokenUsage(input_tokens=1000, output_tokens=1)


@pytest.mark.parametrize(
    ("path", "api", "operation", "model"),
    [
        (
            "/v1beta/models/gemini-2.5-pro:generateContent",
            "gemini",
            "generateContent",
            "gemini-2.5-pro",
        ),
        ("/v1/models/gemini-2.0-flash:countTokens", "gemini", "countTokens", "gemini-2.0-flash"),
        (
            "/v1beta/models/text-embedding-004:batchEmbedContents",
            "gemini",
            "batchEmbedContents",
            "text-embedding-004",
        ),
        ("/v1/chat/completions", "openai", "chat.completions", None),
    ],
)
def test_the_model_comes_from_the_path(path, api, operation, model):
    route = classify("POST", path)
    assert (route.endpoint.api, route.endpoint.operation, route.model) == (api, operation, model)
    assert route.endpoint.dialect.name == ("google" if api == "gemini" else "openai")


def test_a_thinking_suffix_stays_on_the_model_for_routing_to_remove():
    route = classify("POST", "/v1beta/models/gemini-2.5-pro(high):generateContent")
    assert route.model == "gemini-2.5-pro(high)"


def test_openai_model_ids_with_colons_stay_openai():
    route = classify("GET", "/v1/models/ft:gpt-4o-mini:org::abc123")
    assert (route.endpoint.api, route.endpoint.operation) == ("openai", "models.retrieve")
    assert classify_google("GET", "/v1/models").endpoint.api == "gemini"
    assert classify("GET", "/v1/models").endpoint.api == "openai"
