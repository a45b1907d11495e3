"""`build_stack`: the gateway's layers in their default order, in one place.

Outermost first: metrics -> overload shedding -> health checks -> access log -> drain -> classify ->
size limit -> keys -> concurrency -> rate limits -> usage -> capture -> forward. The order keeps the
design's rules: unknown routes are refused before anything else; nothing reads the body before the
size limit applies; a request without a valid key is refused from its headers alone; limits are
checked before a budget is reserved; the usage layer sees exactly what the client sees; capture
sits next to the wire; health probes answer even when requests are being shed; the metrics
layer counts every answer, shed ones included, and serves its scrape before anything can refuse it.

Each layer is configured by a dict of its middleware's keyword arguments (``None`` leaves it
out), so the config file's sections map one-to-one onto them; every layer is also usable alone.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any

from asgi_llmguard.admin.app import AdminApp, AdminMount
from asgi_llmguard.context import Attempt
from asgi_llmguard.errors import ConfigurationError
from asgi_llmguard.forward.app import ForwardingApp
from asgi_llmguard.forward.config import PoolLimits, Timeouts
from asgi_llmguard.keys.base import KeyStore
from asgi_llmguard.middleware.access_log import AccessLogMiddleware
from asgi_llmguard.middleware.auth import AuthMiddleware
from asgi_llmguard.middleware.capture import CaptureMiddleware
from asgi_llmguard.middleware.classify import ClassifyMiddleware
from asgi_llmguard.middleware.concurrency import ConcurrencyMiddleware
from asgi_llmguard.middleware.drain import DrainMiddleware
from asgi_llmguard.middleware.health import HealthMiddleware
from asgi_llmguard.middleware.metrics import MetricsMiddleware
from asgi_llmguard.middleware.overload import OverloadMiddleware
from asgi_llmguard.middleware.ratelimit import RateLimitMiddleware
from asgi_llmguard.middleware.size_limit import SizeLimitMiddleware
from asgi_llmguard.middleware.usage import UsageMiddleware
from asgi_llmguard.providers.base import Upstream
from asgi_llmguard.routes import Api
from asgi_llmguard.types import ASGIApp, Receive, Scope, Send
from asgi_llmguard.usage.events import UsageEvent
from asgi_llmguard.usage.pipeline import UsagePipeline
from asgi_llmguard.usage.pricing import PriceTable

if TYPE_CHECKING:
    import httpx

    from asgi_llmguard.forward.router import Routing

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
        starters: Sequence[Closer] = (),
    ) -> None:
        self.app = app
        self.forwarder = forwarder
        self.pipeline = pipeline
        #: The middleware instances by name (``"auth"``, ``"usage"``, ...), for operators/tests.
        self.layers: Mapping[str, object] = dict(layers or {})
        self._closers = tuple(closers)
        self._starters = tuple(starters)
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
        for start in self._starters:
            await start()

    async def drain(self, grace: float) -> int:
        """Stop admitting requests, give those in flight up to ``grace`` seconds, then end the
        rest cleanly (see `DrainMiddleware`); returns how many had to be ended. Call it when the
        server is told to stop, before the server's own deadline; `aclose` comes after."""
        drain = self.layers.get("drain")
        if isinstance(drain, DrainMiddleware):
            return await drain.drain(grace)
        return 0

    async def wait_idle(self) -> None:
        """Return once no request is in flight (immediately without the drain layer, which is
        what counts them)."""
        drain = self.layers.get("drain")
        if isinstance(drain, DrainMiddleware):
            await drain.wait_idle()

    async def aclose(self, *, keep: Sequence[object] = ()) -> None:
        """Drain and close everything, in order; idempotent. Errors are logged, not raised, so
        one failing part cannot keep the others open. Parts in ``keep`` (the pipeline, a store,
        a layer) are left open: a gateway replaced on reload shares them with its successor."""
        if self._closed:
            return
        self._closed = True
        for close in self._closers:
            owner = getattr(close, "__self__", None)
            if owner is not None and any(owner is part for part in keep):
                continue
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
    routing: Routing | None = None,
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
    metrics: Mapping[str, Any] | None = None,
    admin: Mapping[str, Any] | None = None,
    drain: Mapping[str, Any] | None = ON,
) -> Gateway:
    """Assemble the gateway (see the module docstring for the order).

    - ``upstreams``, ``client``, ``timeouts``, ``limits``, ``trust_env``, ``routing``: see
      `ForwardingApp` and `Routing`; ``passthrough``: see `ClassifyMiddleware`. Warm-up requests
      are recorded in the usage ledger as ``warmup``, charged to no key.
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
    - ``metrics``: `MetricsMiddleware` kwargs (Prometheus, outermost; needs the ``metrics``
      extra); ``None``: left out. Its model labels include the priced models and aliases, and it
      reads the pipeline, the pool and the limiters' counters.
    - ``admin``: `AdminApp` kwargs (``key`` or ``key_hash``, ``ledger``, ``reload``, ...) and
      ``path`` (default ``/admin``); ``None``: no admin API. Served outermost under ``path``,
      outside every other layer; it works on this stack's key store, budget store, limiter and
      forwarder unless the kwargs name others.

    - ``drain``: `DrainMiddleware` kwargs (default ``{}``): tracks the requests in flight so that
      `Gateway.drain` can end them cleanly on shutdown; inside the health endpoints, so probes
      answer while draining.

    Pass ``None`` for ``size_limit``, ``rate_limit``, ``concurrency``, ``usage``,
    ``access_log`` or ``drain`` to leave that layer out.
    """
    on_warmup = None
    if pipeline is not None and routing is not None and routing.warmup is not None:
        prices = (usage or {}).get("prices") or PriceTable.default()
        on_warmup = _warmup_recorder(pipeline, prices)
    forwarder = ForwardingApp(
        upstreams,
        client=client,
        timeouts=timeouts,
        limits=limits,
        trust_env=trust_env,
        routing=routing,
        on_warmup=on_warmup,
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
    # Without a pipeline the usage layer's events go to the metrics layer, built later (outside).
    relay = _EventRelay() if metrics is not None and pipeline is None else None
    if usage is not None:
        usage = dict(usage)
        if routing is not None and routing.aliases:
            usage.setdefault("aliases", routing.aliases)
        usage_mw = UsageMiddleware(app, pipeline=pipeline or relay, **usage)
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
    if drain is not None:
        # Inside the access log and health endpoints: refusals and ended streams are logged,
        # and probes keep answering while the process drains.
        app = layers["drain"] = DrainMiddleware(app, **drain)
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
    starters: list[Closer] = []
    if metrics is not None:
        metrics_mw = MetricsMiddleware(
            app, **_metrics_options(metrics, forwarder, layers, pipeline, usage, routing, health)
        )
        app = layers["metrics"] = metrics_mw
        if relay is not None:
            relay.target = metrics_mw.emit
        starters.append(metrics_mw.start)
        closers.append(metrics_mw.aclose)  # last: its final reading sees the drained queue
    if admin is not None:
        app = layers["admin"] = _admin(app, admin, keys, usage, layers, forwarder)
    return Gateway(
        app, forwarder, pipeline=pipeline, closers=closers, layers=layers, starters=starters
    )


def _admin(
    app: ASGIApp,
    admin: Mapping[str, Any],
    keys: KeyStore | None,
    usage: Mapping[str, Any] | None,
    layers: Mapping[str, object],
    forwarder: ForwardingApp,
) -> AdminMount:
    """The admin API in front of the whole stack, on the stack's own stores."""
    options = dict(admin)
    path = options.pop("path", "/admin")
    options.setdefault("keys", keys)
    options.setdefault("budgets", (usage or {}).get("budgets"))
    limiter = layers.get("rate_limit")
    options.setdefault("rate_limit", limiter if isinstance(limiter, RateLimitMiddleware) else None)
    options.setdefault("forwarder", forwarder)
    return AdminMount(app, AdminApp(**options), path=path)


def _warmup_recorder(pipeline: UsagePipeline, prices: PriceTable) -> Callable[[Attempt, Api], None]:
    """Record each warm-up in the ledger as ``warmup``: its cost is visible, charged to no key."""

    def record(attempt: Attempt, api: Api) -> None:
        usage = attempt.usage
        price = prices.resolve(attempt.model, attempt.credential_id) if attempt.model else None
        pipeline.emit(
            UsageEvent(
                request_id=attempt.request_id or "warmup",
                started_at=attempt.started_at,
                model=attempt.model,
                served_model=attempt.model,
                provider=api,
                endpoint="messages" if api == "anthropic" else "chat.completions",
                credential_id=attempt.credential_id,
                status=attempt.status,
                outcome="warmup",
                input_tokens=usage.input_tokens if usage else 0,
                output_tokens=usage.output_tokens if usage else 0,
                cost_nanos=price.cost_nanos(usage) if price is not None and usage else 0,
                latency=attempt.latency,
            )
        )

    return record


class _EventRelay:
    """Stands in for a usage pipeline so that the metrics layer sees the usage layer's events."""

    target: Callable[[UsageEvent], None] | None = None

    def emit(self, event: UsageEvent) -> None:
        if self.target is not None:
            self.target(event)


def _metrics_options(
    metrics: Mapping[str, Any],
    forwarder: ForwardingApp,
    layers: Mapping[str, object],
    pipeline: UsagePipeline | None,
    usage: Mapping[str, Any] | None,
    routing: Routing | None,
    health: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """`MetricsMiddleware` kwargs: the given ones, plus what the assembled stack knows: the
    configured model names (labels of their own), the pipeline, and the counters and gauges of
    the other layers and the pool."""
    options = dict(metrics)
    models = set(options.pop("models", ()))
    prices = (usage or {}).get("prices") or PriceTable.default()
    models.update(name for name in prices if not any(c in name for c in "*?["))  # not globs
    if routing is not None:
        models.update(routing.aliases)
    options["models"] = sorted(models)
    options.setdefault("pipeline", pipeline)
    if health is not None and "exclude_paths" not in options:
        options["exclude_paths"] = (
            health.get("live_path", "/healthz"),
            health.get("ready_path", "/readyz"),
        )
    sources: dict[str, Callable[[], int]] = {
        "connections_in_use": forwarder.engine.connections_in_use
    }
    cooldowns = getattr(forwarder, "cooldowns_active", None)
    if callable(cooldowns):
        sources["cooldowns_active"] = cooldowns
    limiter = layers.get("rate_limit")
    if isinstance(limiter, RateLimitMiddleware):
        stats = limiter.stats
        sources["rate_limit_rejections"] = lambda: stats.rejected
        sources["rate_limit_store_errors"] = lambda: stats.store_errors
    concurrency = layers.get("concurrency")
    if isinstance(concurrency, ConcurrencyMiddleware):
        sources["concurrency_rejections"] = lambda: concurrency.rejected
    overload = layers.get("overload")
    if isinstance(overload, OverloadMiddleware):
        sources["overload_shed"] = lambda: overload.shed
    sources.update(options.get("sources") or {})
    options["sources"] = sources
    return options
