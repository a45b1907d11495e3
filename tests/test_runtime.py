"""The standalone server's collector settings (`asgi_llmguard.runtime`), applied at start-up."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager

from asgi_llmguard.cli import ENV_CONFIG, ENV_FAKE_UPSTREAM, create_app
from asgi_llmguard.errors import ConfigurationError
from asgi_llmguard.forward.engines import HttpxEngine
from asgi_llmguard.providers.base import Upstream
from asgi_llmguard.reload import ReloadableGateway
from asgi_llmguard.runtime import tune_gc
from asgi_llmguard.testing import FakeProvider

pytestmark = pytest.mark.anyio

UPSTREAMS = [Upstream("openai", "http://upstream.invalid/v1", api_key="sk-up")]
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(autouse=True)
def restore_gc() -> Iterator[None]:
    """These tests change the process's collector; put it back for the rest of the suite."""
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def _config(tmp_path: Path, server: str) -> Path:
    path = tmp_path / "llmguard.toml"
    path.write_text(
        f"[server]\n{server}\n[usage]\nsinks = ['sqlite:///{tmp_path / 'ledger.sqlite3'}']\n"
        f"spill_path = '{tmp_path / 'spill'}'\n"
    )
    return path


async def test_serve_freezes_the_started_app_and_raises_the_young_threshold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gc.unfreeze()
    monkeypatch.setenv(ENV_CONFIG, str(_config(tmp_path, "gc_threshold = 12345")))
    monkeypatch.setenv(ENV_FAKE_UPSTREAM, "http://127.0.0.1:9")
    app = create_app()  # what `asgi-llmguard serve` runs in each worker
    assert gc.get_threshold()[0] != 12345  # nothing changes before the app has started
    assert gc.get_freeze_count() == 0
    async with LifespanManager(app):
        assert gc.get_threshold()[0] == 12345
        # The app built at start-up (stack, stores, pools) is out of the collector's way.
        assert gc.get_freeze_count() > 1000


async def test_the_defaults_are_a_10000_threshold_and_a_freeze(tmp_path: Path) -> None:
    gc.unfreeze()
    app = ReloadableGateway(_config(tmp_path, ""), upstreams=UPSTREAMS, tune_gc=True)
    async with LifespanManager(app):
        assert gc.get_threshold()[0] == 10_000
        assert gc.get_freeze_count() > 0


async def test_zero_and_false_leave_cpython_alone(tmp_path: Path) -> None:
    gc.unfreeze()
    before = gc.get_threshold()
    config = _config(tmp_path, "gc_threshold = 0\ngc_freeze = false")
    app = ReloadableGateway(config, upstreams=UPSTREAMS, tune_gc=True)
    async with LifespanManager(app):
        assert gc.get_threshold() == before
        assert gc.get_freeze_count() == 0


async def test_a_gateway_run_by_another_server_never_touches_the_collector(
    tmp_path: Path,
) -> None:
    gc.unfreeze()
    before = gc.get_threshold()
    fake = FakeProvider()
    upstreams = [Upstream("openai", "http://fake/v1", api_key="sk-up")]
    app = ReloadableGateway(_config(tmp_path, "gc_threshold = 5000"), upstreams=upstreams)
    app.gateway.forwarder.engine = HttpxEngine(
        httpx.AsyncClient(transport=httpx.ASGITransport(app=fake))
    )
    async with (
        LifespanManager(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client,
    ):
        reply = await client.post("/v1/chat/completions", json=CHAT)
        assert reply.status_code == 200, reply.text
        assert gc.get_threshold() == before
        assert gc.get_freeze_count() == 0


def test_a_negative_threshold_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="gc_threshold must be >= 0"):
        ReloadableGateway(_config(tmp_path, "gc_threshold = -1"), upstreams=UPSTREAMS)
    with pytest.raises(ConfigurationError, match="gc_threshold must be an integer >= 0"):
        tune_gc(threshold=-5, freeze=False)
