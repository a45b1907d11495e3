"""ASGI aliases and the small protocols the gateway's layers share.

Plain aliases instead of starlette's so that nothing on the hot path needs starlette at all; they
are structurally the same, so starlette's `Middleware(...)` and `Mount(...)` accept our apps.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Protocol

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]


class Clock(Protocol):
    """A monotonic clock in seconds; injectable so tests can move time."""

    def __call__(self) -> float: ...
