"""Usage in OpenAI's wire formats (also Azure OpenAI and OpenAI-compatible servers).

- Chat/legacy completions and embeddings: ``usage.prompt_tokens`` / ``completion_tokens`` with
  ``prompt_tokens_details.cached_tokens`` and ``completion_tokens_details.reasoning_tokens``;
  streamed, in a chunk carrying a non-null ``usage`` (the usage-only chunk with ``choices: []``
  when ``stream_options.include_usage`` is set; some compatible servers put it in the last content
  chunk instead), before ``data: [DONE]``.
- Responses API: ``usage.input_tokens`` / ``output_tokens`` with ``input_tokens_details`` and
  ``output_tokens_details``; streamed in the ``response.completed`` (or ``.incomplete`` /
  ``.failed``) event.
- Both: the tier that served the answer in a top-level ``service_tier`` (``"default"``,
  ``"flex"``, ``"priority"``, ...), which may differ from the one requested; on every streamed
  chunk, and on the ``response`` object of the Responses API's events. It is carried on the
  usage (`TokenUsage.service_tier`) and chooses the price.

Only the usage slice and the model are decoded (msgspec skips the rest unread), and in a stream
only the events that can carry them.
"""

from __future__ import annotations

import msgspec

from asgi_llmguard.providers.sse import event_fields
from asgi_llmguard.tokens import TokenUsage


class _InputDetails(msgspec.Struct):
    cached_tokens: int | None = None
    #: Transcription models: the audio part of the prompt.
    audio_tokens: int | None = None


class _OutputDetails(msgspec.Struct):
    reasoning_tokens: int | None = None
    #: The Realtime API: the spoken part of the output.
    audio_tokens: int | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    prompt_tokens_details: _InputDetails | None = None
    completion_tokens_details: _OutputDetails | None = None
    input_tokens_details: _InputDetails | None = None
    output_tokens_details: _OutputDetails | None = None
    #: The Realtime API's names for the details.
    output_token_details: _OutputDetails | None = None
    #: Transcriptions: ``"tokens"`` (with ``input_token_details``) or ``"duration"``
    #: (``seconds`` of audio: no tokens, the answer is billed by the minute).
    type: str | None = None
    input_token_details: _InputDetails | None = None
    seconds: float | None = None

    def tokens(self, service_tier: str | None = None) -> TokenUsage | None:
        if self.type == "duration":
            return None
        details_in = (
            self.prompt_tokens_details or self.input_tokens_details or self.input_token_details
        )
        details_out = (
            self.completion_tokens_details
            or self.output_tokens_details
            or self.output_token_details
        )
        return TokenUsage(
            # Chat's names, else the Responses API's (inline: this runs for every answer).
            input_tokens=(
                self.prompt_tokens if self.prompt_tokens is not None else (self.input_tokens or 0)
            ),
            output_tokens=(
                self.completion_tokens
                if self.completion_tokens is not None
                else (self.output_tokens or 0)
            ),
            cached_input_tokens=(details_in.cached_tokens or 0) if details_in else 0,
            reasoning_tokens=(details_out.reasoning_tokens or 0) if details_out else 0,
            service_tier=service_tier,
            audio_input_tokens=(details_in.audio_tokens or 0) if details_in else 0,
            audio_output_tokens=(details_out.audio_tokens or 0) if details_out else 0,
        )


class _OutputItem(msgspec.Struct):
    type: str | None = None


class _Body(msgspec.Struct):
    model: str | None = None
    usage: _Usage | None = None
    #: Responses API output items: server-side tool calls are billed per call.
    output: list[_OutputItem] | None = None
    #: The tier that served the answer (not necessarily the one requested).
    service_tier: str | None = None

    def tool_calls(self) -> dict[str, int]:
        """Server-side tool calls by tool type (``web_search_call`` -> ``web_search``). Function
        and custom tool calls run in the caller's code and cost nothing at the provider."""
        calls: dict[str, int] = {}
        for item in self.output or ():
            kind = item.type
            if kind and kind.endswith("_call") and kind not in _CLIENT_SIDE:
                tool = kind[:-5]
                calls[tool] = calls.get(tool, 0) + 1
        return calls


_CLIENT_SIDE = frozenset({"function_call", "custom_tool_call", "local_shell_call"})


class _ResponseEvent(msgspec.Struct):
    response: _Body | None = None


_body = msgspec.json.Decoder(_Body)
_response_event = msgspec.json.Decoder(_ResponseEvent)


def usage_from_json(body: bytes) -> tuple[TokenUsage | None, str | None, dict[str, int]]:
    """Usage, served model and server-side tool calls of a non-streamed answer."""
    try:
        decoded = _body.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None, None, {}
    usage = decoded.usage.tokens(_tier(decoded.service_tier)) if decoded.usage else None
    return usage, decoded.model, decoded.tool_calls()


def usage_from_event(frame: bytes) -> tuple[TokenUsage | None, str | None, dict[str, int]]:
    """Usage, served model and server-side tool calls of an event carrying a ``response``: a
    Responses stream's terminal event, the Realtime API's ``response.done``."""
    try:
        decoded = _response_event.decode(frame)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None, None, {}
    body = decoded.response
    if body is None or body.usage is None:
        return None, body.model if body is not None else None, {}
    return body.usage.tokens(_tier(body.service_tier)), body.model, body.tool_calls()


def _tier(value: str | None) -> str | None:
    """A reported service tier as recorded: bounded, so a misbehaving upstream cannot bloat the
    ledger."""
    return value[:64] if value else None


class _TranscriptEvent(msgspec.Struct):
    type: str | None = None
    usage: _Usage | None = None


_transcript_event = msgspec.json.Decoder(_TranscriptEvent)


class TranscriptionStreamMeter:
    """Streamed transcriptions: ``transcript.text.delta`` events, then ``transcript.text.done``
    carrying the usage (``data:``-only events; the done event ends the stream)."""

    __slots__ = ("deltas", "error", "finished", "model", "service_tier", "tool_calls", "usage")
    #: Usage is read only from the done event: it is final or absent.
    estimated = False

    def __init__(self) -> None:
        self.tool_calls: dict[str, int] = {}
        self.service_tier: str | None = None
        self.usage: TokenUsage | None = None
        self.model: str | None = None
        self.finished = False
        self.error = False
        self.deltas = 0

    def event(self, event: bytes) -> None:
        _, data = event_fields(event)
        if not data:
            return
        if b'"transcript.text.delta"' in data:
            self.deltas += 1
            return
        if data.startswith(b'{"error"'):
            self.error = True
            return
        try:
            decoded = _transcript_event.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
            return
        if decoded.type == "transcript.text.done":
            self.finished = True
            if decoded.usage is not None:
                self.usage = decoded.usage.tokens()
        elif decoded.type == "error":
            self.error = True


class _Item(msgspec.Struct):
    """One ``data[]`` entry of an images answer; its content (``b64_json``, ``url``) unread."""


class _UnitBody(msgspec.Struct):
    #: Transcriptions and translations in ``verbose_json``: seconds of audio.
    duration: float | None = None
    usage: _Usage | None = None
    #: Images answers: one entry per image made.
    data: list[_Item] | None = None


_unit_body = msgspec.json.Decoder(_UnitBody)


def units_from_json(unit: str, body: bytes) -> float | None:
    """The billed ``unit``s a non-streamed answer reports: ``"minute"``s of audio (from
    ``duration``, or ``usage.seconds`` of a ``"duration"`` usage), or ``"image"``s (the
    entries of ``data``); ``None`` if it reports none."""
    try:
        decoded = _unit_body.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None
    if unit == "minute":
        seconds = decoded.duration
        if seconds is None and decoded.usage is not None and decoded.usage.type == "duration":
            seconds = decoded.usage.seconds
        return seconds / 60 if seconds is not None and 0 <= seconds < 1e9 else None
    if unit == "image" and decoded.data is not None:
        return float(len(decoded.data))
    return None


_USAGE_OBJECT = (b'"usage":{', b'"usage": {')
_DELTA_MARKS = (
    b'"content":"',
    b'"text":"',
    b'"arguments":"',
    b'"reasoning_content":"',
    b'"reasoning":"',
    b'"refusal":"',
)
_CONTENT = b'"content":"'
_EMPTY_CONTENT = b'"content":""'
_EMPTY_MARKS = (
    b'"content":""',
    b'"text":""',
    b'"arguments":""',
    b'"reasoning_content":""',
    b'"reasoning":""',
    b'"refusal":""',
)
_NO_CHOICES = (b'"choices":[]', b'"choices": []')


class ChatStreamMeter:
    """Chat and legacy completions streams: ``data: {chunk}`` events ending in ``[DONE]``.

    Usage in a usage-only chunk (``choices: []``) is the final count. Usage on a chunk that also
    carries content (servers that put it on the last content chunk, or send a running count on
    every chunk) is final only once the stream finished; a stream cut before that gets the last
    count plus the deltas streamed after it, flagged ``estimated``.
    """

    __slots__ = (
        "_at",
        "_final",
        "_usage",
        "deltas",
        "error",
        "finished",
        "model",
        "service_tier",
        "tool_calls",
    )

    def __init__(self) -> None:
        self.tool_calls: dict[str, int] = {}
        self._usage: TokenUsage | None = None
        self._final = False
        #: ``deltas`` when the last usage was read.
        self._at = 0
        self.model: str | None = None
        #: The tier the chunks say served the stream (read with the model and the usage).
        self.service_tier: str | None = None
        self.finished = False
        self.error = False
        #: Events that carried generated text: an estimate of the output tokens sent so far.
        self.deltas = 0

    @property
    def usage(self) -> TokenUsage | None:
        usage = self._usage
        if usage is None or self._final or self.finished or self.deltas <= self._at:
            return usage
        return msgspec.structs.replace(
            usage, output_tokens=usage.output_tokens + self.deltas - self._at
        )

    @property
    def estimated(self) -> bool:
        """The output count is partly the gateway's estimate: the stream ended before the
        provider's final usage."""
        return self._usage is not None and not self._final and not self.finished

    def event(self, event: bytes) -> None:
        # Fast path: providers send each chunk as one "data: " line.
        if event.startswith(b"data: ") and b"\n" not in event:
            data = event[6:]
        else:
            _, data = event_fields(event)
        if not data:
            return
        if data == b"[DONE]":
            self.finished = True
            return
        if data.startswith(b'{"error"'):
            self.error = True
            return
        if _CONTENT in data:  # the common case: a content delta
            if _EMPTY_CONTENT not in data:
                self.deltas += 1
        elif any(m in data for m in _DELTA_MARKS) and not all(
            e in data for m, e in zip(_DELTA_MARKS, _EMPTY_MARKS, strict=True) if m in data
        ):
            self.deltas += 1
        if self.model is None or (_USAGE_OBJECT[0] in data or _USAGE_OBJECT[1] in data):
            try:
                decoded = _body.decode(data)
            except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
                return
            if self.model is None:
                self.model = decoded.model
            if decoded.service_tier:
                self.service_tier = _tier(decoded.service_tier)
            if decoded.usage is not None:
                self._usage = decoded.usage.tokens(self.service_tier)
                self._at = self.deltas
                self._final = _NO_CHOICES[0] in data or _NO_CHOICES[1] in data


_TERMINAL = frozenset({b"response.completed", b"response.incomplete", b"response.failed"})
#: Events that stream generated output: text, reasoning, refusals, tool-call input.
_OUTPUT_DELTAS = frozenset(
    {
        b"response.output_text.delta",
        b"response.reasoning_summary_text.delta",
        b"response.reasoning_text.delta",
        b"response.refusal.delta",
        b"response.function_call_arguments.delta",
        b"response.custom_tool_call_input.delta",
    }
)


class ResponsesStreamMeter:
    """Responses API streams: named events, usage in the terminal ``response.*`` event."""

    __slots__ = ("deltas", "error", "finished", "model", "service_tier", "tool_calls", "usage")
    #: Usage is read only from the terminal event: it is final or absent.
    estimated = False

    def __init__(self) -> None:
        self.tool_calls: dict[str, int] = {}
        self.usage: TokenUsage | None = None
        self.model: str | None = None
        self.service_tier: str | None = None
        self.finished = False
        self.error = False
        self.deltas = 0

    def event(self, event: bytes) -> None:
        name, data = event_fields(event)
        if name is None and data.startswith(b'{"type":"'):
            # Some servers omit the "event:" line; the type is in the payload.
            name = data[9 : data.find(b'"', 9)]
        if name in _OUTPUT_DELTAS:
            self.deltas += 1
        elif name in _TERMINAL or name == b"response.created":
            try:
                decoded = _response_event.decode(data)
            except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
                return
            if decoded.response is not None:
                self.model = decoded.response.model or self.model
                self.service_tier = _tier(decoded.response.service_tier) or self.service_tier
                if name in _TERMINAL:
                    # Only the terminal event's usage is the final count.
                    if decoded.response.usage is not None:
                        self.usage = decoded.response.usage.tokens(self.service_tier)
                    self.tool_calls = decoded.response.tool_calls()
            if name in _TERMINAL:
                self.finished = True
        elif name == b"error" or data.startswith(b'{"error"'):
            self.error = True
