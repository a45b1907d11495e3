"""Classify each request once: endpoint, provider, route path, request id, start time.

Everything after this layer reads those facts from the `RequestContext` instead of re-deriving
them. Unknown routes are refused here, before any other layer runs and before the body is read,
so no path spelling can reach a route that the later layers would not recognise.
"""

from __future__ import annotations

import re

from asgi_llmguard.context import SCOPE_KEY, RequestContext, take_query_key
from asgi_llmguard.errors import ConfigurationError, send_error, send_route_error
from asgi_llmguard.routes import APIS, Api, RouteNotFound, dialect_of_path, passthrough_route
from asgi_llmguard.types import ASGIApp, Receive, Scope, Send
from asgi_llmguard.wsession import denial_send

# RFC 9112 section 3.2 / RFC 3986 section 3.2.2: Host = uri-host [ ":" port ], where uri-host is
# an IP-literal in brackets or a reg-name (which also covers IPv4 addresses).
_REG_NAME = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-._~!$&'()*+,;="
_host_syntax = re.compile(
    rb"(?:\[[0-9A-Za-z:.+!$&'()*,;=~_-]+\]|(?:[0-9A-Za-z._~!$&'()*+,;=-]|%[0-9A-Fa-f]{2})*)"
    rb"(?::[0-9]*)?"
).fullmatch


def _valid_host(host: bytes) -> bool:
    """RFC 3986 host with optional port; the usual name or address (and port) by a byte table.

    ``strip`` with the allowed bytes leaves nothing exactly when every byte is allowed, and then
    returns the shared empty bytes object: the common case allocates nothing.
    """
    if not host.strip(_REG_NAME):
        return True
    name, _, port = host.rpartition(b":")
    if (not port or port.isdigit()) and not name.strip(_REG_NAME):
        return True
    return _host_syntax(host) is not None  # IP literals, percent-encoding, or malformed


def _host_problem(host: bytes | None, scope: Scope) -> str | None:
    """Why ``host`` (the one Host header, `_TWICE`, or None) is unacceptable, or None."""
    if host is None:
        return _NO_HOST if scope.get("http_version") == "1.1" else None
    if host is _TWICE:
        return _TWO_HOSTS
    return None if _valid_host(host) else _BAD_HOST


#: Stands for a second Host header; not a valid host, so the fast path never accepts it.
_TWICE = b"\x00"
_TWO_HOSTS = "The request has more than one Host header."
_NO_HOST = "The request has no Host header."
_BAD_HOST = "The request's Host header is malformed."


class ClassifyMiddleware:
    """Create the request's `RequestContext`; refuse a malformed or missing Host (400), unknown
    routes (404) and methods (405).

    ``passthrough``: forward unknown paths under ``/v1/`` to the upstream serving this API
    (``"openai"`` or ``"anthropic"``) instead of answering 404. Such requests are forwarded
    unmetered; every other layer (keys, limits) still applies.
    """

    def __init__(self, app: ASGIApp, *, passthrough: Api | None = None) -> None:
        # Bedrock Runtime has no ``/v1/`` paths: its upstream URL is built from the model route.
        allowed = [api for api in APIS if api != "bedrock"]
        if passthrough is not None and passthrough not in allowed:
            raise ConfigurationError(
                f"passthrough must be None or one of {', '.join(allowed)}, not {passthrough!r}"
            )
        self.app = app
        self._passthrough = passthrough_route(passthrough) if passthrough else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http":
            if kind != "websocket":
                await self.app(scope, receive, send)
                return
            send = denial_send(scope, send)  # a WebSocket upgrade is refused the same way
        ctx = scope.get(SCOPE_KEY)
        if ctx is None:  # an outer layer (the access log) may have created it already
            ctx = scope[SCOPE_KEY] = RequestContext.from_scope(scope)
        # The Host header, in one pass; a plain name (no port) passes one byte-table test and
        # costs no call, anything else (a port, an IP literal, none, two) gets the full check.
        host = None
        for name, value in scope["headers"]:
            if name == b"host":
                if host is not None:
                    host = _TWICE
                    break
                host = value
        if host is None or host.strip(_REG_NAME):
            host_error = _host_problem(host, scope)
            if host_error is not None:
                await send_error(send, 400, host_error, dialect=dialect_of_path(ctx.path))
                return
        if ctx.route is None:
            error = ctx.route_error
            passthrough = self._passthrough
            if (
                passthrough is not None
                and kind == "http"
                and isinstance(error, RouteNotFound)
                and ctx.path.startswith("/v1/")
            ):
                ctx.route = passthrough
                ctx.route_error = None
                if passthrough.endpoint.api == "gemini":
                    take_query_key(scope)  # a key in the URL is never forwarded or recorded
            else:
                await send_route_error(send, ctx.method, ctx.path, error)
                return
        await self.app(scope, receive, send)
