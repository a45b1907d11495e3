"""The Prometheus side of `MetricsMiddleware`: the metric families and their exposition.

Imported only when metrics are enabled, because prometheus-client is the optional ``metrics``
extra. The families live in a registry of their own, so several gateways in one process (tests,
an app mounting two) never clash in prometheus_client's global registry.

Multiprocess mode. prometheus_client decides when it is imported: with
``PROMETHEUS_MULTIPROC_DIR`` set, every value is written to memory-mapped files in that
directory, one file per process and metric type, and an exposition must merge the files of
all processes (`MultiProcessCollector`), whichever worker answers the scrape. Counters and
histograms are summed, dead workers included (their counts happened); gauges carry a
``multiprocess_mode`` saying how the workers' values combine, and the ``live*`` modes drop the
files of processes that are gone. A worker removes its own on shutdown, and the worker that
answers a scrape removes those of workers that died without shutting down (``kill -9``).
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
from collections.abc import Sequence

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)

__all__ = ["CONTENT_TYPE_LATEST", "Families", "multiprocess_dir"]

_LIVE_GAUGE_FILE = re.compile(r"gauge_live[a-z]+_(\d+)\.db$")


def multiprocess_dir() -> str | None:
    """The multiprocess directory when prometheus_client runs in that mode, else ``None``.

    The mode was fixed when prometheus_client was imported (from the environment, its only
    switch), so this asks the library which value class it chose rather than re-reading a
    variable that may have changed since.
    """
    if not getattr(values.ValueClass, "_multiprocess", False):
        return None
    # The library copies its deprecated lower-case spelling into this one when it sees it.
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR")


class Families:
    """Every metric the gateway exports, created once per `MetricsMiddleware`."""

    def __init__(self, latency_buckets: Sequence[float], ttfb_buckets: Sequence[float]) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.multiprocess_dir = multiprocess_dir()
        route = ("endpoint", "provider", "model")
        self.requests = Counter(
            "llmguard_requests",
            "HTTP requests answered, by route operation, route API, requested model and status.",
            (*route, "status"),
            registry=r,
        )
        self.latency = Histogram(
            "llmguard_upstream_latency_seconds",
            "Seconds from a request's arrival to the end of its answer, for requests that "
            "reached an upstream.",
            route,
            buckets=tuple(latency_buckets),
            registry=r,
        )
        self.ttfb = Histogram(
            "llmguard_upstream_ttfb_seconds",
            "Seconds from a request's arrival to the first byte of its answer's body, for "
            "requests that reached an upstream.",
            route,
            buckets=tuple(ttfb_buckets),
            registry=r,
        )
        self.tokens = Counter(
            "llmguard_tokens",
            "LLM tokens used, by key id, requested model and direction (input, output).",
            ("key_id", "model", "direction"),
            registry=r,
        )
        self.cost = Counter(
            "llmguard_cost_usd",
            "Cost in US dollars at the configured prices, by key id and requested model.",
            ("key_id", "model"),
            registry=r,
        )
        self.budget_rejections = Counter(
            "llmguard_budget_rejections",
            "Requests refused with 429 insufficient_quota because a budget was exhausted.",
            ("key_id",),
            registry=r,
        )
        self.rate_limit_rejections = Counter(
            "llmguard_rate_limit_rejections",
            "Requests refused with 429 by a limit: layer rate_limit (requests/tokens per "
            "window) or concurrency (requests in flight per key).",
            ("layer",),
            registry=r,
        )
        self.rate_limit_store_errors = Counter(
            "llmguard_rate_limit_store_errors",
            "Rate-limit store calls that failed or timed out.",
            registry=r,
        )
        self.overload_shed = Counter(
            "llmguard_overload_shed",
            "Requests refused with 503 because the process had its cap in flight.",
            registry=r,
        )
        self.spilled = Counter(
            "llmguard_usage_events_spilled",
            "Usage events written to the spill file to be replayed later.",
            registry=r,
        )
        self.dropped = Counter(
            "llmguard_usage_events_dropped",
            "Usage events lost because the spill file could not be written either.",
            registry=r,
        )
        # Per-process states: summed over the live workers (each has its own queue and pool).
        self.queue_depth = Gauge(
            "llmguard_usage_queue_depth",
            "Usage events queued or being written.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.connections = Gauge(
            "llmguard_pool_connections_in_use",
            "Upstream connections currently in use.",
            registry=r,
            multiprocess_mode="livesum",
        )
        # Cooldowns shared through Redis are seen alike by every worker, so a sum would count
        # each once per worker; the maximum is exact then, and a lower bound for per-process
        # cooldowns.
        self.cooldowns = Gauge(
            "llmguard_cooldowns_active",
            "Upstream credentials cooling down after failures (maximum over the workers).",
            registry=r,
            multiprocess_mode="livemax",
        )

    def render(self) -> bytes:
        """The text exposition: this registry, or every process's files in multiprocess mode.

        Reads files in multiprocess mode: call it off the event loop.
        """
        path = self.multiprocess_dir
        if path is None:
            return generate_latest(self.registry)
        _forget_dead_processes(path)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
        return generate_latest(registry)

    def mark_process_dead(self) -> None:
        """Remove this process's live gauges from the multiprocess files (at shutdown)."""
        if self.multiprocess_dir is not None:
            multiprocess.mark_process_dead(os.getpid(), self.multiprocess_dir)  # type: ignore[no-untyped-call]


def _forget_dead_processes(path: str) -> None:
    """Drop the live-gauge files of processes that no longer exist (a worker killed outright
    never ran its shutdown). Counter and histogram files stay: what they counted happened."""
    dead: set[int] = set()
    for name in glob.glob(os.path.join(path, "gauge_live*_*.db")):
        match = _LIVE_GAUGE_FILE.search(name)
        if match is None:
            continue
        pid = int(match.group(1))
        if pid in dead:
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            dead.add(pid)
        except PermissionError:
            pass  # alive, owned by another user
    for pid in dead:
        with contextlib.suppress(OSError):
            multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
