"""Shed load: refuse new requests with 503 while the process already has its cap in flight.

A gateway that accepts every request under a surge only gets slower for all of them, until
callers time out and retry into an even longer queue. Past ``max_in_flight`` this layer answers
at once with ``503`` and ``Retry-After``, which the OpenAI and Anthropic SDKs retry with backoff,
and leaves the requests already admitted their share of the process.

It belongs outermost: the refusal costs no body read, no key lookup and no Redis round trip, and
the health endpoints (``exempt_paths``) pass whatever the load, so a replica that is merely busy
is not restarted by its liveness probe. The count is per process; a slot is released by a
synchronous ``finally``, so an answer, an error, a timeout or a client leaving (which cancels the
task) all give it back.
"""

from __future__ import annotations

from collections.abc import Sequence

from asgi_llmguard.context import get_context, route_path
from asgi_llmguard.errors import ConfigurationError, error_body, send_body
from asgi_llmguard.routes import DIALECTS, OPENAI
from asgi_llmguard.types import ASGIApp, Receive, Scope, Send
from asgi_llmguard.wsession import denial_send

_MESSAGE = "The gateway is overloaded; please retry after a short wait."


class OverloadMiddleware:
    """Answer 503 ``overloaded`` with ``Retry-After`` when ``max_in_flight`` HTTP requests are
    already in flight in this process.

    - The refusal is sent without reading the body or calling the app, in the route's error
      shape (Anthropic's ``overloaded_error`` on its routes, OpenAI's otherwise, code
      ``"overloaded"``).
    - Requests to ``exempt_paths`` (matched on the route path) always pass and are not counted.
    - ``in_flight`` is the current count and ``shed`` the refusals so far, for metrics and tests.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_in_flight: int,
        retry_after: int = 1,
        exempt_paths: Sequence[str] = ("/healthz", "/readyz"),
    ) -> None:
        if isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int):
            raise ConfigurationError(
                f"max_in_flight must be a positive integer, not {max_in_flight!r}"
            )
        if max_in_flight < 1:
            raise ConfigurationError(
                f"max_in_flight must be a positive integer, not {max_in_flight!r}"
            )
        if isinstance(retry_after, bool) or not isinstance(retry_after, int) or retry_after < 0:
            raise ConfigurationError(
                f"retry_after must be a whole number of seconds >= 0, not {retry_after!r}"
            )
        if isinstance(exempt_paths, str):
            raise ConfigurationError("exempt_paths must be a list of paths, not a string")
        for path in exempt_paths:
            if not isinstance(path, str) or not path.startswith("/"):
                raise ConfigurationError(
                    f"exempt_paths must hold paths starting with '/', not {path!r}"
                )
        self.app = app
        self.max_in_flight = max_in_flight
        self._exempt = frozenset(exempt_paths)
        #: HTTP requests admitted and not yet finished.
        self.in_flight = 0
        #: Requests refused so far.
        self.shed = 0
        # Prebuilt refusals: nothing to compute when refusing under load.
        self._headers = ((b"retry-after", str(retry_after).encode()),)
        self._bodies = {
            dialect: error_body(503, _MESSAGE, dialect=dialect, code="overloaded")
            for dialect in DIALECTS
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (self._exempt and route_path(scope) in self._exempt):
            if scope["type"] == "websocket" and self.in_flight >= self.max_in_flight:
                # An upgrade is shed like a request; an open session is not work in flight
                # (the concurrency caps bound sessions).
                self.shed += 1
                await send_body(denial_send(scope, send), 503, self._bodies[OPENAI], self._headers)
                return
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.max_in_flight:
            self.shed += 1
            route = get_context(scope).route
            body = self._bodies[route.endpoint.dialect if route is not None else OPENAI]
            await send_body(send, 503, body, self._headers)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1

    def __repr__(self) -> str:
        return (
            f"<OverloadMiddleware max_in_flight={self.max_in_flight} "
            f"in_flight={self.in_flight} shed={self.shed}>"
        )
