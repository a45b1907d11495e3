"""Which usage reader fits which route: the one entry point the usage layer calls."""

from __future__ import annotations

from asgi_llmguard.providers import OWNERS, gemini_usage, openai_usage
from asgi_llmguard.providers.base import StreamMeter
from asgi_llmguard.routes import COUNTED_TOKEN, Endpoint
from asgi_llmguard.tokens import TokenUsage

__all__ = ["Served", "StreamMeter", "stream_meter", "units_from_json", "usage_from_json"]


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


class Served:
    """What the upstream said about a translated answer, in its own format, for the usage
    layer: the served API, its usage and model, server-side tool calls, and the request fields
    the translation left out."""

    __slots__ = ("api", "dropped", "endpoint", "json", "meter")

    def __init__(self, api: str, endpoint: Endpoint, dropped: list[str]) -> None:
        self.api = api
        self.endpoint = endpoint
        self.dropped = dropped
        self.meter: StreamMeter | None = None
        self.json = b""

    def result(self) -> tuple[TokenUsage | None, str | None, dict[str, int]] | None:
        """The upstream's usage, model and tool calls; ``None``: nothing was metered."""
        meter = self.meter
        if meter is not None:
            return meter.usage, meter.model, meter.tool_calls
        if self.json:
            return usage_from_json(self.endpoint, self.json)
        return None

    @property
    def estimated(self) -> bool:
        return self.meter is not None and self.meter.estimated
