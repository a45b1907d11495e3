"""Prometheus metrics: requests, upstream latencies, tokens, cost, rejections and live gauges.

The layer sits outermost, so it sees every answer the gateway gives (load shedding's 503s
included) and serves ``path`` itself, before anything can refuse the scrape. Per request it wraps
``send`` to read the status and time the first body byte, and records the request from the
`RequestContext` (route, model, credential) just before the last body message goes out: a client
that has its answer can scrape and find it counted, whichever worker answers.

Tokens, cost and budget refusals come from the `UsageEvent` of each request (``emit``: add it as
a listener of the `UsagePipeline`, or hand the layer to `UsageMiddleware` as its ``pipeline``).
Everything else is state other objects hold (the usage queue, the upstream pool, the limiters'
counters); it is read by `refresh`, at every scrape in the worker that answers and every
``refresh_interval`` seconds in every worker, so with several workers each one's share is at
most that old.

Label values are bounded: model names are the configured ``models`` (always their own label)
and the first ``max_models`` other names seen, then ``"other"``; key ids (hash prefixes or
operator names, never keys) likewise up to ``max_key_ids``. With several workers the caps are
per process.

prometheus-client is an optional extra: this module imports without it, and enabling the
layer without it raises `ConfigurationError` saying what to install.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from asgi_llmguard.context import InvalidBody, RequestContext, get_context, route_path
from asgi_llmguard.errors import ConfigurationError, error_body, send_body
from asgi_llmguard.lifecycle import Resource, pass_lifespan
from asgi_llmguard.types import ASGIApp, Message, Receive, Scope, Send
from asgi_llmguard.usage.events import UsageEvent
from asgi_llmguard.usage.pipeline import UsagePipeline

if TYPE_CHECKING:
    from prometheus_client import Counter, Gauge

    from asgi_llmguard.middleware._prometheus import Families

logger = logging.getLogger("asgi_llmguard.metrics")

#: The label value of model names and key ids past their cap.
OTHER = "other"
DEFAULT_LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
DEFAULT_TTFB_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Gauges read from ``sources`` (current values).
GAUGE_SOURCES = frozenset({"connections_in_use", "cooldowns_active"})
#: Counts read from ``sources`` (monotonic totals kept by other layers; exported as counters).
COUNT_SOURCES = frozenset(
    {"rate_limit_rejections", "concurrency_rejections", "overload_shed", "rate_limit_store_errors"}
)
_MAX_LABEL_LENGTH = 200
_INSTALL = "metrics need prometheus-client: pip install 'asgi-llmguard[metrics]'"


class BoundedLabels:
    """Label values for a field callers choose: ``known`` names always, the first ``cap`` other
    names, then ``"other"``, so the number of series cannot grow without bound."""

    __slots__ = ("_cap", "_known", "_seen")

    def __init__(self, known: Iterable[str], cap: int) -> None:
        self._known = frozenset(known)
        self._seen: set[str] = set()
        self._cap = cap

    def __call__(self, value: str | None) -> str:
        if not value:
            return ""
        if value in self._known or value in self._seen:
            return value
        if len(self._seen) < self._cap and len(value) <= _MAX_LABEL_LENGTH:
            self._seen.add(value)
            return value
        return OTHER


class MetricsMiddleware(Resource):
    """Export the gateway's metrics in the Prometheus text format at ``path`` (GET/HEAD).

    - ``models``: model names that always get their own label; ``max_models`` more are taken
      as they come, the rest are ``"other"``. ``max_key_ids`` bounds key ids the same way.
    - ``exclude_paths``: route paths not counted (health probes).
    - ``pipeline``: the `UsagePipeline` whose events give tokens, cost and budget refusals, and
      whose queue depth, spilled and dropped counts are exported. Without a pipeline, pass this
      layer to `UsageMiddleware` as its ``pipeline`` (it has ``emit``).
    - ``sources``: callables read at each refresh: gauges ``connections_in_use`` and
      ``cooldowns_active``; monotonic counts ``rate_limit_rejections``,
      ``concurrency_rejections``, ``overload_shed`` and ``rate_limit_store_errors`` (the
      layers' own counters; the increase since the last refresh is added).
    - ``refresh_interval``: seconds between refreshes in the background (started with the
      gateway, on lifespan startup, or on the first request).
    - ``latency_buckets``, ``ttfb_buckets``: histogram bucket bounds in seconds.

    In prometheus_client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set before it is
    imported) the exposition merges every worker's values. Use one instance per process.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        path: str = "/metrics",
        models: Iterable[str] = (),
        max_models: int = 100,
        max_key_ids: int = 1000,
        exclude_paths: Sequence[str] = (),
        pipeline: UsagePipeline | None = None,
        sources: Mapping[str, Callable[[], int]] | None = None,
        refresh_interval: float = 1.0,
        latency_buckets: Sequence[float] = DEFAULT_LATENCY_BUCKETS,
        ttfb_buckets: Sequence[float] = DEFAULT_TTFB_BUCKETS,
    ) -> None:
        if not isinstance(path, str) or not path.startswith("/"):
            raise ConfigurationError(f"path must start with '/', not {path!r}")
        if isinstance(models, str):
            raise ConfigurationError("models must be a list of model names, not a string")
        for name, cap in (("max_models", max_models), ("max_key_ids", max_key_ids)):
            if isinstance(cap, bool) or not isinstance(cap, int) or cap < 0:
                raise ConfigurationError(f"{name} must be an integer >= 0, not {cap!r}")
        if isinstance(exclude_paths, str) or path in exclude_paths:
            raise ConfigurationError("exclude_paths must be a list of paths other than `path`")
        if isinstance(refresh_interval, bool) or not isinstance(refresh_interval, int | float):
            raise ConfigurationError(f"refresh_interval must be a number, not {refresh_interval!r}")
        if refresh_interval <= 0:
            raise ConfigurationError(f"refresh_interval must be > 0, not {refresh_interval!r}")
        for name, buckets in (("latency_buckets", latency_buckets), ("ttfb_buckets", ttfb_buckets)):
            if not buckets or list(buckets) != sorted(set(buckets)) or buckets[0] <= 0:
                raise ConfigurationError(f"{name} must be increasing positive numbers")
        _check_sources(sources or {})
        try:
            from asgi_llmguard.middleware._prometheus import CONTENT_TYPE_LATEST, Families
        except ImportError:
            raise ConfigurationError(_INSTALL) from None

        self.app = app
        self.path = path
        self._exclude = frozenset(exclude_paths)
        self._interval = float(refresh_interval)
        self.families: Families = Families(latency_buckets, ttfb_buckets)
        f = self.families
        self._models = BoundedLabels(models, max_models)
        self._key_ids = BoundedLabels((), max_key_ids)
        self._pipeline = pipeline
        self._gauge_families: dict[str, Gauge] = {
            "connections_in_use": f.connections,
            "cooldowns_active": f.cooldowns,
        }
        self._count_families: dict[str, Counter] = {
            "rate_limit_rejections": f.rate_limit_rejections.labels("rate_limit"),
            "concurrency_rejections": f.rate_limit_rejections.labels("concurrency"),
            "overload_shed": f.overload_shed,
            "rate_limit_store_errors": f.rate_limit_store_errors,
        }
        self._gauges: list[tuple[str, Callable[[], int], Gauge]] = []
        # [name, read, counter, last value seen]: the counter grows by the difference.
        self._counts: list[tuple[str, Callable[[], int], Counter, list[int]]] = []
        self.watch(sources or {})
        if pipeline is not None:
            stats = pipeline.stats
            self._counts += [
                ("spilled", lambda: stats.spilled, f.spilled, [0]),
                ("dropped", lambda: stats.dropped, f.dropped, [0]),
            ]
            pipeline.add_listener(self.emit)
        self._failed: set[str] = set()
        self._content_type = CONTENT_TYPE_LATEST.encode()
        self._not_allowed = error_body(405, f"Use GET on {path}.")
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    # -- requests --------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http":
            if kind == "lifespan":
                await pass_lifespan(self.app, self, scope, receive, send)
            elif kind == "websocket":
                await self._session(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        path = route_path(scope)
        if path == self.path:
            await self._expose(scope, send)
            return
        if path in self._exclude:
            await self.app(scope, receive, send)
            return
        if self._task is None and not self._closed:
            self._start_refresh()

        start = time.perf_counter()
        status = 0
        ttfb: float | None = None
        recorded = False

        async def metered_send(message: Message) -> None:
            nonlocal status, ttfb, recorded
            kind = message["type"]
            if kind == "http.response.start":
                status = message["status"]
            elif kind == "http.response.body":
                if ttfb is None and message.get("body"):
                    ttfb = time.perf_counter() - start
                if not message.get("more_body", False) and not recorded:
                    # Counted before the client can see the end of its answer.
                    recorded = True
                    self._record(get_context(scope), status, ttfb, time.perf_counter() - start)
            await send(message)

        try:
            await self.app(scope, receive, metered_send)
        finally:
            if not recorded:
                ctx = get_context(scope)
                # No complete answer: the status sent, else 499 (client gone) or 500 (an error
                # the server will answer with).
                code = status or (499 if ctx.disconnected else 500)
                self._record(ctx, code, ttfb, time.perf_counter() - start)

    async def _session(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A WebSocket session counts as one request when it ends: status 101 once accepted, else
        its refusal's; its turns' tokens and costs come from their usage events."""
        start = time.perf_counter()
        status = 0

        async def noting(message: Message) -> None:
            nonlocal status
            kind = message["type"]
            if kind == "websocket.accept":
                status = 101
            elif kind == "websocket.http.response.start":
                status = message["status"]
            elif kind == "websocket.close" and not status:
                status = 403  # refused before accepting, without a denial response
            await send(message)

        try:
            await self.app(scope, receive, noting)
        finally:
            self._record(get_context(scope), status or 500, None, time.perf_counter() - start)

    def _record(self, ctx: RequestContext, status: int, ttfb: float | None, elapsed: float) -> None:
        route = ctx.route
        if route is None:
            endpoint = provider = "unknown"
        else:
            endpoint = route.endpoint.operation
            provider = route.endpoint.api
        model = self._models(_model(ctx))
        f = self.families
        f.requests.labels(endpoint, provider, model, str(status)).inc()
        if ctx.credential_id is not None:
            f.latency.labels(endpoint, provider, model).observe(elapsed)
            if ttfb is not None:
                f.ttfb.labels(endpoint, provider, model).observe(ttfb)

    def emit(self, event: UsageEvent) -> None:
        """Count one usage event: tokens and cost, or a budget refusal. Cheap and synchronous,
        so it can listen to a `UsagePipeline` or stand in for one."""
        key_id = self._key_ids(event.key_id)
        f = self.families
        if event.outcome == "rejected":
            if event.status == 429:
                f.budget_rejections.labels(key_id).inc()
            return
        model = self._models(event.model)
        if event.input_tokens:
            f.tokens.labels(key_id, model, "input").inc(event.input_tokens)
        if event.output_tokens:
            f.tokens.labels(key_id, model, "output").inc(event.output_tokens)
        if event.cost_nanos:
            f.cost.labels(key_id, model).inc(event.cost_nanos / 1e9)

    # -- exposition and refresh ------------------------------------------------------------------

    async def _expose(self, scope: Scope, send: Send) -> None:
        method = scope["method"]
        if method not in ("GET", "HEAD"):
            await send_body(send, 405, self._not_allowed, ((b"allow", b"GET, HEAD"),))
            return
        self.refresh()
        body = await asyncio.to_thread(self.families.render)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", self._content_type),
                    (b"content-length", str(len(body)).encode()),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})

    def refresh(self) -> None:
        """Read the sources and the pipeline into the gauges and counters (this process's)."""
        for name, read, gauge in self._gauges:
            value = self._read(name, read)
            if value is not None:
                gauge.set(value)
        for name, read, counter, last in self._counts:
            value = self._read(name, read)
            if value is None:
                continue
            grown = value - last[0]
            last[0] = value
            if grown > 0:
                counter.inc(grown)
        if self._pipeline is not None:
            self.families.queue_depth.set(self._pipeline.stats.pending)

    def _read(self, name: str, read: Callable[[], int]) -> int | None:
        try:
            return int(read())
        except Exception:
            if name not in self._failed:  # once per source, not once a second
                self._failed.add(name)
                logger.exception("metrics: reading %s failed", name)
            return None

    def watch(self, sources: Mapping[str, Callable[[], int]]) -> None:
        """Read ``sources`` too at each refresh (names as for the ``sources`` argument)."""
        _check_sources(sources)
        for name, read in sources.items():
            if name in self._gauge_families:
                self._gauges.append((name, read, self._gauge_families[name]))
            else:
                self._counts.append((name, read, self._count_families[name], [0]))

    async def start(self) -> None:
        """Start the periodic refresh; idempotent. `aclose` stops it."""
        if self._task is None and not self._closed:
            self._start_refresh()

    def _start_refresh(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._refresh_loop(), name="llmguard-metrics-refresh"
        )

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            self.refresh()

    async def aclose(self) -> None:
        """Stop refreshing, take a last reading, and in multiprocess mode remove this process's
        live gauges (what it counted stays)."""
        if self._closed:
            return
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self.refresh()
        self.families.mark_process_dead()

    def __repr__(self) -> str:
        mode = "multiprocess" if self.families.multiprocess_dir else "single-process"
        return f"<MetricsMiddleware path={self.path!r} {mode}>"


def _check_sources(sources: Mapping[str, object]) -> None:
    unknown = set(sources) - GAUGE_SOURCES - COUNT_SOURCES
    if unknown:
        raise ConfigurationError(
            f"unknown metric sources {sorted(unknown)}; known: "
            f"{sorted(GAUGE_SOURCES | COUNT_SOURCES)}"
        )


def _model(ctx: RequestContext) -> str | None:
    try:
        return ctx.model
    except InvalidBody:
        return None
