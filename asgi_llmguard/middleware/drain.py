"""Drain on shutdown: refuse new requests, let those in flight finish, end the rest cleanly.

A server stopping on SIGTERM waits a while for its connections, then cuts whatever is left: an
SSE client then sees its stream stop mid-answer with no reason given, which SDKs report as a
network error and callers retry blindly. This layer gives the gateway its own, shorter deadline:
`drain` stops admitting (``503`` with ``Retry-After`` and ``Connection: close``, in the route's
error shape), waits up to ``grace`` seconds for the requests in flight, then ends each one left:

- a stream that has started gets the terminal SSE error event (OpenAI's ``data: {"error": ...}``,
  Anthropic's ``event: error``) and a proper end of body, so the SDK raises an API error; a
  Gemini stream written as one JSON array is ended by the forwarder, which alone knows where its
  elements end: its last body message, marked ``"llmguard.terminal"``, is let through;
- a request not answered yet gets a ``503`` in its route's shape;
- a non-stream answer already under way cannot be mended and is cut (the server closes it);
- a WebSocket session (the Responses API's WebSocket mode, the Realtime API) is closed with code
  1012 (service restart) and a reason; its unfinished turns are recorded ``cancelled``.

Each is ended by cancelling its task: the layers inside see the cancellation exactly as they see
a client leaving, so the upstream exchange is closed and the usage layer records the attempt
(``cancelled``, with the tokens produced so far) and releases its reservation and slots.

The only state on the instance is the set of requests in flight (their task and what has been
sent, which the wrapped ``send`` notes) and the draining switch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Sequence

from asgi_llmguard.context import get_context, route_path
from asgi_llmguard.errors import (
    TERMINAL,
    ConfigurationError,
    error_body,
    send_body,
    sse_error_event,
)
from asgi_llmguard.routes import DIALECTS, OPENAI
from asgi_llmguard.types import ASGIApp, Message, Receive, Scope, Send
from asgi_llmguard.wsession import denial_send

logger = logging.getLogger("asgi_llmguard")

_REFUSED = "The gateway is shutting down; please retry."
_RESTARTING = "The gateway is restarting; reconnect to continue."
_ENDED = "The gateway is shutting down; the stream was ended before it finished."


def _is_sse(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name.lower() == b"content-type":
            return value.lower().startswith(b"text/event-stream")
    return False


class _InFlight:
    """One request in flight: its task and how far its response got."""

    __slots__ = ("complete", "ended", "headers", "started", "task")

    def __init__(self, task: asyncio.Task[object] | None) -> None:
        self.task = task
        self.started = False
        #: The response's headers, read only if the drain has to end it.
        self.headers: Iterable[tuple[bytes, bytes]] = ()
        self.complete = False
        #: Set by `DrainMiddleware.drain` just before it cancels the task.
        self.ended = False


class DrainMiddleware:
    """Track the HTTP requests in flight so that `drain` can end them cleanly on shutdown.

    - ``retry_after``: seconds sent as ``Retry-After`` with the ``503`` refusals while draining.
    - ``exempt_paths``: route paths never refused nor tracked (health probes, when this layer
      is placed in front of the health endpoints).
    - ``in_flight``: the number of requests being served; ``draining``: whether `drain` began.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        retry_after: int = 1,
        exempt_paths: Sequence[str] = (),
    ) -> None:
        if isinstance(retry_after, bool) or not isinstance(retry_after, int) or retry_after < 0:
            raise ConfigurationError(
                f"retry_after must be a whole number of seconds >= 0, not {retry_after!r}"
            )
        if isinstance(exempt_paths, str) or not all(
            isinstance(p, str) and p.startswith("/") for p in exempt_paths
        ):
            raise ConfigurationError("exempt_paths must be a list of paths starting with '/'")
        self.app = app
        self._exempt = frozenset(exempt_paths)
        self._entries: set[_InFlight] = set()
        self._idle: asyncio.Event | None = None
        self.draining = False
        self._headers = ((b"retry-after", str(retry_after).encode()), (b"connection", b"close"))
        self._refusals = {
            dialect: error_body(503, _REFUSED, dialect=dialect, code="shutting_down")
            for dialect in DIALECTS
        }

    @property
    def in_flight(self) -> int:
        return len(self._entries)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http":
            if kind != "websocket":
                await self.app(scope, receive, send)
                return
            send = denial_send(scope, send)
        elif self._exempt and route_path(scope) in self._exempt:
            await self.app(scope, receive, send)
            return
        if self.draining:
            await self._refuse(scope, send)
            return
        entry = _InFlight(asyncio.current_task())
        self._entries.add(entry)

        async def tracked(message: Message) -> None:
            if entry.ended:
                # The request was ended by the drain: nothing more goes out but the inner
                # layers' own end of a stream only they can end well (a JSON array's).
                if message.get(TERMINAL) and not entry.complete:
                    entry.complete = True
                    await send(message)
                return
            kind = message["type"]
            if kind == "http.response.body":
                if not message.get("more_body", False):
                    entry.complete = True
            elif kind == "http.response.start" or kind == "websocket.accept":
                entry.started = True
                entry.headers = message.get("headers", ())
            elif kind == "websocket.close":
                entry.complete = True
            await send(message)

        try:
            try:
                await self.app(scope, receive, tracked)
            except asyncio.CancelledError:
                if not entry.ended:
                    raise
            if entry.ended:
                # Our own cancellation: the inner layers have unwound (upstream closed, usage
                # recorded); end the response here and return normally.
                task = entry.task
                if task is not None and task.cancelling():
                    task.uncancel()
                await self._finish(scope, send, entry)
        finally:
            self._entries.discard(entry)
            if self._idle is not None and not self._entries:
                self._idle.set()

    async def _refuse(self, scope: Scope, send: Send) -> None:
        route = get_context(scope).route
        body = self._refusals[route.endpoint.dialect if route is not None else OPENAI]
        await send_body(send, 503, body, self._headers)

    async def _finish(self, scope: Scope, send: Send, entry: _InFlight) -> None:
        if not entry.started:
            await self._refuse(scope, send)
        elif scope["type"] == "websocket":
            if not entry.complete:
                await send({"type": "websocket.close", "code": 1012, "reason": _RESTARTING})
        elif _is_sse(entry.headers) and not entry.complete:
            route = get_context(scope).route
            dialect = route.endpoint.dialect if route is not None else OPENAI
            event = sse_error_event(_ENDED, dialect=dialect, type="overloaded_error")
            await send({"type": "http.response.body", "body": event, "more_body": False})
        # else: a JSON answer half sent cannot be mended; returning leaves it incomplete and
        # the server closes the connection.

    async def wait_idle(self) -> None:
        """Return once no request is in flight (wrap it in a timeout to bound the wait)."""
        while self._entries:
            if self._idle is None or self._idle.is_set():
                self._idle = asyncio.Event()
            await self._idle.wait()

    async def _idle_within(self, seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wait_idle(), seconds)
        return not self._entries

    async def drain(self, grace: float) -> int:
        """Refuse new requests from now on, wait up to ``grace`` seconds for those in flight,
        then end the rest (see the module docstring). Returns how many had to be ended."""
        if isinstance(grace, bool) or not isinstance(grace, int | float) or grace < 0:
            raise ValueError(f"grace must be a number of seconds >= 0, not {grace!r}")
        self.draining = True
        if await self._idle_within(grace):
            return 0
        left = [e for e in self._entries if not e.complete and e.task is not None]
        logger.warning(
            "shutdown grace period (%.0f s) over: ending %d request(s) still in flight",
            grace,
            len(left),
        )
        for entry in left:
            entry.ended = True
            assert entry.task is not None
            entry.task.cancel()
        # The cancelled requests unwind quickly (closing their upstream exchange); a bound keeps
        # a stuck one from holding the shutdown.
        if not await self._idle_within(5.0):
            logger.error("%d request(s) did not end after being cancelled", len(self._entries))
        return len(left)

    def __repr__(self) -> str:
        return f"<DrainMiddleware in_flight={self.in_flight} draining={self.draining}>"
