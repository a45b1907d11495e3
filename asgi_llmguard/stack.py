"""`build_stack`: the gateway's layers in their default order, in one place.

Outermost first: overload shedding -> health checks -> access log -> classify -> size limit ->
keys -> concurrency -> rate limits -> usage -> capture -> forward. The order keeps the design's
rules: unknown routes are refused before anything else; nothing reads the body before the size
limit applies; a request without a valid key is refused from its headers alone; limits are
checked before a budget is reserved; the usage layer sees exactly what the client sees; capture
sits next to the wire; health probes answer even when requests are being shed.

Each layer is configured by a dict of its middleware's keyword arguments (``None`` leaves it
out), so the config file's sections map one-to-one onto them; every layer is also usable alone.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any

from asgi_llmguard.errors import ConfigurationError
from asgi_llmguard.forward.app import ForwardingApp
from asgi_llmguard.forward.config import PoolLimits, Timeouts
from asgi_llmguard.keys.base import KeyStore
from asgi_llmguard.middleware.access_log import AccessLogMiddleware
from asgi_llmguard.middleware.auth import AuthMiddleware
from asgi_llmguard.middleware.capture import CaptureMiddleware
from asgi_llmguard.middleware.classify import ClassifyMiddleware
from asgi_llmguard.middleware.concurrency import ConcurrencyMiddleware
from asgi_llmguard.middleware.health import HealthMiddleware
from asgi_llmguard.middleware.overload import OverloadMiddleware
from asgi_llmguard.middleware.ratelimit import RateLimitMiddleware
from asgi_llmguard.middleware.size_limit import SizeLimitMiddleware
from asgi_llmguard.middleware.usage import UsageMiddleware
from asgi_llmguard.providers.base import Upstream
from asgi_llmguard.routes import Api
from asgi_llmguard.types import ASGIApp, Receive, Scope, Send
from asgi_llmguard.usage.pipeline import UsagePipeline

if TYPE_CHECKING:
    import httpx

logger = logging.getLogger("asgi_llmguard")

Closer = Callable[[], Awaitable[None]]
#: "This layer, with its defaults" (a read-only empty mapping, safe as a default argument).
ON: Mapping[str, Any] = MappingProxyType({})


class Gateway:
    """The assembled stack: an ASGI app that owns its connections, queues and stores.

    Served alone (uvicorn), the ASGI lifespan starts it and, on shutdown, drains and closes it:
    capture queue, usage pipeline (every queued event written or spilled), then the upstream
    pool and the stores. Mounted inside another app, lifespan does not reach it: use
    ``async with gateway:`` in the host app's lifespan (or `start` / `aclose`).
    """

    def __init__(
        self,
        app: ASGIApp,
        forwarder: ForwardingApp,
        *,
        pipeline: UsagePipeline | None = None,
        closers: Sequence[Closer] = (),
        layers: Mapping[str, object] | None = None,
    ) -> None:
        self.app = app
        self.forwarder = forwarder
        self.pipeline = pipeline
        #: The middleware instances by name (``"auth"``, ``"usage"``, ...), for operators/tests.
        self.layers: Mapping[str, object] = dict(layers or {})
        self._closers = tuple(closers)
        self._started = False
        self._closed = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        await self.app(scope, receive, send)

    async def start(self) -> None:
        """Start background work (the usage pipeline replays any spill file); idempotent."""
        if self._started:
            return
        self._started = True
        if self.pipeline is not None:
            await self.pipeline.start()

    async def aclose(self) -> None:
        """Drain and close everything, in order; idempotent. Errors are logged, not raised, so
        one failing part cannot keep the others open."""
        if self._closed:
            return
        self._closed = True
        for close in self._closers:
            try:
                await close()
            except Exception:
                logger.exception("error while closing the gateway")

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.start()
                except Exception as exc:
                    logger.exception("gateway start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def __repr__(self) -> str:
        return f"<Gateway layers={list(self.layers)} upstreams={list(self.forwarder.upstreams)!r}>"


def build_stack(
    *,
    upstreams: Sequence[Upstream],
    client: httpx.AsyncClient | None = None,
    timeouts: Timeouts = Timeouts(),
    limits: PoolLimits = PoolLimits(),
    trust_env: bool = True,
    passthrough: Api | None = None,
    keys: KeyStore | None = None,
    auth: Mapping[str, Any] | None = None,
    size_limit: Mapping[str, Any] | None = ON,
    rate_limit: Mapping[str, Any] | None = ON,
    concurrency: Mapping[str, Any] | None = ON,
    usage: Mapping[str, Any] | None = ON,
    pipeline: UsagePipeline | None = None,
    capture: Mapping[str, Any] | None = None,
    access_log: Mapping[str, Any] | None = ON,
    health: Mapping[str, Any] | None = None,
    overload: Mapping[str, Any] | None = None,
) -> Gateway:
    """Assemble the gateway (see the module docstring for the order).

    - ``upstreams``, ``client``, ``timeouts``, ``limits``, ``trust_env``: see `ForwardingApp`;
      ``passthrough``: see `ClassifyMiddleware`.
    - ``keys``: the `KeyStore` of virtual keys. With a store every request needs a valid key
      (`AuthMiddleware`; more of its kwargs in ``auth``); without one the gateway is open.
    - ``size_limit``: `SizeLimitMiddleware` kwargs (default: ``{}``, the 32 MiB limit).
    - ``rate_limit``: `RateLimitMiddleware` kwargs (default ``{}``: keys' own limits, memory).
    - ``concurrency``: `ConcurrencyMiddleware` kwargs (default ``{}``: keys' own caps).
    - ``usage`` and ``pipeline``: `UsageMiddleware` kwargs and the `UsagePipeline` its events go
      to (default ``{}`` and no pipeline: metered, priced and budgeted, but not recorded).
    - ``capture``: `CaptureMiddleware` kwargs (needs a ``sink``); ``None`` leaves capture out.
    - ``access_log``: `AccessLogMiddleware` kwargs (default ``{}``: one JSON line per request on
      the ``asgi_llmguard.access`` logger at INFO, request ids returned as ``x-request-id``).
    - ``health``: `HealthMiddleware` kwargs (liveness/readiness endpoints); ``None``: left out.
    - ``overload``: `OverloadMiddleware` kwargs (``max_in_flight``: shed the excess with 503 at
      once); ``None``: left out. Health endpoints are exempt, so probes answer under overload.

    Pass ``None`` for ``size_limit``, ``rate_limit``, ``concurrency``, ``usage`` or
    ``access_log`` to leave that layer out.
    """
    forwarder = ForwardingApp(
        upstreams, client=client, timeouts=timeouts, limits=limits, trust_env=trust_env
    )
    app: ASGIApp = forwarder
    layers: dict[str, object] = {}
    # Closed in this order on shutdown: stop capturing, settle what usage holds, drain the
    # ledger, then the limiter/budget/key stores and last the upstream pool.
    closers: list[Closer] = []

    if capture is not None:
        if "sink" not in capture:
            raise ConfigurationError("capture needs a 'sink'")
        app = layers["capture"] = CaptureMiddleware(app, **capture)
        closers.append(layers["capture"].aclose)  # type: ignore[attr-defined]
    if usage is not None:
        usage_mw = UsageMiddleware(app, pipeline=pipeline, **usage)
        app = layers["usage"] = usage_mw
        closers.append(usage_mw.aclose)
        budgets = usage.get("budgets")
        if budgets is not None:
            closers.append(budgets.aclose)
    if pipeline is not None:
        closers.append(pipeline.aclose)
    if rate_limit is not None:
        limiter = RateLimitMiddleware(app, **rate_limit)
        app = layers["rate_limit"] = limiter
        closers.append(limiter.aclose)
    if concurrency is not None:
        # In front of the rate limits: an in-memory check that refuses an over-cap request
        # before it costs a rate unit or a Redis round trip.
        app = layers["concurrency"] = ConcurrencyMiddleware(app, **concurrency)
    if keys is not None:
        app = layers["auth"] = AuthMiddleware(app, store=keys, **dict(auth or {}))
        closers.append(keys.aclose)
    elif auth:
        raise ConfigurationError("auth options were given but no key store ('keys')")
    if size_limit is not None:
        app = layers["size_limit"] = SizeLimitMiddleware(app, **size_limit)
    app = layers["classify"] = ClassifyMiddleware(app, passthrough=passthrough)
    if access_log is not None:
        # Outermost, so the classifier's own 404/405 are logged and carry a request id too.
        app = layers["access_log"] = AccessLogMiddleware(app, **access_log)
    if health is not None:
        health_mw = HealthMiddleware(app, **health)
        app = layers["health"] = health_mw
        closers.append(health_mw.aclose)
    if overload is not None:
        options = dict(overload)
        if health is not None and "exempt_paths" not in options:
            options["exempt_paths"] = (
                health.get("live_path", "/healthz"),
                health.get("ready_path", "/readyz"),
            )
        app = layers["overload"] = OverloadMiddleware(app, **options)
    closers.append(forwarder.aclose)
    return Gateway(app, forwarder, pipeline=pipeline, closers=closers, layers=layers)
