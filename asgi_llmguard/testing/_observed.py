"""What every fake upstream lets a test observe, and the request reading they share."""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import TYPE_CHECKING

from asgi_llmguard.testing._wait import wait_for, wait_until
from asgi_llmguard.types import Receive, Scope, Send

if TYPE_CHECKING:
    from asgi_llmguard.testing.fake import ReceivedRequest


class Observed:
    """The recorded requests and the counters of a fake upstream, and waiting on them."""

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
