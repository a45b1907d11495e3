"""`build_stack`: the gateway's layers in their default order, in one place.

The layers are declared outermost first (admin, then metrics -> overload shedding -> health
checks -> access log -> drain -> classify -> size limit -> keys -> concurrency -> rate limits ->
usage -> capture, around the forwarder), built with ``reversed()`` as Starlette builds its
middleware stack, and then wired to one another in one pass (`_wire`). The order keeps the
design's rules: unknown routes are refused before anything else; nothing reads the body before the
size limit applies; a request without a valid key is refused from its headers alone; limits are
checked before a budget is reserved; the usage layer sees exactly what the client sees; capture
sits next to the wire; health probes answer even when requests are being shed; the metrics
layer counts every answer, shed ones included, and serves its scrape before anything can refuse it.

Each layer is configured by a dict of its middleware's keyword arguments (``None`` leaves it
out), so the config file's sections map one-to-one onto them; every layer is also usable alone.

The `Gateway` owns what the layers hold (upstream pool, stores, queues): it starts them in one
order and closes them in the reverse one (`asgi_llmguard.lifecycle`), on the ASGI lifespan when
served alone or from ``async with gateway:`` when mounted.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from asgi_llmguard.admin.app import AdminApp, AdminMount
from asgi_llmguard.context import Attempt
from asgi_llmguard.errors import ConfigurationError
from asgi_llmguard.forward.app import ForwardingApp
from asgi_llmguard.forward.config import PoolLimits, Timeouts, WebSocketLimits
from asgi_llmguard.keys.base import KeyStore
from asgi_llmguard.lifecycle import Closable, Resource, close_all, serve_lifespan, start_all
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
from asgi_llmguard.usage.events import UsageEvent, attempt_event
from asgi_llmguard.usage.pipeline import UsagePipeline
from asgi_llmguard.usage.pricing import PriceTable

if TYPE_CHECKING:
    import httpx

    from asgi_llmguard.forward.router import Routing
    from asgi_llmguard.usage.budgets import BudgetStore

#: "This layer, with its defaults" (a read-only empty mapping, safe as a default argument).
ON: Mapping[str, Any] = MappingProxyType({})

_L = TypeVar("_L")


class Layer(NamedTuple):
    """One layer of the request's way: its name, the class (or function) that wraps the app
    inside it, and its keyword arguments (``None``: the layer is left out)."""

    name: str
    factory: Callable[..., ASGIApp]
    options: Mapping[str, Any] | None

    @property
    def enabled(self) -> bool:
        return self.options is not None


class Gateway(Resource):
    """The assembled stack: an ASGI app that owns its connections, queues and stores.

    Each layer is an attribute named after it (``None`` when it is left out): `admin`,
    `metrics`, `overload`, `health`, `access_log`, `drain_layer`, `classify`, `size_limit`,
    `auth`, `concurrency`, `rate_limit`, `usage`, `capture`; then the `forwarder`, and the parts
    the layers share: `pipeline`, `keys`, `budgets`. `declared` is the request's way as
    `build_stack` declared it, outermost first, left-out layers included.

    Served alone (uvicorn), the ASGI lifespan starts it and, on shutdown, closes it: capture
    queue, usage settlements, budget store, usage pipeline (every queued event written or
    spilled), rate-limit and key stores, health checks, upstream pool, and last the metrics
    layer. Mounted inside another app, lifespan does not reach it: use ``async with gateway:``
    in the host app's lifespan (or `start` / `aclose`).
    """

    def __init__(
        self,
        app: ASGIApp,
        forwarder: ForwardingApp,
        layers: Mapping[str, ASGIApp] | None = None,
        *,
        pipeline: UsagePipeline | None = None,
        keys: KeyStore | None = None,
        budgets: BudgetStore | None = None,
        declared: Sequence[Layer] = (),
    ) -> None:
        built = dict(layers or {})
        self.app = app
        self.declared = tuple(declared)
        self.admin = _layer(built, "admin", AdminMount)
        self.metrics = _layer(built, "metrics", MetricsMiddleware)
        self.overload = _layer(built, "overload", OverloadMiddleware)
        self.health = _layer(built, "health", HealthMiddleware)
        self.access_log = _layer(built, "access_log", AccessLogMiddleware)
        self.drain_layer = _layer(built, "drain", DrainMiddleware)
        self.classify = _layer(built, "classify", ClassifyMiddleware)
        self.size_limit = _layer(built, "size_limit", SizeLimitMiddleware)
        self.auth = _layer(built, "auth", AuthMiddleware)
        self.concurrency = _layer(built, "concurrency", ConcurrencyMiddleware)
        self.rate_limit = _layer(built, "rate_limit", RateLimitMiddleware)
        self.usage = _layer(built, "usage", UsageMiddleware)
        self.capture = _layer(built, "capture", CaptureMiddleware)
        self.forwarder = forwarder
        self.pipeline = pipeline
        self.keys = keys
        self.budgets = budgets
        self._layers: Mapping[str, object] = MappingProxyType(built)
        # Started in this order, closed in the reverse one: capture stops first, usage settles
        # what it holds (budgets, events), the ledger drains, then the stores and the upstream
        # pool; the metrics layer closes last, so its final reading sees the drained queue.
        owners: tuple[Closable | None, ...] = (
            self.metrics,
            forwarder,
            self.health,
            keys,
            # The limiter itself, not its layer: a stack built on reload shares it.
            self.rate_limit.limiter if self.rate_limit is not None else None,
            pipeline,
            budgets,
            self.usage,
            self.capture,
        )
        self.resources: tuple[Closable, ...] = tuple(o for o in owners if o is not None)
        self._started = False
        self._closed = False

    @property
    def layers(self) -> Mapping[str, object]:
        """The layers by name (``"auth"``, ``"usage"``, ...), outermost first. Kept for
        compatibility: the typed attributes (`usage`, `rate_limit`, ...) say the same."""
        return self._layers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(self, receive, send)
            return
        await self.app(scope, receive, send)

    async def start(self, *, keep: Sequence[object] = ()) -> None:
        """Start what the layers own, in order (the usage pipeline replays any spill file);
        idempotent. If one part fails to start, every part is closed (in reverse, except those
        in ``keep``: see `aclose`) and the error is raised."""
        if self._started:
            return
        self._started = True
        try:
            await start_all(self.resources, keep=keep)
        except BaseException:
            self._closed = True
            raise

    async def drain(self, grace: float) -> int:
        """Stop admitting requests, give those in flight up to ``grace`` seconds, then end the
        rest cleanly (see `DrainMiddleware`); returns how many had to be ended. Call it when the
        server is told to stop, before the server's own deadline; `aclose` comes after."""
        if self.drain_layer is not None:
            return await self.drain_layer.drain(grace)
        return 0

    async def wait_idle(self) -> None:
        """Return once no request is in flight (immediately without the drain layer, which is
        what counts them)."""
        if self.drain_layer is not None:
            await self.drain_layer.wait_idle()

    async def aclose(self, *, keep: Sequence[object] = ()) -> None:
        """Drain and close everything, in the reverse of the start order; idempotent. Errors
        are logged, not raised, so one failing part cannot keep the others open. Parts in
        ``keep`` (the pipeline, a store, a layer) are left open: a gateway replaced on reload
        shares them with its successor."""
        if self._closed:
            return
        self._closed = True
        await close_all(self.resources, keep=keep)

    def __repr__(self) -> str:
        return f"<Gateway layers={list(self._layers)} upstreams={list(self.forwarder.upstreams)!r}>"


def _layer(built: Mapping[str, ASGIApp], name: str, kind: type[_L]) -> _L | None:
    layer = built.get(name)
    if layer is not None and not isinstance(layer, kind):
        raise TypeError(f"the {name!r} layer is a {type(layer).__name__}, not a {kind.__name__}")
    return layer


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
    websockets: WebSocketLimits = WebSocketLimits(),
) -> Gateway:
    """Assemble the gateway (see the module docstring for the order).

    - ``upstreams``, ``client``, ``timeouts``, ``limits``, ``trust_env``, ``routing``: see
      `ForwardingApp` and `Routing`; ``passthrough``: see `ClassifyMiddleware`. Warm-up requests
      are recorded in the usage ledger as ``warmup``, charged to no key. ``websockets``: the
      `WebSocketLimits` of the WebSocket relay.
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
    budgets = usage.get("budgets") if usage is not None else None
    prices = (usage or {}).get("prices") or PriceTable.default()
    if keys is None and auth:
        raise ConfigurationError("auth options were given but no key store ('keys')")
    if capture is not None and "sink" not in capture:
        raise ConfigurationError("capture needs a 'sink'")
    # Without a pipeline the usage layer's events go to the metrics layer (wired below).
    relay = _EventRelay() if metrics is not None and pipeline is None else None
    on_warmup = None
    if pipeline is not None and routing is not None and routing.warmup is not None:
        on_warmup = _warmup_recorder(pipeline, prices)
    forwarder = ForwardingApp(
        upstreams,
        client=client,
        timeouts=timeouts,
        limits=limits,
        trust_env=trust_env,
        routing=routing,
        on_warmup=on_warmup,
        websockets=websockets,
    )

    # The request's way, outermost first.
    declared = (
        # Beside the stack: its own paths never reach the other layers.
        Layer("admin", _admin_mount, admin),
        # Counts every answer, shed ones included, and serves its scrape before any refusal.
        Layer(
            "metrics",
            MetricsMiddleware,
            _metrics_options(metrics, pipeline, prices, routing, health),
        ),
        Layer("overload", OverloadMiddleware, _overload_options(overload, health)),
        # Probes answer even while requests are shed or the process drains.
        Layer("health", HealthMiddleware, health),
        # Outside the classifier, so its own 404/405 are logged and carry a request id too.
        Layer("access_log", AccessLogMiddleware, access_log),
        Layer("drain", DrainMiddleware, drain),
        Layer("classify", ClassifyMiddleware, {"passthrough": passthrough}),
        # Nothing reads the body before the size limit applies.
        Layer("size_limit", SizeLimitMiddleware, size_limit),
        # A request without a valid key is refused from its headers alone.
        Layer("auth", AuthMiddleware, None if keys is None else {"store": keys, **(auth or {})}),
        # An in-memory check that refuses an over-cap request before it costs a rate unit or a
        # Redis round trip.
        Layer("concurrency", ConcurrencyMiddleware, concurrency),
        # Limits are checked before a budget is reserved.
        Layer("rate_limit", RateLimitMiddleware, rate_limit),
        # Sees exactly what the client sees.
        Layer("usage", UsageMiddleware, _usage_options(usage, pipeline or relay, routing)),
        # Next to the wire.
        Layer("capture", CaptureMiddleware, capture),
    )

    app: ASGIApp = forwarder
    built: dict[str, ASGIApp] = {}
    for layer in reversed(declared):
        if layer.options is not None:
            app = built[layer.name] = layer.factory(app, **layer.options)
    gateway = Gateway(
        app,
        forwarder,
        {layer.name: built[layer.name] for layer in declared if layer.name in built},
        pipeline=pipeline,
        keys=keys,
        budgets=budgets,
        declared=declared,
    )
    _wire(gateway, admin=admin, metrics=metrics, relay=relay)
    return gateway


def _wire(
    gateway: Gateway,
    *,
    admin: Mapping[str, Any] | None,
    metrics: Mapping[str, Any] | None,
    relay: _EventRelay | None,
) -> None:
    """The links between layers, made once they all exist.

    - The metrics layer reads the pool's connections and cooldowns, and the rejection counters
      of the rate-limit, concurrency and overload layers (sources given in ``metrics`` win);
      without a pipeline it receives the usage layer's events.
    - The admin API works on this stack's key store, budget store, rate limiter and forwarder,
      unless its kwargs name others.
    """
    if gateway.metrics is not None:
        given = (metrics or {}).get("sources") or {}
        sources = {k: v for k, v in _metric_sources(gateway).items() if k not in given}
        gateway.metrics.watch(sources)
        if relay is not None:
            relay.target = gateway.metrics.emit
    if gateway.admin is not None:
        admin_app = gateway.admin.admin
        assert isinstance(admin_app, AdminApp)
        ops = admin_app.ops
        given_admin = admin or {}
        if "keys" not in given_admin:
            ops.keys = gateway.keys
        if "budgets" not in given_admin:
            ops.budgets = gateway.budgets
        if "rate_limit" not in given_admin:
            ops.rate_limit = gateway.rate_limit
        if "forwarder" not in given_admin:
            ops.forwarder = gateway.forwarder


def _metric_sources(gateway: Gateway) -> dict[str, Callable[[], int]]:
    """The counters and gauges of the other layers and the pool, for the metrics layer."""
    forwarder = gateway.forwarder
    sources: dict[str, Callable[[], int]] = {
        "connections_in_use": forwarder.engine.connections_in_use
    }
    cooldowns = getattr(forwarder, "cooldowns_active", None)
    if callable(cooldowns):
        sources["cooldowns_active"] = cooldowns
    if gateway.rate_limit is not None:
        stats = gateway.rate_limit.stats
        sources["rate_limit_rejections"] = lambda: stats.rejected
        sources["rate_limit_store_errors"] = lambda: stats.store_errors
    concurrency = gateway.concurrency
    if concurrency is not None:
        sources["concurrency_rejections"] = lambda: concurrency.rejected
    overload = gateway.overload
    if overload is not None:
        sources["overload_shed"] = lambda: overload.shed
    return sources


def _admin_mount(app: ASGIApp, *, path: str = "/admin", **options: Any) -> AdminMount:
    """The admin API in front of the whole stack (its stores are wired by `_wire`)."""
    return AdminMount(app, AdminApp(**options), path=path)


def _usage_options(
    usage: Mapping[str, Any] | None, events: object, routing: Routing | None
) -> dict[str, Any] | None:
    if usage is None:
        return None
    options = dict(usage)
    if routing is not None and routing.aliases:
        options.setdefault("aliases", routing.aliases)
    return {"pipeline": events, **options}


def _overload_options(
    overload: Mapping[str, Any] | None, health: Mapping[str, Any] | None
) -> dict[str, Any] | None:
    """Health endpoints are exempt from shedding, so probes answer under overload."""
    if overload is None:
        return None
    options = dict(overload)
    if health is not None and "exempt_paths" not in options:
        options["exempt_paths"] = (
            health.get("live_path", "/healthz"),
            health.get("ready_path", "/readyz"),
        )
    return options


def _warmup_recorder(
    pipeline: UsagePipeline, prices: PriceTable
) -> Callable[[Attempt, Api, str], None]:
    """Record each warm-up in the ledger as ``warmup``: its cost is visible, charged to no key."""

    def record(attempt: Attempt, api: Api, operation: str) -> None:
        usage = attempt.usage
        price = prices.resolve(attempt.model, attempt.credential_id) if attempt.model else None
        pipeline.emit(
            attempt_event(
                None,
                api,
                operation,
                attempt.model,
                0,
                attempt.started_at,
                attempt.model,
                attempt.credential_id,
                attempt.status,
                "warmup",
                attempt.latency,
                usage,
                price.cost_nanos(usage) if price is not None and usage else 0,
                request_id=attempt.request_id or "warmup",
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
    metrics: Mapping[str, Any] | None,
    pipeline: UsagePipeline | None,
    prices: PriceTable,
    routing: Routing | None,
    health: Mapping[str, Any] | None,
) -> dict[str, Any] | None:
    """`MetricsMiddleware` kwargs: the given ones, plus the configured model names (labels of
    their own), the pipeline, and the health endpoints left uncounted. The other layers'
    counters are wired by `_wire`."""
    if metrics is None:
        return None
    options = dict(metrics)
    models = set(options.pop("models", ()))
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
    return options
