"""Usage in Bedrock Runtime's answers: Converse's JSON and the event streams of ConverseStream
and InvokeModelWithResponseStream (frames split by `eventstream.FrameSplitter`).

Two meters read whole frames through ``event()``, like the SSE meters (`metering.StreamMeter`):

- `ConverseStreamMeter` (ConverseStream): ``metadata``'s ``usage`` (``inputTokens``,
  ``outputTokens``, ``cacheReadInputTokens``, ``cacheWriteInputTokens``); ``contentBlockDelta``
  frames are the output estimate until it arrives.
- `InvokeStreamMeter` (InvokeModelWithResponseStream with Claude): each ``chunk`` frame's
  ``bytes`` (base64) is an Anthropic Messages event, read by `anthropic_usage.MessagesStreamMeter`;
  ``amazon-bedrock-invocationMetrics`` (on ``message_stop``) counts when no ``message_delta``
  brought the output count.

Bedrock's ``inputTokens`` is the uncached prompt, as Anthropic's ``input_tokens`` is: the
`TokenUsage` counts the whole prompt, cache reads and writes included. The meters only read: the
bytes relayed to the client are the upstream's, untouched. InvokeModel's JSON answer from Claude is
Anthropic's message: `anthropic_usage.usage_from_json` reads it.
"""

from __future__ import annotations

import binascii

import msgspec

from asgi_llmguard.providers.anthropic_usage import MessagesStreamMeter
from asgi_llmguard.providers.eventstream import decode_frame, header_block, string_header
from asgi_llmguard.tokens import TokenUsage

# The encoded headers of the frames met most, found in a frame's header block by a byte search
# rather than decoded: a stream is mostly content deltas.
_EVENT = string_header(":message-type", "event")
_CONTENT_DELTA = string_header(":event-type", "contentBlockDelta")
_CHUNK = string_header(":event-type", "chunk")


# -- the frames' JSON --------------------------------------------------------------------------


class _ConverseUsage(msgspec.Struct):
    inputTokens: int | None = None
    outputTokens: int | None = None
    cacheReadInputTokens: int | None = None
    cacheWriteInputTokens: int | None = None

    def tokens(self) -> TokenUsage:
        read = self.cacheReadInputTokens or 0
        write = self.cacheWriteInputTokens or 0
        return TokenUsage(
            input_tokens=(self.inputTokens or 0) + read + write,
            output_tokens=self.outputTokens or 0,
            cached_input_tokens=read,
            cache_creation_tokens=write,
        )


class _WithUsage(msgspec.Struct):
    usage: _ConverseUsage | None = None


class _Chunk(msgspec.Struct):
    bytes: str = ""


class _InvocationMetrics(msgspec.Struct):
    inputTokenCount: int | None = None
    outputTokenCount: int | None = None
    cacheReadInputTokenCount: int | None = None
    cacheWriteInputTokenCount: int | None = None

    def tokens(self) -> TokenUsage:
        return _ConverseUsage(
            self.inputTokenCount,
            self.outputTokenCount,
            self.cacheReadInputTokenCount,
            self.cacheWriteInputTokenCount,
        ).tokens()


class _AnthropicEvent(msgspec.Struct):
    type: str = ""
    metrics: _InvocationMetrics | None = msgspec.field(
        default=None, name="amazon-bedrock-invocationMetrics"
    )


_with_usage = msgspec.json.Decoder(_WithUsage)
_chunk = msgspec.json.Decoder(_Chunk)
_anthropic_event = msgspec.json.Decoder(_AnthropicEvent)
_DECODE_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, RecursionError)


def usage_from_converse_json(
    body: bytes,
) -> tuple[TokenUsage | None, str | None, dict[str, int]]:
    """Usage of a Converse JSON answer (``usage`` at its top level); Converse names no model."""
    try:
        decoded = _with_usage.decode(body)
    except _DECODE_ERRORS:
        return None, None, {}
    return (decoded.usage.tokens() if decoded.usage else None), None, {}


# -- the meters ------------------------------------------------------------------------------------


class ConverseStreamMeter:
    """Usage of a ConverseStream answer, one whole frame at a time."""

    __slots__ = (
        "_usage",
        "deltas",
        "error",
        "exception",
        "finished",
        "model",
        "service_tier",
        "tool_calls",
    )

    def __init__(self) -> None:
        self._usage: TokenUsage | None = None
        self.model: str | None = None
        #: The ``metadata`` frame (the stream's last) was seen.
        self.finished = False
        self.error = False
        #: The ``:exception-type`` (or ``:error-code``) of the error frame seen, if any.
        self.exception: str | None = None
        self.deltas = 0
        self.tool_calls: dict[str, int] = {}
        self.service_tier: str | None = None

    @property
    def usage(self) -> TokenUsage | None:
        return self._usage

    @property
    def estimated(self) -> bool:
        """Never: without ``metadata`` there is no usage, and the output is estimated from
        ``deltas`` by the caller."""
        return False

    def event(self, frame: bytes) -> None:
        head = header_block(frame)
        if _CONTENT_DELTA in head and _EVENT in head:
            self.deltas += 1
            return
        decoded = decode_frame(frame)
        if decoded is None:
            return
        if decoded.is_error:
            self.error = True
            self.exception = decoded.error_type
            return
        kind = decoded.event_type
        if kind == "contentBlockDelta":
            self.deltas += 1
        elif kind == "metadata":
            self.finished = True
            try:
                usage = _with_usage.decode(decoded.payload).usage
            except _DECODE_ERRORS:
                return
            if usage is not None:
                self._usage = usage.tokens()


class InvokeStreamMeter:
    """Usage of an InvokeModelWithResponseStream answer from Claude, one whole frame at a time:
    the Anthropic events inside the ``chunk`` frames."""

    __slots__ = ("_inner", "_metrics", "error", "exception")

    def __init__(self) -> None:
        self._inner = MessagesStreamMeter()
        self._metrics: TokenUsage | None = None
        self.error = False
        self.exception: str | None = None

    @property
    def usage(self) -> TokenUsage | None:
        inner = self._inner
        if self._metrics is not None and (inner.estimated or inner.usage is None):
            metrics = self._metrics
            if inner.service_tier:
                metrics = msgspec.structs.replace(metrics, service_tier=inner.service_tier)
            return metrics
        return inner.usage

    @property
    def estimated(self) -> bool:
        return self._metrics is None and self._inner.estimated

    @property
    def model(self) -> str | None:
        return self._inner.model

    @property
    def finished(self) -> bool:
        return self._inner.finished

    @property
    def deltas(self) -> int:
        return self._inner.deltas

    @property
    def tool_calls(self) -> dict[str, int]:
        return self._inner.tool_calls

    @property
    def service_tier(self) -> str | None:
        return self._inner.service_tier

    def event(self, frame: bytes) -> None:
        head = header_block(frame)
        if _CHUNK in head and _EVENT in head:
            payload = frame[12 + len(head) : -4]
        else:
            decoded = decode_frame(frame)
            if decoded is None:
                return
            if decoded.is_error:
                self.error = True
                self.exception = decoded.error_type
                return
            if decoded.event_type != "chunk":
                return
            payload = decoded.payload
        try:
            data = binascii.a2b_base64(_chunk.decode(payload).bytes, strict_mode=True)
            event = _anthropic_event.decode(data)
        except (*_DECODE_ERRORS, binascii.Error):
            return
        if event.metrics is not None:
            self._metrics = event.metrics.tokens()
        if event.type:
            # The same event as Anthropic's SSE stream would carry, for the Messages meter.
            flat = data.replace(b"\r", b" ").replace(b"\n", b" ")
            self._inner.event(b"event: " + event.type.encode() + b"\ndata: " + flat)
