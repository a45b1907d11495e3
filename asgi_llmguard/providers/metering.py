"""Which usage reader fits which route: the one entry point the usage layer calls."""

from __future__ import annotations

from typing import Protocol

from asgi_llmguard.providers import anthropic_usage, openai_usage
from asgi_llmguard.routes import Endpoint
from asgi_llmguard.tokens import TokenUsage


class StreamMeter(Protocol):
    """Reads a response stream one whole event at a time (see `EventSplitter`)."""

    #: The provider's usage, once an event carried it (its output count completed by an
    #: estimate while the provider's final count has not arrived; see ``estimated``).
    @property
    def usage(self) -> TokenUsage | None: ...

    #: ``usage`` holds the gateway's estimate of the output: the stream ended before the
    #: provider's final count (a placeholder or running count is never taken as final).
    @property
    def estimated(self) -> bool: ...

    model: str | None
    #: The provider's end-of-stream marker was seen (``[DONE]``, ``message_stop``, ...).
    finished: bool
    #: An error event was seen in the stream.
    error: bool
    #: Events that carried generated output (an estimate of output tokens so far).
    deltas: int
    #: Server-side tool calls by tool type, billed per call (``{"web_search": 2}``).
    tool_calls: dict[str, int]
    #: The service tier the stream's events said served it so far (also on ``usage``).
    service_tier: str | None

    def event(self, event: bytes) -> None: ...


def stream_meter(endpoint: Endpoint) -> StreamMeter | None:
    """A meter for a streamed answer of this endpoint, or ``None`` if it does not stream."""
    if endpoint.api == "anthropic":
        return anthropic_usage.MessagesStreamMeter() if endpoint.operation == "messages" else None
    if endpoint.operation in ("chat.completions", "completions"):
        return openai_usage.ChatStreamMeter()
    if endpoint.operation == "responses":
        return openai_usage.ResponsesStreamMeter()
    if endpoint.operation == "audio.transcriptions":
        return openai_usage.TranscriptionStreamMeter()
    return None


def usage_from_json(
    endpoint: Endpoint, body: bytes
) -> tuple[TokenUsage | None, str | None, dict[str, int]]:
    """Usage, served model and server-side tool calls from a non-streamed JSON answer."""
    if endpoint.api == "anthropic":
        return anthropic_usage.usage_from_json(body)
    return openai_usage.usage_from_json(body)


def units_from_json(unit: str, body: bytes) -> float | None:
    """How many ``unit``s a non-streamed answer reports, or ``None`` if it says nothing."""
    return openai_usage.units_from_json(unit, body)
