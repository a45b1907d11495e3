"""Usage in the Gemini API's wire format (``GenerateContentResponse.usageMetadata``).

``usageMetadata`` has ``promptTokenCount`` (the whole prompt, the cached part included),
``cachedContentTokenCount`` (the part read from a context cache), ``toolUsePromptTokenCount``
(the results of tools the model ran, prompt too), ``candidatesTokenCount`` (the answer) and
``thoughtsTokenCount`` (thinking, billed as output but not in ``candidatesTokenCount``). The
served model is ``modelVersion``.

Streamed (``streamGenerateContent``), every piece is a ``GenerateContentResponse`` and carries
``usageMetadata`` with the counts so far; the last one's are final. With ``alt=sse`` each piece is
one ``data:`` event; without it the pieces are the elements of one JSON array, which
`JsonArraySplitter` hands to the meter one by one. An ``error`` member in a piece is an error.
A piece whose candidate has a ``finishReason`` ends the answer.
"""

from __future__ import annotations

import msgspec

from asgi_llmguard.tokens import TokenUsage


class _UsageMetadata(msgspec.Struct):
    promptTokenCount: int | None = None
    candidatesTokenCount: int | None = None
    cachedContentTokenCount: int | None = None
    thoughtsTokenCount: int | None = None
    toolUsePromptTokenCount: int | None = None

    def tokens(self) -> TokenUsage:
        thoughts = self.thoughtsTokenCount or 0
        return TokenUsage(
            input_tokens=(self.promptTokenCount or 0) + (self.toolUsePromptTokenCount or 0),
            output_tokens=(self.candidatesTokenCount or 0) + thoughts,
            cached_input_tokens=self.cachedContentTokenCount or 0,
            reasoning_tokens=thoughts,
        )


class _Candidate(msgspec.Struct):
    finishReason: str | None = None


class _Response(msgspec.Struct):
    usageMetadata: _UsageMetadata | None = None
    modelVersion: str | None = None
    candidates: list[_Candidate] | None = None
    error: dict[str, object] | None = None


_response = msgspec.json.Decoder(_Response)


def usage_from_json(body: bytes) -> tuple[TokenUsage | None, str | None, dict[str, int]]:
    """Usage and served model of a ``generateContent`` answer (or any piece of a stream)."""
    try:
        decoded = _response.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None, None, {}
    usage = decoded.usageMetadata
    return (usage.tokens() if usage is not None else None), decoded.modelVersion, {}


class _Counted(msgspec.Struct):
    totalTokens: int | None = None


_counted = msgspec.json.Decoder(_Counted)


def counted_tokens(body: bytes) -> float | None:
    """``countTokens``'s ``totalTokens``: what the prompt would count, not tokens consumed."""
    try:
        total = _counted.decode(body).totalTokens
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None
    return float(total) if total is not None and 0 <= total < 1 << 53 else None


def _payload(event: bytes) -> bytes:
    """The JSON of one piece: an SSE event's ``data:`` lines, or a JSON array's element."""
    if not event.startswith(b"data:"):
        stripped = event.lstrip()
        if not stripped.startswith(b"data:"):
            return event
        event = stripped
    data = []
    for line in event.splitlines():
        if line.startswith(b"data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(b" ") else value)
    return b"\n".join(data)


class GenerateStreamMeter:
    """Meters ``streamGenerateContent``, SSE events or JSON-array elements alike."""

    __slots__ = ("_usage", "deltas", "error", "finished", "model", "service_tier", "tool_calls")

    def __init__(self) -> None:
        self._usage: _UsageMetadata | None = None
        self.model: str | None = None
        self.finished = False
        self.error = False
        self.deltas = 0
        self.tool_calls: dict[str, int] = {}
        self.service_tier: str | None = None

    @property
    def usage(self) -> TokenUsage | None:
        return self._usage.tokens() if self._usage is not None else None

    @property
    def estimated(self) -> bool:
        # Every piece carries the counts so far: a cut stream's last ones are what was produced.
        return False

    def event(self, event: bytes) -> None:
        try:
            piece = _response.decode(_payload(event))
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
            return
        if piece.error is not None:
            self.error = True
            return
        if piece.usageMetadata is not None:
            self._usage = piece.usageMetadata
        if piece.modelVersion:
            self.model = piece.modelVersion
        if piece.candidates:
            self.deltas += 1
            if any(c.finishReason for c in piece.candidates):
                self.finished = True
