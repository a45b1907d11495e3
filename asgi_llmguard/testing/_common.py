"""Pieces every fake API shares: the token rule, reply planning, SSE framing and errors.

Nothing here knows about ASGI; the provider modules build bodies and event lists from these,
and :mod:`asgi_llmguard.testing.fake` sends them.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from asgi_llmguard.testing._tools import Script

_WORD = re.compile(r"\s*\S+")


class ApiError(Exception):
    """A request the fake refuses; rendered in the error shape of the API that was called."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        kind: str | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.kind = kind
        self.headers = headers or []


@dataclass(frozen=True)
class Completion:
    """What the fake model "generated" for one request."""

    model: str
    pieces: tuple[str, ...]
    """The content chunks, in order; one word (with its leading whitespace) each."""
    capped: bool
    """True when the request's token limit cut the reply short."""
    prompt_tokens: int

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def completion_tokens(self) -> int:
        return len(self.pieces)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class StreamPlan:
    """An SSE response in three parts: the fake pauses before each ``content`` event.

    ``head`` is sent with the response headers, ``content`` holds exactly one event per content
    chunk, and ``tail`` (finish reason, usage, end marker) is sent last with the end of the body.
    """

    head: list[bytes] = field(default_factory=list)
    content: list[bytes] = field(default_factory=list)
    tail: list[bytes] = field(default_factory=list)
    #: ``text/event-stream``, or ``application/json`` for Gemini's streamed JSON array.
    content_type: bytes = b"text/event-stream"


def count_tokens(text: str) -> int:
    """The fake's token count of ``text``: its number of whitespace-separated words."""
    return len(text.split())


def split_reply(reply: str) -> list[str]:
    """``reply`` cut into words that keep their leading whitespace; joined they give ``reply``."""
    pieces = _WORD.findall(reply)
    if pieces:
        pieces[-1] += reply[len("".join(pieces)) :]
    return pieces


def reply_chunks(
    reply: str, *, chunks: int | None = None, max_tokens: int | None = None
) -> list[str]:
    """The content chunks the fake sends for ``reply``.

    One chunk per word of ``reply``. With ``chunks``, the words are repeated (a space joining the
    repetitions) until exactly that many chunks exist; ``max_tokens`` then keeps the first ones.
    """
    pieces = split_reply(reply)
    if chunks is not None:
        if not pieces:
            return []
        cycled: list[str] = []
        while len(cycled) < chunks:
            for piece in pieces:
                if len(cycled) == chunks:
                    break
                if cycled and not piece[:1].isspace():
                    piece = " " + piece
                cycled.append(piece)
        pieces = cycled
    if max_tokens is not None:
        pieces = pieces[:max_tokens]
    return pieces


def words_in_content(content: Any) -> int:
    """Words in a message's content: a string, or the ``text`` of each part of a list."""
    if isinstance(content, str):
        return count_tokens(content)
    total = 0
    if isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                total += count_tokens(part["text"])
    return total


def words_in_messages(messages: Iterable[Any]) -> int:
    """Words in the ``content`` of every message."""
    return sum(words_in_content(m.get("content")) for m in messages if isinstance(m, dict))


def complete(
    model: str,
    reply: str,
    *,
    chunks: int | None,
    max_tokens: int | None,
    prompt_words: int,
) -> Completion:
    """Plan the reply for one request; the prompt counts at least one token."""
    full = reply_chunks(reply, chunks=chunks)
    capped = max_tokens is not None and len(full) > max_tokens
    pieces = full[:max_tokens] if capped else full
    return Completion(model, tuple(pieces), capped, max(1, prompt_words))


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def sse_data(obj: Any) -> bytes:
    """One ``data:``-only server-sent event, as OpenAI's chat and completions streams send."""
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def sse_event(name: str, obj: Any) -> bytes:
    """One named server-sent event, as Anthropic's and the Responses API's streams send."""
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"


def new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]


def require_model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "you must provide a model parameter", param="model")
    return model


def optional_limit(body: dict[str, Any], *names: str) -> int | None:
    """The smallest of the token limits named ``names`` present in ``body`` (``null`` = absent)."""
    limits: list[int] = []
    for name in names:
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ApiError(400, f"{name} must be an integer of at least 1", param=name)
        limits.append(value)
    return min(limits) if limits else None


@dataclass(frozen=True)
class Generation:
    """The per-request generation settings a provider module needs."""

    reply: str
    chunks: int | None
    model: str | None = None
    """Overrides the body's ``model`` (the Azure deployment name)."""
    cached_tokens: int = 0
    """OpenAI: prompt tokens reported as read from the cache (at most the prompt's)."""
    reasoning_tokens: int = 0
    """OpenAI: reasoning tokens reported on top of the reply's (counted in the output)."""
    usage_in_last_chunk: bool = False
    cache_write_5m: int = 0
    cache_write_1h: int = 0
    """Prompt tokens reported written to Anthropic's 5-minute and 1-hour caches."""
    service_tier: str | None = None
    """The tier reported as having served the answer (``None``: the standard tier)."""
    script: Script = field(default_factory=Script)
    """The tool-call and structured-output knobs (``_tools``)."""


def wants_stream(body: dict[str, Any]) -> bool:
    stream = body.get("stream", False)
    if stream is None:
        return False
    if not isinstance(stream, bool):
        raise ApiError(400, "stream must be a boolean", param="stream")
    return stream
