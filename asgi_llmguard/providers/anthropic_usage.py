"""Usage in Anthropic's Messages wire format.

A message's ``usage`` has ``input_tokens`` (the uncached prompt), ``cache_read_input_tokens``,
``cache_creation_input_tokens`` (split by cache lifetime in ``cache_creation``:
``ephemeral_5m_input_tokens`` and ``ephemeral_1h_input_tokens``) and ``output_tokens``.
Streamed, ``message_start`` carries the input side and ``message_delta`` the cumulative output
(and, with server tools, updated input counts); ``message_stop`` ends the stream.
``usage.service_tier`` (``"standard"``, ``"priority"``, ``"batch"``) names the tier that served
the message; it is carried on the usage (`TokenUsage.service_tier`) and chooses the price.

``message_start``'s ``output_tokens`` is a placeholder (typically 1), not a count: until a
``message_delta`` brings the real one, the output is estimated from the deltas streamed so far
and the usage is flagged ``estimated`` (a client that left, an upstream that broke).
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


class _CacheCreation(msgspec.Struct):
    ephemeral_5m_input_tokens: int | None = None
    ephemeral_1h_input_tokens: int | None = None


class _Usage(msgspec.Struct):
    server_tool_use: _ServerToolUse | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_creation: _CacheCreation | None = None
    service_tier: str | None = None

    def creation_1h(self) -> int | None:
        c = self.cache_creation
        return None if c is None else c.ephemeral_1h_input_tokens


class _Message(msgspec.Struct):
    model: str | None = None
    usage: _Usage | None = None


class _Start(msgspec.Struct):
    message: _Message | None = None


# The JSON around the text of a ``content_block_delta``:
# ``{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":""}}``.
_DELTA_ENVELOPE = 80
#: Bytes of streamed text per estimated token.
_BYTES_PER_TOKEN = 4

_message = msgspec.json.Decoder(_Message)
_start = msgspec.json.Decoder(_Start)


def _tokens(
    input_tokens: int,
    cache_read: int,
    cache_creation: int,
    output_tokens: int,
    creation_1h: int,
    service_tier: str | None = None,
) -> TokenUsage:
    return TokenUsage(
        input_tokens=input_tokens + cache_read + cache_creation,
        output_tokens=output_tokens,
        cached_input_tokens=cache_read,
        cache_creation_tokens=cache_creation,
        cache_creation_1h_tokens=creation_1h,
        service_tier=service_tier[:64] if service_tier else None,
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
        u.creation_1h() or 0,
        u.service_tier,
    )
    return usage, decoded.model, u.server_tool_use.calls() if u.server_tool_use else {}


class MessagesStreamMeter:
    __slots__ = (
        "_cache_creation",
        "_cache_creation_1h",
        "_cache_read",
        "_final",
        "_input",
        "_output",
        "_seen",
        "_streamed",
        "deltas",
        "error",
        "finished",
        "model",
        "service_tier",
        "tool_calls",
    )

    def __init__(self) -> None:
        self.tool_calls: dict[str, int] = {}
        self._input = self._cache_read = self._cache_creation = self._output = 0
        self._cache_creation_1h = 0
        #: ``usage.service_tier`` of ``message_start`` or a later ``message_delta``.
        self.service_tier: str | None = None
        self._seen = False
        #: A ``message_delta`` brought the output count; before it, the count is a placeholder.
        self._final = False
        #: Bytes of the ``content_block_delta`` events' data (text, thinking, tool input).
        self._streamed = 0
        self.model: str | None = None
        self.finished = False
        self.error = False
        self.deltas = 0

    @property
    def usage(self) -> TokenUsage | None:
        if not self._seen:
            return None
        output = self._output if self._final else max(self._output, self._streamed_tokens())
        return _tokens(
            self._input,
            self._cache_read,
            self._cache_creation,
            output,
            self._cache_creation_1h,
            self.service_tier,
        )

    @property
    def estimated(self) -> bool:
        """The output count is the gateway's estimate: no ``message_delta`` gave the real one."""
        return self._seen and not self._final

    def _streamed_tokens(self) -> int:
        """Output tokens estimated from what was streamed: at least one per delta."""
        deltas = self.deltas
        return max(deltas, (self._streamed - _DELTA_ENVELOPE * deltas) // _BYTES_PER_TOKEN)

    def _apply(self, u: _Usage) -> None:
        self._seen = True
        if u.input_tokens is not None:
            self._input = u.input_tokens
        if u.cache_read_input_tokens is not None:
            self._cache_read = u.cache_read_input_tokens
        if u.cache_creation_input_tokens is not None:
            self._cache_creation = u.cache_creation_input_tokens
        creation_1h = u.creation_1h()
        if creation_1h is not None:
            self._cache_creation_1h = creation_1h
        if u.output_tokens is not None:
            self._output = u.output_tokens
        if u.server_tool_use is not None:  # cumulative, like output_tokens
            self.tool_calls = u.server_tool_use.calls()
        if u.service_tier:
            self.service_tier = u.service_tier

    def event(self, event: bytes) -> None:
        name, data = event_fields(event)
        if name == b"content_block_delta":
            self.deltas += 1
            self._streamed += len(data)
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
                if delta.usage.output_tokens is not None:
                    self._final = True
        elif name == b"message_stop":
            self.finished = True
        elif name == b"error":
            self.error = True
