"""Starting and closing what the gateway owns, and the ASGI lifespan that drives it.

One idiom for every owner of a resource (an upstream session, a store's connections, a writer
task, a queue): ``await owner.start()`` before use (idempotent; many start lazily on first use as
well), ``await owner.aclose()`` when done (idempotent), or ``async with owner:`` for both.
`Resource` gives a class the ``async with`` half.

Owners are started in order and closed in reverse by `start_all` and `close_all`; a start that
fails closes them all (except parts shared with another owner) before the error is raised. The
ASGI lifespan reaches them two ways:

- `serve_lifespan`: an app that answers lifespan itself (`Gateway`, `ReloadableGateway`, a bare
  `ForwardingApp`) starts on ``lifespan.startup`` and closes on ``lifespan.shutdown``; a failed
  start is answered ``lifespan.startup.failed`` with the error's message.
- `pass_lifespan`: a middleware used alone in a host app (``Middleware(RateLimitMiddleware)``)
  passes lifespan on to the app inside, starting its resource when ``lifespan.startup`` goes
  by and closing it once the app inside has finished its own shutdown.

Inside a `Gateway` the layers never see lifespan: the gateway answers it and starts and closes
their resources itself, in the order `build_stack` declares. Mounted apps get no lifespan from
their host (Starlette does not forward it): there, ``async with gateway:`` in the host's own
lifespan does the same.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from types import TracebackType
from typing import Protocol, Self

from asgi_llmguard.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger("asgi_llmguard")


class Closable(Protocol):
    """Anything with ``async aclose()``; ``async start()`` is optional (see `start_all`)."""

    async def aclose(self) -> None: ...


class Resource:
    """``async with`` for a class that has ``start`` and ``aclose`` (both idempotent)."""

    async def start(self) -> None:
        """Nothing to start ahead of use (subclasses that have something override this)."""

    async def aclose(self) -> None:
        """Nothing to close (subclasses that own something override this)."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def _starter(owner: object) -> Callable[[], Awaitable[None]] | None:
    start: Callable[[], Awaitable[None]] | None = getattr(owner, "start", None)
    return start if callable(start) else None


async def start_all(owners: Sequence[Closable], *, keep: Iterable[object] = ()) -> None:
    """Start ``owners`` in order. If one fails, close them all in reverse order (those not
    started yet too: building one may have opened connections), except those in ``keep``,
    and raise its error: nothing is left half-open."""
    for owner in owners:
        start = _starter(owner)
        if start is None:
            continue
        try:
            await start()
        except BaseException:
            await close_all(owners, keep=keep)
            raise


async def close_all(owners: Sequence[Closable], *, keep: Iterable[object] = ()) -> None:
    """Close ``owners`` in reverse order, except those in ``keep``. An error is logged, not
    raised, so that one failing part cannot keep the others open."""
    kept = tuple(keep)
    for owner in reversed(owners):
        if any(owner is part for part in kept):
            continue
        try:
            await owner.aclose()
        except Exception:
            logger.exception("error while closing %s", type(owner).__name__)


class _Owner(Protocol):
    async def start(self) -> None: ...

    async def aclose(self) -> None: ...


async def serve_lifespan(owner: _Owner, receive: Receive, send: Send) -> None:
    """Answer an ASGI lifespan for ``owner``: start it on startup (a failure is answered
    ``lifespan.startup.failed`` with its message; ``owner.start`` has closed what it started),
    close it on shutdown."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            try:
                await owner.start()
            except Exception as exc:
                logger.exception("gateway start-up failed")
                await send({"type": "lifespan.startup.failed", "message": str(exc)})
                return
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await owner.aclose()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def pass_lifespan(
    app: ASGIApp, owner: _Owner, scope: Scope, receive: Receive, send: Send
) -> None:
    """Pass a lifespan on to ``app``, starting ``owner`` as ``lifespan.startup`` goes in and
    closing it once ``app`` has finished its shutdown (answered it, or returned after it)."""
    shutting_down = False
    closed = False

    async def close() -> None:
        nonlocal closed
        if not closed:
            closed = True
            await owner.aclose()

    async def lifespan_receive() -> Message:
        nonlocal shutting_down
        message = await receive()
        kind = message["type"]
        if kind == "lifespan.startup":
            await owner.start()
        elif kind == "lifespan.shutdown":
            shutting_down = True
        return message

    async def lifespan_send(message: Message) -> None:
        if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
            await close()
        await send(message)

    await app(scope, lifespan_receive, lifespan_send)
    if shutting_down:
        await close()
