"""`build_stack`: the layers in the documented order; what they own started in one order and
closed in the reverse one, under a real uvicorn lifespan."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from asgi_llmguard import KeyPolicy, StaticKey, StaticKeyStore, Upstream, build_stack
from asgi_llmguard.capture import CaptureRecord
from asgi_llmguard.forward.app import ForwardingApp
from asgi_llmguard.middleware.capture import CaptureMiddleware
from asgi_llmguard.middleware.health import HealthMiddleware
from asgi_llmguard.middleware.metrics import MetricsMiddleware
from asgi_llmguard.middleware.usage import UsageMiddleware
from asgi_llmguard.ratelimit.gcra import MemoryGcra
from asgi_llmguard.reload import ReloadableGateway
from asgi_llmguard.stack import Gateway
from asgi_llmguard.testing import FakeProvider, serve, serve_async
from asgi_llmguard.usage.pipeline import UsagePipeline
from asgi_llmguard.usage.sinks import SQLiteSink

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-llmg-stack-0123456789abcdef0123456789"
UPSTREAM_KEY = "sk-upstream-stack"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}

# The parts that own something, by the class that owns it.
OWNERS = {
    MetricsMiddleware: "metrics",
    ForwardingApp: "forwarder",
    HealthMiddleware: "health",
    MemoryGcra: "rate_limit",
    UsagePipeline: "pipeline",
    UsageMiddleware: "usage",
    CaptureMiddleware: "capture",
}


def _documented_order() -> list[str]:
    """The layer names of the README's table ("The layers, outermost first"), down to the
    forwarder: ``MetricsMiddleware`` -> ``metrics``, ``AdminApp`` -> ``admin``, ..."""
    text = (ROOT / "README.md").read_text()
    table = text.split("The layers, outermost first", 1)[1].split("\n\n", 2)[1]
    names = []
    for row in table.splitlines()[2:]:
        cls = re.search(r"`(\w+)`", row.split("|")[2])
        assert cls is not None, row
        if cls.group(1) == "ForwardingApp":
            break
        stem = re.sub(r"(Middleware|App)$", "", cls.group(1))
        names.append(re.sub(r"(?<!^)(?=[A-Z])", "_", stem).lower())
    return names


class RecordingKeys(StaticKeyStore):
    def __init__(self, log: list[str]) -> None:
        super().__init__([StaticKey(KeyPolicy("team-a"), key=KEY)])
        self.log = log

    async def aclose(self) -> None:
        self.log.append("keys")


async def _capture_sink(record: CaptureRecord) -> None:
    return None


def _record(monkeypatch: pytest.MonkeyPatch, method: str, log: list[str]) -> None:
    """Log ``method`` calls of every owner class, by owner name, then run the real one."""
    for cls in OWNERS:
        original: Callable[..., Any] | None = getattr(cls, method, None)
        if original is None:
            continue

        async def recorded(self: Any, *a: Any, _original: Any = original) -> None:
            if type(self) in OWNERS:
                log.append(OWNERS[type(self)])
            await _original(self, *a)

        monkeypatch.setattr(cls, method, recorded)


def _gateway(upstream: str, tmp_path: Path, keys: StaticKeyStore, spill: Path) -> Any:
    pipeline = UsagePipeline([SQLiteSink(tmp_path / "ledger.sqlite3")], spill_path=spill)
    return build_stack(
        upstreams=[Upstream("openai", f"{upstream}/v1", api_key=UPSTREAM_KEY)],
        keys=keys,
        pipeline=pipeline,
        capture={"sink": _capture_sink},
        health={},
        overload={"max_in_flight": 100},
        metrics={"refresh_interval": 60},
        admin={"key": "admin-" + "x" * 40},
    )


def test_the_declared_order_is_the_documented_one() -> None:
    gateway = build_stack(
        upstreams=[Upstream("openai", "http://upstream.invalid/v1", api_key="sk")],
        keys=StaticKeyStore([StaticKey(KeyPolicy("team-a"), key=KEY)]),
        capture={"sink": _capture_sink},
        health={},
        overload={"max_in_flight": 10},
        metrics={},
        admin={"key": "admin-" + "x" * 40},
    )
    declared = [layer.name for layer in gateway.declared]
    assert declared == _documented_order()
    assert all(layer.enabled for layer in gateway.declared)
    # Built with reversed(): from the outside in, each layer wraps the next declared one.
    app, chain = gateway.app, []
    while app is not gateway.forwarder:
        chain.append(app)
        app = app.app
    assert chain == [gateway.layers[name] for name in declared]
    assert gateway.rate_limit is gateway.layers["rate_limit"]
    assert gateway.admin is not None
    assert gateway.admin.admin.ops.rate_limit is gateway.rate_limit


def test_left_out_layers_are_declared_but_not_built() -> None:
    gateway = build_stack(
        upstreams=[Upstream("openai", "http://upstream.invalid/v1", api_key="sk")],
        rate_limit=None,
        drain=None,
    )
    off = {layer.name for layer in gateway.declared if not layer.enabled}
    assert off == {
        "admin",
        "metrics",
        "overload",
        "health",
        "drain",
        "auth",
        "rate_limit",
        "capture",
    }
    assert list(gateway.layers) == [
        layer.name for layer in gateway.declared if layer.name not in off
    ]
    assert (gateway.rate_limit, gateway.drain_layer, gateway.auth) == (None, None, None)


async def test_a_failed_start_closes_what_started_and_the_server_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    closed: list[str] = []
    _record(monkeypatch, "aclose", closed)
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    with serve(FakeProvider(api_key=UPSTREAM_KEY)) as upstream:
        gateway = _gateway(upstream.url, tmp_path, RecordingKeys(closed), blocker / "spill")
        # uvicorn's loggers do not propagate to the root logger (log_config=None: leave them be)
        server_log = logging.getLogger("uvicorn")
        server_log.addHandler(caplog.handler)
        try:
            with pytest.raises(RuntimeError, match="failed to start"):
                async with serve_async(gateway, lifespan="on", log_config=None):
                    pass
        finally:
            server_log.removeHandler(caplog.handler)
    # uvicorn got lifespan.startup.failed with the reason.
    said = [r.getMessage() for r in caplog.records if r.name == "uvicorn.error"]
    assert any("spill directory" in m and "cannot be created" in m for m in said), said
    # The metrics refresh, the forwarder, health checks, keys and the limiter had started
    # before the pipeline failed: all are closed, in reverse order, and so is the rest.
    assert closed == [
        "capture",
        "usage",
        "pipeline",
        "rate_limit",
        "keys",
        "health",
        "forwarder",
        "metrics",
    ]


async def test_shutdown_closes_in_the_reverse_of_the_start_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[str] = []
    closed: list[str] = []
    _record(monkeypatch, "start", started)
    _record(monkeypatch, "aclose", closed)
    with serve(FakeProvider(api_key=UPSTREAM_KEY)) as upstream:
        gateway: Gateway = _gateway(
            upstream.url, tmp_path, RecordingKeys(closed), tmp_path / "spill"
        )
        async with serve_async(gateway, lifespan="on") as server:
            async with httpx.AsyncClient(base_url=server.url) as client:
                resp = await client.post(
                    "/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {KEY}"}
                )
            assert resp.status_code == 200
            assert closed == []
            assert started == [
                "metrics",
                "forwarder",
                "health",
                "rate_limit",
                "pipeline",
                "capture",
            ]
    assert closed == [
        "capture",
        "usage",
        "pipeline",
        "rate_limit",
        "keys",
        "health",
        "forwarder",
        "metrics",
    ]
    owners = [o for o in gateway.resources if type(o) in OWNERS]
    assert [OWNERS[type(o)] for o in reversed(owners)] == [c for c in closed if c != "keys"]


async def test_the_standalone_server_refuses_to_start_the_same_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """`ReloadableGateway` (what ``asgi-llmguard serve`` runs) answers lifespan with the same
    loop: the reason goes to the server, and what the stack holds is closed."""
    closed: list[str] = []
    _record(monkeypatch, "aclose", closed)
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    config = tmp_path / "llmguard.toml"
    config.write_text(
        f"[usage]\nsinks = ['sqlite:///{tmp_path / 'ledger.sqlite3'}']\n"
        f"spill_path = '{blocker / 'spill'}'\n"
    )
    with serve(FakeProvider(api_key=UPSTREAM_KEY)) as upstream:
        app = ReloadableGateway(
            config, upstreams=[Upstream("openai", f"{upstream.url}/v1", api_key=UPSTREAM_KEY)]
        )
        server_log = logging.getLogger("uvicorn")
        server_log.addHandler(caplog.handler)
        try:
            with pytest.raises(RuntimeError, match="failed to start"):
                async with serve_async(app, lifespan="on", log_config=None):
                    pass
        finally:
            server_log.removeHandler(caplog.handler)
    said = [r.getMessage() for r in caplog.records if r.name == "uvicorn.error"]
    assert any("spill directory" in m and "cannot be created" in m for m in said), said
    assert closed == ["usage", "pipeline", "rate_limit", "health", "forwarder"]
