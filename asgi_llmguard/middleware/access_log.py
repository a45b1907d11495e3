"""Request ids and one structured access-log line per request.

Request ids: the request's identity is always the id the classifier generated (``req_...``),
returned as ``x-llmguard-request-id``; no value a caller chose can collide with another record.
A caller's well-formed ``x-request-id`` is kept (when trusted) as ``client_request_id``: echoed
back as ``x-request-id``, sent upstream, and recorded beside the gateway's id. Without one, the
gateway's id is returned as ``x-request-id`` too. Both headers replace any the upstream sent.

The line: one JSON object (orjson), written through the standard `logging` module when the
response ends, whatever ended it (completion, client disconnect, an exception), so operators route
it with their own handlers. When the logger is not enabled for the level, nothing is measured or
encoded. Headers and bodies are never logged; the key appears only as its ``key_id``.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Any

import orjson

from asgi_llmguard.context import (
    GATEWAY_REQUEST_ID_HEADER,
    SCOPE_KEY,
    InvalidBody,
    RequestContext,
    get_context,
)
from asgi_llmguard.errors import ConfigurationError
from asgi_llmguard.types import ASGIApp, Headers, Message, Receive, Scope, Send
from asgi_llmguard.wsession import SESSION_KEY

# What a caller's id may look like: short, and nothing that could break a log line, a header or a
# query in the operator's log tooling.
_VALID_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+")


_GATEWAY_HEADER = GATEWAY_REQUEST_ID_HEADER.encode("latin-1")


def _with_ids(headers: Headers, ids: Headers) -> Headers:
    """``headers`` with ``ids`` (the two id headers) replacing any of the same names."""
    names = (ids[0][0], ids[1][0])
    out = [(k, v) for k, v in headers if k not in names]
    out.extend(ids)
    return out


class _IdSend:
    """The wrapped ``send`` when no line is written: only sets the id headers."""

    __slots__ = ("_ids", "_send")

    def __init__(self, send: Send, ids: Headers) -> None:
        self._send = send
        self._ids = ids

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": _with_ids(message.get("headers", []), self._ids)}
        await self._send(message)


class _TimedSend:
    """The wrapped ``send`` when a line is written: sets the id headers, notes status and TTFB."""

    __slots__ = ("_ids", "_send", "_start", "status", "ttfb")

    def __init__(self, send: Send, ids: Headers, start: float) -> None:
        self._send = send
        self._ids = ids
        self._start = start
        self.status: int | None = None
        self.ttfb: float | None = None

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.ttfb = time.perf_counter() - self._start
            message = {**message, "headers": _with_ids(message.get("headers", []), self._ids)}
        await self._send(message)


class AccessLogMiddleware:
    """Return the request ids as headers, keep the caller's, and log one JSON line per request.

    Place it right inside `ClassifyMiddleware`, so the line covers every later refusal and the
    whole upstream exchange, and the caller's id reaches every record the later layers write.

    - ``logger_name``, ``level``: where the line goes (``logging.getLogger(logger_name)``, at
      ``level``); a logger not enabled for ``level`` costs only the id headers.
    - ``trust_request_id``: keep the caller's ``request_id_header`` as ``client_request_id``
      when it is 1-128 characters of ``A-Z a-z 0-9 . _ : -``; otherwise (or when ``False``) the
      caller's value is ignored. The request's own id is always the generated one.
    - ``request_id_header``: the header read from the caller and echoed on the response (the
      caller's id, else the generated one); ``x-llmguard-request-id`` always carries the
      generated id.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        logger_name: str = "asgi_llmguard.access",
        level: int = logging.INFO,
        trust_request_id: bool = True,
        request_id_header: str = "x-request-id",
    ) -> None:
        if not isinstance(level, int) or isinstance(level, bool) or level <= 0:
            raise ConfigurationError(f"level must be a positive logging level, not {level!r}")
        name = request_id_header.lower()
        if not _HEADER_NAME.fullmatch(name):
            raise ConfigurationError(
                f"request_id_header must be an HTTP header name, not {request_id_header!r}"
            )
        if name == GATEWAY_REQUEST_ID_HEADER:
            raise ConfigurationError(
                f"request_id_header cannot be {GATEWAY_REQUEST_ID_HEADER!r}: the gateway's own "
                "request id is returned in that header"
            )
        self.app = app
        self._logger = logging.getLogger(logger_name)
        self._level = level
        self._trust = trust_request_id
        self._header = name.encode("latin-1")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket" and self._logger.isEnabledFor(self._level):
                await self._session(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        ctx: RequestContext = scope.get(SCOPE_KEY) or get_context(scope)
        rid = ctx.request_id.encode("latin-1")
        echo = rid
        if self._trust:
            header = self._header
            for name, value in scope["headers"]:
                if name == header:
                    if _VALID_ID.fullmatch(value):
                        ctx.client_request_id = value.decode("ascii")
                        echo = value
                    break
        ids = [(self._header, echo), (_GATEWAY_HEADER, rid)]

        if not self._logger.isEnabledFor(self._level):
            await self.app(scope, receive, _IdSend(send, ids))
            return

        timed = _TimedSend(send, ids, ctx.start)
        error: str | None = None
        try:
            await self.app(scope, receive, timed)
        except Exception as exc:
            error = type(exc).__name__
            raise
        finally:
            # Logging must never turn a served request into a failed one.
            try:
                self._log(ctx, scope, timed, error)
            except Exception:
                self._logger.exception("could not write the access log line")

    async def _session(self, scope: Scope, receive: Receive, send: Send) -> None:
        """One line per WebSocket session, written when it ends: its status (101 once accepted,
        else the refusal's), its close code and how many turns it carried."""
        ctx: RequestContext = scope.get(SCOPE_KEY) or get_context(scope)
        seen: dict[str, int] = {}

        def noting(message: Message) -> Awaitable[None]:
            kind = message["type"]
            if kind == "websocket.send":
                return send(message)
            if kind == "websocket.accept":
                seen["status"] = 101
                message = {
                    **message,
                    "headers": [
                        *message.get("headers", ()),
                        (_GATEWAY_HEADER, ctx.request_id.encode()),
                    ],
                }
            elif kind == "websocket.http.response.start":
                seen["status"] = message["status"]
            elif kind == "websocket.close":
                seen.setdefault("status", 403)
                seen["close"] = message.get("code", 1000)
            return send(message)

        error: str | None = None
        try:
            await self.app(scope, receive, noting)
        except Exception as exc:
            error = type(exc).__name__
            raise
        finally:
            try:
                timed = _TimedSend(send, [], ctx.start)
                timed.status = seen.get("status")
                session = scope.get(SESSION_KEY)
                extra = {
                    "model": session.model if session is not None else None,
                    "tokens": session.tokens if session is not None else None,
                    "websocket": True,
                    "turns": session.turns if session is not None else 0,
                    "close_code": seen.get("close", session.close_code if session else None),
                }
                self._log(ctx, scope, timed, error, extra)
            except Exception:
                self._logger.exception("could not write the access log line")

    def _log(
        self,
        ctx: RequestContext,
        scope: Scope,
        timed: _TimedSend,
        error: str | None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        route = ctx.route
        endpoint = route.endpoint if route is not None else None
        try:
            model = ctx.model if route is not None else None
        except InvalidBody:
            model = None
        key = ctx.key
        client = scope.get("client")
        status = timed.status
        if status is None and error is not None:
            status = 500  # what the ASGI server answers for an app that raised before answering
        ttfb = timed.ttfb
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(ctx.started_at, UTC),
            "request_id": ctx.request_id,
            "client_request_id": ctx.client_request_id,
            "method": ctx.method,
            "path": ctx.path,
            "endpoint": endpoint.operation if endpoint is not None else None,
            "provider": endpoint.api if endpoint is not None else None,
            "key_id": key.key_id if key is not None else None,
            "model": model,
            "status": status,
            "latency_ms": round((time.perf_counter() - ctx.start) * 1000, 3),
            "ttfb_ms": round(ttfb * 1000, 3) if ttfb is not None else None,
            "tokens": ctx.usage_tokens,
            "credential_id": ctx.credential_id,
            "upstream_error": ctx.upstream_error,
            "disconnected": ctx.disconnected,
            "client_ip": client[0] if client else None,
            "error": error,
        }
        if extra:
            line.update(extra)
        self._logger.log(self._level, orjson.dumps(line, option=orjson.OPT_UTC_Z).decode("utf-8"))
