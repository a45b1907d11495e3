"""Usage in Anthropic's Messages wire format.

A message's ``usage`` has ``input_tokens`` (the uncached prompt), ``cache_read_input_tokens``,
``cache_creation_input_tokens`` and ``output_tokens``. Streamed, ``message_start`` carries the
input side and ``message_delta`` the cumulative output (and, with server tools, updated input
counts); ``message_stop`` ends the stream.
"""

from __future__ import annotations

import msgspec

from asgi_llmguard.providers.sse import event_fields
from asgi_llmguard.tokens import TokenUsage


class _ServerToolUse(msgspec.Struct):
    web_search_requests: int | None = None
    web_fetch_requests: int | None = None

    def calls(self) -> dict[str, int]:
        calls = {}
        if self.web_search_requests:
            calls["web_search"] = self.web_search_requests
        if self.web_fetch_requests:
            calls["web_fetch"] = self.web_fetch_requests
        return calls


class _Usage(msgspec.Struct):
    server_tool_use: _ServerToolUse | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None


class _Message(msgspec.Struct):
    model: str | None = None
    usage: _Usage | None = None


class _Start(msgspec.Struct):
    message: _Message | None = None


_message = msgspec.json.Decoder(_Message)
_start = msgspec.json.Decoder(_Start)


def _tokens(
    input_tokens: int, cache_read: int, cache_creation: int, output_tokens: int
) -> TokenUsage:
    return TokenUsage(
        input_tokens=input_tokens + cache_read + cache_creation,
        output_tokens=output_tokens,
        cached_input_tokens=cache_read,
        cache_creation_tokens=cache_creation,
    )


def usage_from_json(body: bytes) -> tuple[TokenUsage | None, str | None, dict[str, int]]:
    try:
        decoded = _message.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None, None, {}
    u = decoded.usage
    if u is None:
        return None, decoded.model, {}
    usage = _tokens(
        u.input_tokens or 0,
        u.cache_read_input_tokens or 0,
        u.cache_creation_input_tokens or 0,
        u.output_tokens or 0,
    )
    return usage, decoded.model, u.server_tool_use.calls() if u.server_tool_use else {}


class MessagesStreamMeter:
    __slots__ = (
        "_cache_creation",
        "_cache_read",
        "_input",
        "_output",
        "_seen",
        "deltas",
        "error",
        "finished",
        "model",
        "tool_calls",
    )

    def __init__(self) -> None:
        self.tool_calls: dict[str, int] = {}
        self._input = self._cache_read = self._cache_creation = self._output = 0
        self._seen = False
        self.model: str | None = None
        self.finished = False
        self.error = False
        self.deltas = 0

    @property
    def usage(self) -> TokenUsage | None:
        if not self._seen:
            return None
        return _tokens(self._input, self._cache_read, self._cache_creation, self._output)

    def _apply(self, u: _Usage) -> None:
        self._seen = True
        if u.input_tokens is not None:
            self._input = u.input_tokens
        if u.cache_read_input_tokens is not None:
            self._cache_read = u.cache_read_input_tokens
        if u.cache_creation_input_tokens is not None:
            self._cache_creation = u.cache_creation_input_tokens
        if u.output_tokens is not None:
            self._output = u.output_tokens
        if u.server_tool_use is not None:  # cumulative, like output_tokens
            self.tool_calls = u.server_tool_use.calls()

    def event(self, event: bytes) -> None:
        name, data = event_fields(event)
        if name == b"content_block_delta":
            self.deltas += 1
        elif name == b"message_start":
            try:
                start = _start.decode(data)
            except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
                return
            if start.message is not None:
                self.model = start.message.model
                if start.message.usage is not None:
                    self._apply(start.message.usage)
        elif name == b"message_delta":
            try:
                delta = _message.decode(data)
            except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
                return
            if delta.usage is not None:
                self._apply(delta.usage)
        elif name == b"message_stop":
            self.finished = True
        elif name == b"error":
            self.error = True
