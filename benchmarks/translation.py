"""What translating between wire formats costs, in process.

    .venv/bin/python -m benchmarks.translation [--rounds 7]

Request: a typical 3-turn Chat Completions conversation with one tool (system prompt, a user
question, an assistant tool call, its result, a follow-up), from request bytes to Messages body
bytes: decode, read into the model, write, encode. Answer: a Messages answer (text and a tool
call) to Chat Completions bytes. Stream: a Messages stream of 20,000 text events, delivered in
16 KiB chunks, decoded and re-encoded as Chat Completions chunks (and the reverse); reported
per event. The same request written for Gemini and Converse, and Gemini and ConverseStream text
events relayed as Chat Completions chunks (ConverseStream events already unframed); the same
request in Responses form translated to Messages, and Messages text events relayed as Responses
events. Median of rounds, microseconds per operation.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import msgspec

from asgi_llmguard.providers.translate import anthropic_messages as an
from asgi_llmguard.providers.translate import bedrock_converse as bc
from asgi_llmguard.providers.translate import gemini_generate as gm
from asgi_llmguard.providers.translate import openai_chat as oa
from asgi_llmguard.providers.translate import openai_responses as rs
from asgi_llmguard.providers.translate.model import (
    Finish,
    MessageStart,
    MessageStop,
    PartStop,
    TextDelta,
    UsageDelta,
)
from asgi_llmguard.tokens import TokenUsage

REQUEST = msgspec.json.encode(
    {
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant that answers briefly."},
            {
                "role": "user",
                "content": "What's the weather in Paris and should I take an umbrella?",
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_abc123",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_abc123", "content": '{"temp": 14, "rain": 0.7}'},
            {"role": "assistant", "content": "It is 14°C with a 70% chance of rain: take one."},
            {"role": "user", "content": "And tomorrow?"},
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "The current weather in a city.",
                    "parameters": {
                        "type": "object",
                        "properties": {"city": {"type": "string"}},
                        "required": ["city"],
                    },
                },
            }
        ],
        "max_completion_tokens": 1024,
        "temperature": 0.2,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
)

ANSWER = msgspec.json.encode(
    {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [
            {"type": "text", "text": "Let me check tomorrow's forecast."},
            {
                "type": "tool_use",
                "id": "toolu_1",
                "name": "get_weather",
                "input": {"city": "Paris"},
            },
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 420, "output_tokens": 38, "cache_read_input_tokens": 0},
    }
)

EVENTS = 20_000
CHUNK = 16 << 10


def request_to_anthropic() -> bytes:
    body, _ = an.write_request(oa.read_request(REQUEST))
    return msgspec.json.encode(body)


def request_to_gemini() -> bytes:
    body, _ = gm.write_request(oa.read_request(REQUEST))
    return msgspec.json.encode(body)


def request_to_converse() -> bytes:
    body, _ = bc.write_request(oa.read_request(REQUEST))
    return msgspec.json.encode(body)


def converse_to_chat() -> int:
    """ConverseStream events (already unframed) relayed as Chat Completions chunks."""
    dec, enc = bc.StreamDecoder(), oa.StreamEncoder(created=1)
    size = 0
    for kind, payload in CONVERSE_EVENTS:
        size += len(enc.encode_many(dec.feed_event(kind, payload)))
    return size


RESPONSES_REQUEST = msgspec.json.encode(
    rs.write_request(oa.read_request(msgspec.json.decode(REQUEST)))[0]
)


def responses_to_anthropic() -> bytes:
    body, _ = an.write_request(rs.read_request(RESPONSES_REQUEST))
    return msgspec.json.encode(body)


def answer_to_chat() -> bytes:
    return oa.write_answer(an.read_answer(ANSWER), created=1)


CONVERSE_EVENTS = bc.StreamEncoder().encode_many(
    [
        MessageStart("msg_1", "model"),
        *[TextDelta(0, " token")] * EVENTS,
        PartStop(0),
        Finish("stop"),
        UsageDelta(TokenUsage(10, EVENTS)),
        MessageStop(),
    ]
)

Encoder = an.StreamEncoder | oa.StreamEncoder | gm.StreamEncoder | rs.StreamEncoder
Decoder = an.StreamDecoder | oa.StreamDecoder | gm.StreamDecoder


def _stream(encoder: Encoder) -> list[bytes]:
    deltas = [MessageStart("msg_1", "model"), *[TextDelta(0, " token")] * EVENTS, PartStop(0)]
    deltas += [Finish("stop"), UsageDelta(TokenUsage(10, EVENTS)), MessageStop()]
    body = encoder.encode_many(deltas)
    return [body[i : i + CHUNK] for i in range(0, len(body), CHUNK)]


def relay(
    chunks: list[bytes],
    decoder: Callable[[], Decoder],
    encoder: Callable[[], Encoder],
) -> Callable[[], int]:
    def run() -> int:
        dec, enc = decoder(), encoder()
        size = 0
        for chunk in chunks:
            size += len(enc.encode_many(dec.feed(chunk)))
        return size

    return run


def _time(fn: Callable[[], object], loops: int, rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(loops):
            fn()
        samples.append((time.perf_counter() - start) / loops)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    rows = [
        (
            "request: chat -> messages (3 turns, 1 tool)",
            _time(request_to_anthropic, 5000, args.rounds),
            1,
        ),
        (
            "answer: messages -> chat (text + tool call)",
            _time(answer_to_chat, 5000, args.rounds),
            1,
        ),
        (
            "stream event: messages -> chat (text delta)",
            _time(
                relay(
                    _stream(an.StreamEncoder()),
                    an.StreamDecoder,
                    lambda: oa.StreamEncoder(created=1),
                ),
                1,
                args.rounds,
            ),
            EVENTS,
        ),
        (
            "stream event: chat -> messages (text delta)",
            _time(
                relay(_stream(oa.StreamEncoder(created=1)), oa.StreamDecoder, an.StreamEncoder),
                1,
                args.rounds,
            ),
            EVENTS,
        ),
        (
            "request: chat -> gemini (3 turns, 1 tool)",
            _time(request_to_gemini, 5000, args.rounds),
            1,
        ),
        (
            "stream event: gemini -> chat (text delta)",
            _time(
                relay(
                    _stream(gm.StreamEncoder()),
                    gm.StreamDecoder,
                    lambda: oa.StreamEncoder(created=1),
                ),
                1,
                args.rounds,
            ),
            EVENTS,
        ),
        (
            "request: chat -> converse (3 turns, 1 tool)",
            _time(request_to_converse, 5000, args.rounds),
            1,
        ),
        (
            "stream event: converse -> chat (text delta)",
            _time(converse_to_chat, 1, args.rounds),
            EVENTS,
        ),
        (
            "request: responses -> messages (3 turns, 1 tool)",
            _time(responses_to_anthropic, 5000, args.rounds),
            1,
        ),
        (
            "stream event: messages -> responses (text delta)",
            _time(
                relay(
                    _stream(an.StreamEncoder()),
                    an.StreamDecoder,
                    lambda: rs.StreamEncoder(created=1),
                ),
                1,
                args.rounds,
            ),
            EVENTS,
        ),
    ]
    print(f"{'operation':48} {'µs/op':>8}")
    for name, seconds, ops in rows:
        print(f"{name:48} {seconds / ops * 1e6:8.2f}")


if __name__ == "__main__":
    main()
