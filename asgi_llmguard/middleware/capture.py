"""Capture request and response bodies, for the keys and routes that ask for it.

Off by default. A request is captured when its key's policy says ``capture = true`` or its
operation is in ``routes``; every other request goes to the next app with the very ``receive``
and ``send`` it came with, so capture costs one dict lookup and a set test when it is off.

When on, the exchange is teed as it passes, never held up: the request body is taken from
``ctx.body`` (or copied from ``receive`` as the app below reads it), the response's status,
headers and body chunks are copied on their way out, up to ``max_bytes`` per body, and then only
counted. When the response ends (or the client leaves, or the task is cancelled) the copy is put
on a bounded queue; one background task turns each into a redacted `CaptureRecord` and hands it to
the sink. Redaction, encoding and writing all happen there, after the response, and a full queue
drops the capture (counted in ``stats.dropped``) rather than slowing a request: captures are
diagnostics, not the usage ledger.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection

from asgi_llmguard.capture.record import BodyEncoding, CaptureOutcome, CaptureRecord, encode_body
from asgi_llmguard.capture.redact import Redactor
from asgi_llmguard.capture.sinks import CaptureSink
from asgi_llmguard.capture.writer import CaptureStats, CaptureWriter
from asgi_llmguard.context import InvalidBody, RequestContext, get_context
from asgi_llmguard.errors import ConfigurationError
from asgi_llmguard.lifecycle import Resource, pass_lifespan
from asgi_llmguard.types import ASGIApp, Message, Receive, Scope, Send

DEFAULT_MAX_BYTES = 64 * 1024


class CaptureMiddleware(Resource):
    """Tee request and response bodies of selected requests to a sink.

    - ``sink``: `JSONLCaptureSink`, `SQLiteCaptureSink`, or any ``async def sink(record)``.
    - ``routes``: operations captured for every key, e.g. ``{"chat.completions"}``; requests
      whose key has ``capture = true`` are captured on every route.
    - ``max_bytes``: how much of each body (request, response) is kept (default 64 KiB).
    - ``redact_headers``: header names redacted in addition to the credential headers, which
      always are (``Authorization``, ``x-api-key``, ``api-key``, cookies, ...).
    - ``enabled``: ``False`` turns capture off for everyone, keys included.
    - ``queue_size``: captures waiting for the sink; past it they are dropped and counted.
    - ``close_timeout``: how long `aclose` waits for the queue to drain before giving up.

    The writer task starts with the first capture. `aclose` (run on ASGI lifespan shutdown when
    the middleware is used alone, by the `Gateway` otherwise) drains the queue, then closes the
    sink if it has an ``aclose``.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        sink: CaptureSink,
        routes: Collection[str] | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
        redact_headers: Collection[str] = (),
        enabled: bool = True,
        queue_size: int = 256,
        close_timeout: float = 10.0,
    ) -> None:
        if not callable(sink):
            raise ConfigurationError(f"sink must be an async callable taking a record: {sink!r}")
        if isinstance(routes, str | bytes):
            raise ConfigurationError("routes must be a collection of operations, not one string")
        if isinstance(redact_headers, str | bytes):
            raise ConfigurationError("redact_headers must be a collection of header names")
        if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 0:
            raise ConfigurationError(f"max_bytes must be a non-negative int, not {max_bytes!r}")
        if not isinstance(queue_size, int) or isinstance(queue_size, bool) or queue_size < 1:
            raise ConfigurationError(f"queue_size must be a positive int, not {queue_size!r}")
        if not close_timeout > 0:
            raise ConfigurationError(f"close_timeout must be positive, not {close_timeout!r}")
        self.app = app
        self.sink = sink
        self.routes = frozenset(routes or ())
        self.max_bytes = max_bytes
        self.enabled = bool(enabled)
        self.queue_size = queue_size
        self.close_timeout = close_timeout
        self.writer = CaptureWriter(
            sink,
            redactor=Redactor(redact_headers),
            queue_size=queue_size,
            close_timeout=close_timeout,
        )
        #: Counters: ``captured``, ``dropped`` (queue full), ``written``, ``failed``.
        self.stats: CaptureStats = self.writer.stats

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http":
            if kind == "lifespan":
                await pass_lifespan(self.app, self, scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        if not self.enabled:
            await self.app(scope, receive, send)
            return
        ctx = get_context(scope)
        key = ctx.key
        route = ctx.route
        if not (
            (key is not None and key.capture)
            or (route is not None and route.endpoint.operation in self.routes)
        ):
            await self.app(scope, receive, send)
            return

        tap = _Tap(scope, ctx, send, self.max_bytes)
        if ctx.body is None:
            tap.upstream_receive = receive
            receive = tap.receive
        failure: CaptureOutcome | None = None
        try:
            await self.app(scope, receive, tap.send)
        except asyncio.CancelledError:
            failure = "cancelled"
            raise
        except BaseException:
            failure = "error"
            raise
        finally:
            # Synchronous on purpose: nothing here can be interrupted by a cancellation.
            tap.finish(ctx, failure)
            self.writer.submit(tap)

    async def aclose(self) -> None:
        """Write what is queued (waiting up to ``close_timeout``), then close the sink."""
        await self.writer.aclose()


class _Tap:
    """The copy of one exchange: filled on the request path, turned into a record later."""

    __slots__ = (
        "_send",
        "api",
        "client_request_id",
        "complete",
        "credential_id",
        "disconnected",
        "duration",
        "endpoint",
        "key_id",
        "max_bytes",
        "method",
        "model",
        "outcome",
        "path",
        "query",
        "request_headers",
        "request_id",
        "request_parts",
        "request_size",
        "response_headers",
        "response_parts",
        "response_size",
        "started_at",
        "status",
        "upstream_error",
        "upstream_receive",
    )

    def __init__(self, scope: Scope, ctx: RequestContext, send: Send, max_bytes: int) -> None:
        self._send = send
        self.upstream_receive: Receive | None = None
        self.max_bytes = max_bytes
        self.request_id = ctx.request_id
        self.client_request_id = ctx.client_request_id
        self.method = ctx.method
        self.path = ctx.path
        self.query: bytes = scope.get("query_string", b"")
        self.request_headers: list[tuple[bytes, bytes]] = scope["headers"]
        self.started_at = ctx.started_at
        self.request_parts: list[bytes] = []
        self.request_size = 0
        self.response_parts: list[bytes] = []
        self.response_size = 0
        self.response_headers: list[tuple[bytes, bytes]] = []
        self.status = 0
        self.complete = False
        self.disconnected = False
        self.outcome: CaptureOutcome = "complete"
        self.key_id: str | None = None
        self.api: str | None = None
        self.endpoint: str | None = None
        self.model: str | None = None
        self.credential_id: str | None = None
        self.upstream_error: str | None = None
        self.duration = 0.0

    async def receive(self) -> Message:
        assert self.upstream_receive is not None
        message = await self.upstream_receive()
        kind = message["type"]
        if kind == "http.request":
            body = message.get("body", b"")
            if body:
                size = self.request_size
                room = self.max_bytes - size
                if room > 0:
                    self.request_parts.append(body if len(body) <= room else body[:room])
                self.request_size = size + len(body)
        elif kind == "http.disconnect":
            self.disconnected = True
        return message

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.body":
            body = message.get("body", b"")
            if body:
                size = self.response_size
                room = self.max_bytes - size
                if room > 0:
                    self.response_parts.append(body if len(body) <= room else body[:room])
                self.response_size = size + len(body)
            await self._send(message)
            if not message.get("more_body", False):
                self.complete = True
            return
        if kind == "http.response.start":
            self.status = message["status"]
            self.response_headers = message.get("headers", [])
        await self._send(message)

    def finish(self, ctx: RequestContext, failure: CaptureOutcome | None) -> None:
        """Take what the record needs from the context, so the queue holds no request body."""
        self.duration = time.perf_counter() - ctx.start
        key = ctx.key
        self.key_id = key.key_id if key is not None else None
        route = ctx.route
        if route is not None:
            self.api = route.endpoint.api
            self.endpoint = route.endpoint.operation
        body = ctx.body
        if body is not None:
            self.request_size = len(body)
            self.request_parts = [body[: self.max_bytes]]
        try:
            self.model = ctx.model
        except InvalidBody:
            self.model = None
        self.credential_id = ctx.credential_id
        self.upstream_error = ctx.upstream_error
        if self.complete:
            self.outcome = "complete"
        elif ctx.disconnected or self.disconnected:
            self.outcome = "disconnected"
        else:
            self.outcome = failure or "error"

    def record(self, redactor: Redactor) -> CaptureRecord:
        secrets: set[bytes] = set()
        request_headers = redactor.headers(self.request_headers, secrets)
        response_headers = redactor.headers(self.response_headers, secrets)
        request_body, request_encoding, request_truncated = _body(
            self.request_parts, self.request_size, redactor, secrets
        )
        response_body, response_encoding, response_truncated = _body(
            self.response_parts, self.response_size, redactor, secrets
        )
        stream = any(
            name == "content-type" and value.startswith("text/event-stream")
            for name, value in response_headers
        )
        return CaptureRecord(
            request_id=self.request_id,
            client_request_id=self.client_request_id,
            started_at=self.started_at,
            duration=self.duration,
            key_id=self.key_id,
            api=self.api,
            endpoint=self.endpoint,
            model=self.model,
            method=self.method,
            path=self.path,
            query=redactor.query(self.query.decode("latin-1"), secrets),
            status=self.status,
            outcome=self.outcome,
            incomplete=self.outcome != "complete",
            stream=stream,
            credential_id=self.credential_id,
            upstream_error=self.upstream_error,
            request_headers=request_headers,
            request_body=request_body,
            request_body_encoding=request_encoding,
            request_body_bytes=self.request_size,
            request_truncated=request_truncated,
            response_headers=response_headers,
            response_body=response_body,
            response_body_encoding=response_encoding,
            response_body_bytes=self.response_size,
            response_truncated=response_truncated,
        )


def _body(
    parts: list[bytes], size: int, redactor: Redactor, secrets: set[bytes]
) -> tuple[str, BodyEncoding, bool]:
    data = b"".join(parts)
    truncated = size > len(data)
    data = redactor.body(data, secrets, truncated=truncated)
    text, encoding = encode_body(data, truncated=truncated)
    return text, encoding, truncated
