"""What every fake upstream lets a test observe, and the request reading they share."""

from __future__ import annotations

import collections
import threading
from collections.abc import Awaitable, Callable

from asgi_llmguard.testing._http import (
    ClientGone,
    Exchange,
    FakeConnectionReset,
    ReceivedRequest,
)
from asgi_llmguard.testing._wait import wait_for, wait_until
from asgi_llmguard.types import Receive, Scope, Send


class Observed:
    """The recorded requests and the counters of a fake upstream, and waiting on them."""

    _lock: threading.Lock
    _requests: collections.deque[ReceivedRequest]
    _active: int
    _completed: int
    _disconnects: int
    _resets: int

    @property
    def requests(self) -> collections.deque[ReceivedRequest]:
        """The requests received, oldest first, recorded as soon as each body was read."""
        return self._requests

    @property
    def active_streams(self) -> int:
        """Responses in progress: from the end of the request body to the end of the response."""
        return self._active

    @property
    def completed(self) -> int:
        """Responses sent to their end, whatever their status (truncated streams included)."""
        return self._completed

    @property
    def disconnects(self) -> int:
        """Responses abandoned because the client went away before they were finished."""
        return self._disconnects

    @property
    def resets(self) -> int:
        """Connections dropped on purpose by ``reset_after_chunks``."""
        return self._resets

    async def wait_for(
        self,
        predicate: Callable[[], object],
        timeout: float = 1.0,  # noqa: ASYNC109 - a polling deadline, not a cancellation scope
    ) -> None:
        """Wait (async, polling) until ``predicate()`` is true, e.g.
        ``await fake.wait_for(lambda: fake.disconnects == 1)``; TimeoutError after ``timeout``.
        """
        await wait_for(predicate, timeout)

    def wait_until(self, predicate: Callable[[], object], timeout: float = 1.0) -> None:
        """Block until ``predicate()`` is true (the fake runs in another thread), polling;
        TimeoutError after ``timeout`` seconds.
        """
        wait_until(predicate, timeout)

    async def _observe(
        self,
        request: ReceivedRequest,
        receive: Receive,
        send: Send,
        answer: Callable[[Exchange], Awaitable[None]],
    ) -> None:
        """Record ``request``, run ``answer`` on its exchange, and count how it ended: completed,
        the client gone (``disconnects``) or the connection reset on purpose (``resets``)."""
        with self._lock:
            self._requests.append(request)
            self._active += 1
        exchange = Exchange(receive, send)
        outcome = ""
        try:
            await answer(exchange)
            outcome = "completed" if exchange.finished else ""
        except ClientGone:
            outcome = "disconnects"
        except FakeConnectionReset:
            outcome = "resets"
            raise
        finally:
            exchange.close()
            with self._lock:
                self._active -= 1
                if outcome == "completed":
                    self._completed += 1
                elif outcome == "disconnects":
                    self._disconnects += 1
                elif outcome == "resets":
                    self._resets += 1


def received_request(scope: Scope, body: bytes, path: str | None = None) -> ReceivedRequest:
    """The request as a fake records it (header names lower-cased); ``path``: the one to record
    when not the scope's (the raw path, percent-escapes kept)."""
    return ReceivedRequest(
        method=scope["method"],
        path=scope["path"] if path is None else path,
        query_string=scope.get("query_string", b"").decode("latin-1"),
        headers=[(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope["headers"]],
        body=body,
    )


async def read_http_request(scope: Scope, receive: Receive, send: Send) -> bytes | None:
    """The body of an HTTP request; ``None`` once a lifespan was answered, a WebSocket closed,
    or the client left before the body ended."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return None
    if scope["type"] != "http":
        await receive()
        await send({"type": "websocket.close", "code": 1000})
        return None
    parts: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts)
