"""Classify each request once: endpoint, provider, route path, request id, start time.

Everything after this layer reads those facts from the `RequestContext` instead of re-deriving
them. Unknown routes are refused here, before any other layer runs and before the body is read,
so no path spelling can reach a route that the later layers would not recognise.
"""

from __future__ import annotations

from asgi_llmguard.context import SCOPE_KEY, RequestContext
from asgi_llmguard.errors import ConfigurationError, send_route_error
from asgi_llmguard.routes import Api, RouteNotFound, passthrough_route
from asgi_llmguard.types import ASGIApp, Receive, Scope, Send


class ClassifyMiddleware:
    """Create the request's `RequestContext` and refuse unknown routes (404) and methods (405).

    ``passthrough``: forward unknown paths under ``/v1/`` to the upstream serving this API
    (``"openai"`` or ``"anthropic"``) instead of answering 404. Such requests are forwarded
    unmetered; every other layer (keys, limits) still applies.
    """

    def __init__(self, app: ASGIApp, *, passthrough: Api | None = None) -> None:
        if passthrough not in (None, "openai", "azure", "anthropic"):
            raise ConfigurationError(
                f"passthrough must be None, 'openai' or 'anthropic', not {passthrough!r}"
            )
        self.app = app
        self._passthrough = passthrough_route(passthrough) if passthrough else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ctx = scope.get(SCOPE_KEY)
        if ctx is None:  # an outer layer (the access log) may have created it already
            ctx = scope[SCOPE_KEY] = RequestContext.from_scope(scope)
        if ctx.route is None:
            error = ctx.route_error
            passthrough = self._passthrough
            if (
                passthrough is not None
                and isinstance(error, RouteNotFound)
                and ctx.path.startswith("/v1/")
            ):
                ctx.route = passthrough
                ctx.route_error = None
            else:
                await send_route_error(send, ctx.method, ctx.path, error)
                return
        await self.app(scope, receive, send)
