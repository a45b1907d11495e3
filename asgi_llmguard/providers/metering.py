"""Which usage reader fits which route: the one entry point the usage layer calls."""

from __future__ import annotations

from asgi_llmguard.providers import OWNERS, gemini_usage, openai_usage
from asgi_llmguard.providers.base import StreamMeter
from asgi_llmguard.routes import COUNTED_TOKEN, Endpoint
from asgi_llmguard.tokens import TokenUsage

__all__ = ["StreamMeter", "stream_meter", "units_from_json", "usage_from_json"]


# Each API's readers, looked up once per answer (bound once, here).
_STREAM_METERS = {api: provider.stream_meter for api, provider in OWNERS.items()}
_JSON_READERS = {api: provider.usage_from_json for api, provider in OWNERS.items()}


def stream_meter(endpoint: Endpoint) -> StreamMeter | None:
    """A meter for a streamed answer of this endpoint, or ``None`` if it does not stream."""
    return _STREAM_METERS[endpoint.api](endpoint)


def usage_from_json(
    endpoint: Endpoint, body: bytes
) -> tuple[TokenUsage | None, str | None, dict[str, int]]:
    """Usage, served model and server-side tool calls from a non-streamed JSON answer."""
    return _JSON_READERS[endpoint.api](body)


def units_from_json(unit: str, body: bytes) -> float | None:
    """How many ``unit``s a non-streamed answer reports, or ``None`` if it says nothing."""
    if unit == COUNTED_TOKEN:
        return gemini_usage.counted_tokens(body)
    return openai_usage.units_from_json(unit, body)
