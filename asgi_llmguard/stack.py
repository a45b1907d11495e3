"""`build_stack`: the gateway's layers in their default order, in one place.

Outermost first: classify -> forward. Each layer is also usable alone; this function only fixes
the order that keeps the rules of the design (nothing reads the body before the size limit, a
request without a valid key is refused from its headers).
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING

from asgi_llmguard.forward.app import ForwardingApp
from asgi_llmguard.forward.config import PoolLimits, Timeouts
from asgi_llmguard.middleware.classify import ClassifyMiddleware
from asgi_llmguard.providers.base import Upstream
from asgi_llmguard.routes import Api
from asgi_llmguard.types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    import httpx


class Gateway:
    """The assembled stack: an ASGI app that also owns the upstream connections.

    Served alone (uvicorn), the ASGI lifespan closes it. Mounted inside another app, lifespan
    does not reach it: close it from the host app's lifespan with ``async with gateway:`` or
    ``await gateway.aclose()``.
    """

    def __init__(self, app: ASGIApp, forwarder: ForwardingApp) -> None:
        self.app = app
        self.forwarder = forwarder

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)

    async def aclose(self) -> None:
        await self.forwarder.aclose()

    async def __aenter__(self) -> Gateway:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<Gateway upstreams={list(self.forwarder.upstreams)!r}>"


def build_stack(
    *,
    upstreams: Sequence[Upstream],
    client: httpx.AsyncClient | None = None,
    timeouts: Timeouts = Timeouts(),
    limits: PoolLimits = PoolLimits(),
    trust_env: bool = True,
    passthrough: Api | None = None,
) -> Gateway:
    """Build the gateway: see `ForwardingApp` and `ClassifyMiddleware` for the arguments."""
    forwarder = ForwardingApp(
        upstreams, client=client, timeouts=timeouts, limits=limits, trust_env=trust_env
    )
    app: ASGIApp = ClassifyMiddleware(forwarder, passthrough=passthrough)
    return Gateway(app, forwarder)
