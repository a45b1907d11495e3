"""Reload the config file without dropping requests in flight, and end them cleanly on shutdown.

`ReloadableGateway` is the ASGI app of the standalone server: it holds the current `Gateway`
and hands each new request to it. `ReloadableGateway.reload` reads the config file again,
builds a whole new stack from it (keys, limits, prices, routing, upstreams), and swaps it in for
the requests that arrive from then on. The old stack keeps serving the requests it had; it is
closed once they have all finished. Parts that must not reset or exist twice are shared with
the new stack instead of rebuilt:

- the usage pipeline and its sinks, always: a second writer on the same SQLite file or spill
  file would contend with the first, and events queued in the old one must not be lost;
- the budget store, when its ``[budgets]`` store settings are unchanged: spend in memory would
  otherwise restart from zero;
- the rate limiter, when ``[rate_limit]`` is unchanged: its counters would otherwise refill.

Changes to ``[server]`` and ``[usage]`` need a restart; the result of a reload names them. A
file that does not load or validate leaves the running gateway untouched; the error is logged
and returned.

`install_signal_handlers` is how ``asgi-llmguard serve`` connects this to the process: SIGHUP
reloads; SIGTERM/SIGINT start `drain` (bounded by ``[server] shutdown_grace``) alongside the
server's own graceful shutdown, whose deadline is set a few seconds later.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from asgi_llmguard.config import GatewayConfig, load_config, resolve_upstreams, stack_kwargs
from asgi_llmguard.errors import ConfigurationError
from asgi_llmguard.lifecycle import Resource, serve_lifespan
from asgi_llmguard.providers.base import Upstream
from asgi_llmguard.runtime import tune_gc
from asgi_llmguard.stack import Gateway, build_stack
from asgi_llmguard.types import Receive, Scope, Send

logger = logging.getLogger("asgi_llmguard")


@dataclass(frozen=True)
class ReloadResult:
    """What a reload did. ``ok`` false: nothing changed, ``error`` says why."""

    ok: bool
    #: How many configurations this process has loaded (1 at start, +1 per successful reload).
    generation: int
    error: str | None = None
    #: Parts carried over from the previous stack: ``pipeline``, ``budgets``, ``rate_limit``.
    kept: tuple[str, ...] = ()
    #: Changed sections that take effect only after a restart.
    restart_required: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "generation": self.generation,
            "error": self.error,
            "kept": list(self.kept),
            "restart_required": list(self.restart_required),
        }


class _Built:
    """A stack and the config it came from, with the kwargs that hold its long-lived parts."""

    __slots__ = ("config", "gateway", "kwargs", "shared", "unused")

    def __init__(
        self,
        config: GatewayConfig,
        gateway: Gateway,
        kwargs: Mapping[str, Any],
        shared: Sequence[object] = (),
        unused: Sequence[object] = (),
    ) -> None:
        self.config = config
        self.gateway = gateway
        self.kwargs = kwargs
        #: Parts of the previous stack this one uses too (not to be closed with the previous).
        self.shared = tuple(shared)
        #: Fresh parts the config named that the shared ones replaced (never started).
        self.unused = tuple(unused)


class ReloadableGateway(Resource):
    """The gateway built from a config file, reloadable in place (see the module docstring).

    - ``config_path``: the TOML file (``None``: the embedded defaults, which a reload re-reads).
    - ``upstreams``: fixed upstreams used instead of the file's (e.g. a local fake provider).
    - ``environ``: where ``*_env`` settings of ``[[upstreams]]`` are read (default
      ``os.environ``).
    - ``handle_signals``: at lifespan startup, `install_signal_handlers` (the standalone
      server): SIGHUP reloads, SIGTERM/SIGINT drain within ``[server] shutdown_grace``.
    - ``tune_gc``: once started, apply ``[server] gc_threshold`` and ``gc_freeze`` to the
      process (`asgi_llmguard.runtime.tune_gc`; the standalone server).

    Serves ASGI lifespan itself (start, then on shutdown: the replaced stacks still finishing,
    then the current one). Raises `ConfigurationError` when the file is invalid at start.
    """

    def __init__(
        self,
        config_path: str | os.PathLike[str] | None,
        *,
        upstreams: Sequence[Upstream] | None = None,
        environ: Mapping[str, str] | None = None,
        handle_signals: bool = False,
        tune_gc: bool = False,
    ) -> None:
        self.config_path = Path(config_path) if config_path is not None else None
        self._upstreams = tuple(upstreams) if upstreams is not None else None
        self._environ = environ
        self._current = self._build(load_config(self.config_path), None)
        self._lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()
        self._retired_gateways: list[Gateway] = []
        self.generation = 1
        self._handle_signals = handle_signals
        self._tune_gc = tune_gc
        self._restore_signals: Callable[[], None] | None = None

    @property
    def gateway(self) -> Gateway:
        """The stack serving new requests."""
        return self._current.gateway

    @property
    def config(self) -> GatewayConfig:
        return self._current.config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(self, receive, send)
            return
        # One attribute read: a request is served wholly by the stack current when it arrived.
        await self._current.gateway(scope, receive, send)

    # -- reload ----------------------------------------------------------------------------

    async def reload(self) -> ReloadResult:
        """Re-read the config file and swap in a stack built from it (see the module docstring).

        Never raises for a bad file: the result carries the error and the old stack serves on.
        """
        async with self._lock:
            previous = self._current
            try:
                config = load_config(self.config_path)
                built = self._build(config, previous)
            except ConfigurationError as exc:
                logger.error(
                    "configuration reload refused, still serving the previous one: %s", exc
                )
                return ReloadResult(ok=False, generation=self.generation, error=str(exc))
            try:
                await self._close_unused(built)
                await built.gateway.start(keep=built.shared)
            except Exception as exc:
                # Only the type: the text of an arbitrary exception may hold a URL with a secret.
                logger.exception("configuration reload failed while starting the new stack")
                await built.gateway.aclose(keep=built.shared)
                return ReloadResult(
                    ok=False,
                    generation=self.generation,
                    error=f"the new configuration failed to start ({type(exc).__name__})",
                )
            self._current = built
            self.generation += 1
            task = asyncio.create_task(self._retire(previous.gateway, built.shared))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
            result = ReloadResult(
                ok=True,
                generation=self.generation,
                kept=_kept_names(previous, built),
                restart_required=_restart_required(previous.config, config),
            )
            logger.info(
                "configuration reloaded (generation %d)%s",
                self.generation,
                "; restart needed for: " + ", ".join(result.restart_required)
                if result.restart_required
                else "",
            )
            return result

    async def _admin_reload(self) -> dict[str, Any]:
        """``POST /admin/reload``: a refused file is a `ConfigurationError` (answered 400)."""
        result = await self.reload()
        if not result.ok:
            raise ConfigurationError(result.error or "reload failed")
        return result.as_dict()

    def _build(self, config: GatewayConfig, previous: _Built | None) -> _Built:
        environ = self._environ if self._environ is not None else os.environ
        if self._upstreams is not None:
            upstreams = list(self._upstreams)
        else:
            upstreams = resolve_upstreams(config, environ)  # type: ignore[arg-type]
        if not upstreams:
            raise ConfigurationError(
                "No upstream is configured: add [[upstreams]] to the config file or set "
                "OPENAI_API_KEY / ANTHROPIC_API_KEY"
            )
        kwargs = stack_kwargs(config, upstreams)
        shared: list[object] = []
        unused: list[object] = []
        if previous is not None:
            shared, unused = _share(kwargs, config, previous)
        if kwargs.get("admin") is not None:
            kwargs["admin"] = {**kwargs["admin"], "reload": self._admin_reload}
        return _Built(config, build_stack(**kwargs), kwargs, shared, unused)

    @staticmethod
    async def _close_unused(built: _Built) -> None:
        """Close the fresh parts the config named but the new stack does not use (shared ones
        replaced them); they were never started."""
        for part in built.unused:
            close = getattr(part, "aclose", None)
            if close is not None:
                try:
                    await close()
                except Exception:
                    logger.warning("could not close an unused %s", type(part).__name__)

    async def _retire(self, gateway: Gateway, keep: Sequence[object]) -> None:
        """Close a replaced stack once the requests it was serving have all finished."""
        self._retired_gateways.append(gateway)
        try:
            await gateway.wait_idle()
            await gateway.aclose(keep=keep)
        finally:
            self._retired_gateways.remove(gateway)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        await self._current.gateway.start()
        if self._handle_signals and self._restore_signals is None:
            grace = self.config.server.shutdown_grace
            self._restore_signals = install_signal_handlers(self, grace=grace)
        if self._tune_gc:
            server = self.config.server
            tune_gc(threshold=server.gc_threshold, freeze=server.gc_freeze)
            self._tune_gc = False  # once per process: a restart of the stack keeps it

    async def drain(self, grace: float) -> int:
        """`Gateway.drain` on the current stack and on replaced ones still finishing."""
        counts = await asyncio.gather(
            self._current.gateway.drain(grace),
            *(g.drain(grace) for g in list(self._retired_gateways)),
        )
        return sum(counts)

    async def aclose(self) -> None:
        """Close replaced stacks (their requests have ended by now, or `drain` ended them),
        then the current one, which owns the shared parts."""
        if self._restore_signals is not None:
            self._restore_signals()
            self._restore_signals = None
        for g in list(self._retired_gateways):
            await g.drain(0)
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
        await self._current.gateway.aclose()

    def __repr__(self) -> str:
        return f"<ReloadableGateway generation={self.generation} {self._current.gateway!r}>"


def _share(
    kwargs: dict[str, Any], config: GatewayConfig, previous: _Built
) -> tuple[list[object], list[object]]:
    """Point the new stack's kwargs at the previous stack's long-lived parts.

    Returns those parts, and the fresh ones they replace (to be closed unused)."""
    shared: list[object] = []
    unused: list[object] = []
    old = previous.gateway
    fresh_pipeline = kwargs.get("pipeline")
    if old.pipeline is not None and fresh_pipeline is not None:
        kwargs["pipeline"] = old.pipeline
        shared.append(old.pipeline)
    usage = kwargs.get("usage")
    old_usage = previous.kwargs.get("usage")
    if usage is not None and old_usage is not None and old_usage.get("budgets") is not None:
        b, ob = config.budgets, previous.config.budgets
        if (b.store, b.prefix, b.timeout) == (ob.store, ob.prefix, ob.timeout):
            if usage.get("budgets") is not None:
                unused.append(usage["budgets"])
            kwargs["usage"] = {**usage, "budgets": old_usage["budgets"]}
            shared.append(old_usage["budgets"])
    limiter = old.rate_limit
    rate = kwargs.get("rate_limit")
    if rate is not None and limiter is not None and config.rate_limit == previous.config.rate_limit:
        kwargs["rate_limit"] = {**rate, "limiter": limiter.limiter}
        shared.append(limiter.limiter)
    return shared, unused


def _kept_names(previous: _Built, built: _Built) -> tuple[str, ...]:
    names = []
    old = previous.gateway
    if old.pipeline is not None and built.gateway.pipeline is old.pipeline:
        names.append("pipeline")
    old_budgets = (previous.kwargs.get("usage") or {}).get("budgets")
    if old_budgets is not None and any(p is old_budgets for p in built.shared):
        names.append("budgets")
    if old.rate_limit is not None and any(p is old.rate_limit.limiter for p in built.shared):
        names.append("rate_limit")
    return tuple(names)


def _restart_required(old: GatewayConfig, new: GatewayConfig) -> tuple[str, ...]:
    return tuple(name for name in ("server", "usage") if getattr(old, name) != getattr(new, name))


class _Servable(Protocol):
    async def drain(self, grace: float) -> int: ...

    async def reload(self) -> ReloadResult: ...


def install_signal_handlers(
    app: _Servable, *, grace: float, loop: asyncio.AbstractEventLoop | None = None
) -> Callable[[], None]:
    """Make SIGHUP reload ``app`` and SIGTERM/SIGINT start ``app.drain(grace)``, in this process.

    Call it from the running loop, after the server installed its own handlers (e.g. at
    lifespan startup): SIGTERM/SIGINT still reach the server's handler, so it stops accepting
    and begins its graceful shutdown at once, while the drain ends what is left after
    ``grace`` seconds, before the server's deadline. Returns a function restoring the previous
    handlers.
    """
    loop = loop or asyncio.get_running_loop()
    tasks: set[asyncio.Task[Any]] = set()
    draining = False

    def spawn(coro: Any) -> None:
        task = loop.create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def start_drain() -> None:
        nonlocal draining
        if not draining:
            draining = True
            spawn(app.drain(grace))

    previous: dict[int, Any] = {}

    def on_stop(sig: int, frame: FrameType | None) -> None:
        loop.call_soon_threadsafe(start_drain)
        handler = previous.get(sig)
        if callable(handler):
            handler(sig, frame)

    def on_hup(sig: int, frame: FrameType | None) -> None:
        loop.call_soon_threadsafe(lambda: spawn(app.reload()))

    for sig in (signal.SIGTERM, signal.SIGINT):
        previous[sig] = signal.signal(sig, on_stop)
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, on_hup)

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore
