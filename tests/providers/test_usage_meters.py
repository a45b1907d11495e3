"""Usage extraction from the providers' wire formats, JSON and streamed, split every way."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from asgi_llmguard.providers.metering import stream_meter, usage_from_json
from asgi_llmguard.providers.sse import EventSplitter
from asgi_llmguard.routes import classify
from asgi_llmguard.tokens import TokenUsage

CHAT = classify("POST", "/v1/chat/completions").endpoint
RESPONSES = classify("POST", "/v1/responses").endpoint
MESSAGES = classify("POST", "/v1/messages").endpoint
EMBEDDINGS = classify("POST", "/v1/embeddings").endpoint


def _sse(*payloads: object, named: bool = False) -> bytes:
    out = b""
    for p in payloads:
        if isinstance(p, tuple):
            name, data = p
            out += b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"
        elif p == "[DONE]":
            out += b"data: [DONE]\n\n"
        else:
            out += b"data: " + orjson.dumps(p) + b"\n\n"
    return out


def _chunk(content: str | None, *, usage: object = None, choices: bool = True) -> dict:
    body: dict = {"id": "c1", "object": "chat.completion.chunk", "model": "gpt-4o-2024-08-06"}
    body["choices"] = (
        [{"index": 0, "delta": {"content": content} if content is not None else {}}]
        if choices
        else []
    )
    body["usage"] = usage
    return body


OPENAI_USAGE = {
    "prompt_tokens": 11,
    "completion_tokens": 7,
    "total_tokens": 18,
    "prompt_tokens_details": {"cached_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 2},
}
CHAT_STREAM = _sse(
    _chunk(""),
    _chunk("Héllo"),
    _chunk(" wörld ☕"),
    _chunk(None),
    _chunk(None, usage=OPENAI_USAGE, choices=False),
    "[DONE]",
)
ANTHROPIC_STREAM = _sse(
    (
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": "claude-sonnet-4-6",
                "content": [],
                "usage": {
                    "input_tokens": 5,
                    "cache_read_input_tokens": 100,
                    "cache_creation_input_tokens": 20,
                    "output_tokens": 1,
                },
            },
        },
    ),
    ("ping", {"type": "ping"}),
    ("content_block_delta", {"type": "content_block_delta", "delta": {"text": "Grüß"}}),
    ("content_block_delta", {"type": "content_block_delta", "delta": {"text": " dich"}}),
    ("message_delta", {"type": "message_delta", "usage": {"output_tokens": 9}}),
    ("message_stop", {"type": "message_stop"}),
)
RESPONSES_STREAM = _sse(
    ("response.created", {"type": "response.created", "response": {"model": "gpt-5"}}),
    ("response.output_text.delta", {"type": "response.output_text.delta", "delta": "hi"}),
    ("response.output_text.delta", {"type": "response.output_text.delta", "delta": " ☕"}),
    (
        "response.completed",
        {
            "type": "response.completed",
            "response": {
                "model": "gpt-5-2025-08-07",
                "usage": {
                    "input_tokens": 30,
                    "input_tokens_details": {"cached_tokens": 10},
                    "output_tokens": 40,
                    "output_tokens_details": {"reasoning_tokens": 25},
                    "total_tokens": 70,
                },
            },
        },
    ),
)

EXPECTED = {
    "chat": (
        CHAT,
        CHAT_STREAM,
        TokenUsage(input_tokens=11, output_tokens=7, reasoning_tokens=2),
        "gpt-4o-2024-08-06",
    ),
    "anthropic": (
        MESSAGES,
        ANTHROPIC_STREAM,
        TokenUsage(
            input_tokens=125, output_tokens=9, cached_input_tokens=100, cache_creation_tokens=20
        ),
        "claude-sonnet-4-6",
    ),
    "responses": (
        RESPONSES,
        RESPONSES_STREAM,
        TokenUsage(input_tokens=30, output_tokens=40, cached_input_tokens=10, reasoning_tokens=25),
        "gpt-5-2025-08-07",
    ),
}


def _meter(endpoint, chunks: list[bytes]):
    meter = stream_meter(endpoint)
    assert meter is not None
    splitter = EventSplitter()
    relayed = b""
    for chunk in chunks:
        relayed += chunk
        for event in splitter.feed(chunk):
            meter.event(event)
    for event in splitter.close():
        meter.event(event)
    return meter, relayed


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(sorted(EXPECTED)),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=40),
    drop_final_blank=st.booleans(),
    eol=st.sampled_from([b"\n", b"\r\n", b"\r"]),
)
def test_usage_is_exact_however_the_stream_is_split(kind, cuts, drop_final_blank, eol):
    endpoint, stream, usage, model = EXPECTED[kind]
    stream = stream.replace(b"\n", eol)
    if drop_final_blank:
        stream = stream.rstrip(b"\r\n")
    chunks = _split(stream, cuts)
    meter, relayed = _meter(endpoint, chunks)
    assert relayed == stream  # the meter only reads: the bytes relayed are the bytes received
    assert meter.usage == usage
    assert meter.finished
    assert not meter.error
    assert meter.model in (model, "gpt-5")
    assert meter.deltas == 2


def test_no_usage_is_invented_when_the_provider_sends_none():
    stream = _sse(_chunk(""), _chunk("a"), _chunk("b"), _chunk(None), "[DONE]")
    meter, _ = _meter(CHAT, [stream])
    assert meter.usage is None
    assert meter.finished
    assert meter.deltas == 2


def test_usage_in_a_chunk_that_also_has_choices():
    last = _chunk("!", usage={"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7})
    meter, _ = _meter(CHAT, [_sse(_chunk("hi"), last, "[DONE]")])
    assert meter.usage == TokenUsage(input_tokens=3, output_tokens=4)
    assert not meter.estimated


def test_a_running_usage_count_is_not_final_until_the_stream_finishes():
    """A server sending usage on content chunks (a running count) and a stream cut before its
    end: the last count plus the deltas after it, flagged estimated."""
    running = _chunk("a", usage={"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7})
    meter, _ = _meter(CHAT, [_sse(_chunk("hi"), running, _chunk("b"), _chunk("c"))])
    assert meter.usage == TokenUsage(input_tokens=3, output_tokens=6)
    assert meter.estimated
    # The usage-only chunk is the final count, even if [DONE] never comes.
    final = _chunk(None, usage={"prompt_tokens": 3, "completion_tokens": 5}, choices=False)
    meter, _ = _meter(CHAT, [_sse(_chunk("hi"), running, _chunk("b"), final)])
    assert meter.usage == TokenUsage(input_tokens=3, output_tokens=5)
    assert not meter.estimated


def test_only_the_terminal_responses_event_gives_usage():
    usage = {"output_tokens": 1}
    created = {"type": "response.created", "response": {"model": "m", "usage": usage}}
    delta = {"type": "response.output_text.delta", "delta": "x"}
    args = {"type": "response.function_call_arguments.delta", "delta": "{"}
    meter, _ = _meter(
        RESPONSES,
        [
            _sse(
                ("response.created", created),
                ("response.output_text.delta", delta),
                ("response.function_call_arguments.delta", args),
            )
        ],
    )
    assert meter.usage is None  # the middleware estimates it from the deltas
    assert meter.deltas == 2
    assert not meter.finished


def test_truncated_stream_is_not_finished_and_keeps_partial_usage():
    meter, _ = _meter(
        MESSAGES, [ANTHROPIC_STREAM[: ANTHROPIC_STREAM.index(b"event: message_delta")]]
    )
    assert not meter.finished
    assert meter.usage is not None
    assert meter.usage.input_tokens == 125
    # message_start's output_tokens (1) is a placeholder: the output is estimated from the
    # two deltas streamed, and flagged as such.
    assert meter.usage.output_tokens == 2
    assert meter.estimated
    assert meter.deltas == 2


def test_error_events_are_noticed():
    meter, _ = _meter(CHAT, [_sse(_chunk("a"), {"error": {"message": "boom"}})])
    assert meter.error
    meter, _ = _meter(MESSAGES, [_sse(("error", {"type": "error", "error": {}}))])
    assert meter.error


def test_json_usage_for_each_api():
    chat = orjson.dumps({"model": "gpt-4o", "choices": [], "usage": OPENAI_USAGE})
    assert usage_from_json(CHAT, chat) == (
        TokenUsage(input_tokens=11, output_tokens=7, reasoning_tokens=2),
        "gpt-4o",
        {},
    )
    emb = orjson.dumps({"model": "e", "data": [], "usage": {"prompt_tokens": 8, "total_tokens": 8}})
    assert usage_from_json(EMBEDDINGS, emb) == (TokenUsage(input_tokens=8), "e", {})
    msg = orjson.dumps(
        {
            "model": "claude-haiku-4-5",
            "usage": {
                "input_tokens": 3,
                "output_tokens": 2,
                "cache_read_input_tokens": 0,
                "cache_creation_input_tokens": 0,
            },
        }
    )
    assert usage_from_json(MESSAGES, msg) == (
        TokenUsage(input_tokens=3, output_tokens=2),
        "claude-haiku-4-5",
        {},
    )
    assert usage_from_json(CHAT, b"not json") == (None, None, {})
    assert usage_from_json(CHAT, b'{"model": "m"}') == (None, "m", {})


def test_server_side_tool_calls_are_counted_for_per_call_fees():
    response = orjson.dumps(
        {
            "model": "gpt-5",
            "output": [
                {"type": "web_search_call", "id": "ws_1"},
                {"type": "reasoning"},
                {"type": "web_search_call", "id": "ws_2"},
                {"type": "file_search_call"},
                {"type": "function_call", "name": "f"},  # runs in the caller's code: free
                {"type": "message", "content": []},
            ],
            "usage": {"input_tokens": 5, "output_tokens": 6},
        }
    )
    assert usage_from_json(RESPONSES, response)[2] == {"web_search": 2, "file_search": 1}
    message = orjson.dumps(
        {
            "model": "claude-sonnet-4-6",
            "usage": {
                "input_tokens": 5,
                "output_tokens": 6,
                "server_tool_use": {"web_search_requests": 3},
            },
        }
    )
    assert usage_from_json(MESSAGES, message)[2] == {"web_search": 3}
    stream = _sse(
        ("message_start", {"type": "message_start", "message": {"usage": {"input_tokens": 1}}}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "usage": {"output_tokens": 4, "server_tool_use": {"web_search_requests": 2}},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    )
    meter, _ = _meter(MESSAGES, [stream])
    assert meter.tool_calls == {"web_search": 2}


def test_oversized_events_are_dropped_not_buffered():
    splitter = EventSplitter(max_event=1024)
    events = splitter.feed(b"data: " + b"x" * 5000)
    events += splitter.feed(b"y" * 5000 + b"\n\ndata: small\n\n")
    assert events == [b"data: small"]
    assert splitter.oversized == 1
