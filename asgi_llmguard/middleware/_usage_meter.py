"""Metering an answer as it streams past.

`Meter` wraps the usage layer's ``send``: it scans the answer with `EventSplitter` and the
provider's meter, keeping only the usage and the last unfinished event, so the first byte is not
delayed and memory per stream stays bounded. When the provider's wire reports a stream's usage
only when asked and the client did not ask, the usage layer asks the upstream for it
(`Provider.ask_stream_usage`) and the meter removes it again (`Provider.strip_stream_usage`), so
the client sees what it would have seen without the gateway.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from asgi_llmguard.context import RequestContext
from asgi_llmguard.errors import sse_error_event
from asgi_llmguard.providers.eventstream import MIME_TYPE as EVENTSTREAM
from asgi_llmguard.providers.eventstream import FrameSplitter
from asgi_llmguard.providers.include_usage import object_end
from asgi_llmguard.providers.jsonarray import JsonArraySplitter
from asgi_llmguard.providers.metering import StreamMeter, units_from_json, usage_from_json
from asgi_llmguard.providers.sse import EventSplitter
from asgi_llmguard.routes import Endpoint
from asgi_llmguard.tokens import TokenUsage
from asgi_llmguard.types import Message, Send

# Non-streamed answers are decoded whole up to this size; past it only a tail is kept and the
# usage object is looked for there (providers put it last).
_JSON_WHOLE = 4 << 20
_JSON_TAIL = 64 << 10


class Meter:
    """Per-request metering state and the wrapped ``send``; never shared between requests."""

    __slots__ = (
        "_ctx",
        "_endpoint",
        "_held",
        "_json",
        "_json_size",
        "_send",
        "_splitter",
        "_tail_only",
        "meter",
        "sse",
        "status",
        "stream_error",
        "strip",
        "truncated",
        "ttfb",
    )

    def __init__(
        self,
        ctx: RequestContext,
        endpoint: Endpoint,
        send: Send,
        meter: StreamMeter | None,
        strip: Callable[[bytes], bytes] | None,
    ) -> None:
        self._ctx = ctx
        self._endpoint = endpoint
        self._send = send
        self.meter = meter
        #: Takes out of whole events what asking for the usage added (`strip_stream_usage`).
        self.strip = strip
        self._splitter: EventSplitter | JsonArraySplitter | FrameSplitter | None = None
        #: The unfinished event held back while stripping.
        self._held = b""
        self._json: list[bytes] | None = None
        self._json_size = 0
        self._tail_only = False
        #: The answer is a stream: server-sent events, or a JSON array metered piece by piece.
        self.sse = False
        self.status = 0
        self.ttfb: float | None = None
        self.truncated = False
        self.stream_error = False

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.body":
            await self._send(self._body(message))
        elif kind == "http.response.start":
            self.status = message["status"]
            self.ttfb = time.perf_counter() - self._ctx.start
            headers = message.get("headers", [])
            content_type = b""
            for name, value in headers:
                if name == b"content-type":
                    content_type = value
                    break
            self.sse = content_type.startswith(b"text/event-stream")
            if self.meter is not None and (
                self.sse or self._json_array(content_type) or content_type.startswith(EVENTSTREAM)
            ):
                if self.sse:
                    self._splitter = EventSplitter()
                    if self.strip:
                        message["headers"] = [(k, v) for k, v in headers if k != b"content-length"]
                elif content_type.startswith(EVENTSTREAM):  # an AWS event stream (Bedrock)
                    self._splitter = FrameSplitter()
                    self.strip = None
                    self.sse = True
                else:  # a stream written as one JSON array (Gemini without ``alt=sse``)
                    self._splitter = JsonArraySplitter()
                    self.strip = None
                    self.sse = True
            else:
                self.strip = None
                self.meter = None if not self.sse else self.meter
                endpoint = self._endpoint
                if self.status < 300 and (endpoint.billable or endpoint.unit is not None):
                    self._json = []
            await self._send(message)
        else:
            await self._send(message)

    def _json_array(self, content_type: bytes) -> bool:
        """The answer of a route that always streams comes as one streamed JSON array."""
        return (
            self._endpoint.streams
            and self.status < 300
            and content_type.startswith(b"application/json")
        )

    def _body(self, message: Message) -> Message:
        """Meter one body message; returns the message to pass on (re-framed when stripping)."""
        body: bytes = message.get("body", b"")
        more: bool = message.get("more_body", False)
        splitter = self._splitter
        if splitter is not None:
            meter = self.meter
            assert meter is not None
            events = splitter.feed(body) if body else []
            if self.strip:
                # Relay the upstream's bytes up to the end of the last whole event, with only
                # the usage the gateway asked for taken out; the unfinished tail waits.
                held = self._held + body if self._held else body
                if more:
                    pending = splitter.pending
                    if pending:
                        cut = len(held) - pending
                        held, self._held = held[:cut], held[cut:]
                    else:
                        self._held = b""
                else:
                    self._held = b""
                body = self.strip(held)
                message = {"type": "http.response.body", "body": body, "more_body": more}
            if not more:
                events += splitter.close()
            for event in events:
                meter.event(event)
            if not more and not meter.finished:
                if meter.error:
                    self.stream_error = True
                elif self._ctx.upstream_error is None and not self._ctx.disconnected:
                    # The upstream ended the stream cleanly but without its end marker: say so.
                    self.truncated = True
                    if type(splitter) is FrameSplitter:
                        note = self._endpoint.dialect.stream_error(
                            "The upstream ended the stream before it was complete."
                        )
                        message = {"type": "http.response.body", "body": body + note}
                    elif type(splitter) is EventSplitter:
                        note = sse_error_event(
                            "The upstream ended the stream before it was complete.",
                            dialect=self._endpoint.dialect,
                        )
                        message = {"type": "http.response.body", "body": body + note}
                    elif (
                        type(splitter) is JsonArraySplitter
                        and splitter.after_last == 0
                        and not splitter.ended
                        and self._endpoint.dialect.name == "google"
                    ):
                        # Relayed whole elements at a time, the array stops after its last
                        # one: end it with Google's error element.
                        element = self._endpoint.dialect.error_element(
                            "The upstream ended the stream before it was complete."
                        )
                        if splitter.elements:
                            note = b"\n,\r\n" + element + b"\n]"
                        else:
                            note = b"[" + element + b"]"
                        message = {"type": "http.response.body", "body": body + note}
        elif self._json is not None and body:
            self._collect(body)
        return message

    def _collect(self, body: bytes) -> None:
        parts = self._json
        assert parts is not None
        parts.append(body)
        self._json_size += len(body)
        if self._json_size > _JSON_WHOLE:
            tail = b"".join(parts)[-_JSON_TAIL:]
            parts[:] = [tail]
            self._json_size = len(tail)
            self._tail_only = True

    @property
    def answer_bytes(self) -> int:
        """The size of the non-streamed answer body kept for metering (0 for streams)."""
        return self._json_size if self._json is not None else 0

    @property
    def deltas(self) -> int:
        """Output events relayed so far: the estimate of output tokens when usage is missing."""
        return self.meter.deltas if self.meter is not None else 0

    @property
    def service_tier(self) -> str | None:
        """The service tier a stream's events reported, even before (or without) its usage."""
        return self.meter.service_tier if self.meter is not None else None

    @property
    def estimated(self) -> bool:
        """The stream's usage holds an estimated output count (see `StreamMeter.estimated`)."""
        return self.meter is not None and self.meter.estimated

    def units(self, unit: str) -> float | None:
        """The ``unit``s a whole non-streamed answer reports (``None``: it says nothing)."""
        if self._json and not self._tail_only:
            return units_from_json(unit, b"".join(self._json))
        return None

    def result(self) -> tuple[TokenUsage | None, str | None, dict[str, int]]:
        """The provider's usage (or ``None``), the served model, and server-side tool calls."""
        meter = self.meter
        if meter is not None:
            return meter.usage, meter.model, meter.tool_calls
        if self._json:
            data = b"".join(self._json)
            if self._tail_only:
                data = usage_slice(data)
            return usage_from_json(self._endpoint, data)
        return None, None, {}


def usage_slice(tail: bytes) -> bytes:
    """``{"usage": {...}}`` cut from the tail of a large JSON answer (usage comes last), with
    the answer's ``service_tier`` when the tail has it (OpenAI puts it after the usage)."""
    at = tail.rfind(b'"usage"')
    if at < 0:
        return b""
    start = tail.find(b"{", at)
    if start < 0:
        return b""
    end = object_end(tail, start)
    if end < 0:
        return b""
    tier = _SERVICE_TIER.search(tail, end)
    extra = b'"service_tier":"' + tier.group(1) + b'",' if tier else b""
    return b"{" + extra + b'"usage":' + tail[start:end] + b"}"


_SERVICE_TIER = re.compile(rb'"service_tier"\s*:\s*"([A-Za-z0-9_.-]{1,64})"')
