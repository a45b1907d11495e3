from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from asgi_llmguard import Gateway, Upstream, build_stack
from asgi_llmguard.testing import FakeProvider, RunningServer, serve

UPSTREAM_KEY = "sk-upstream-secret-4242"


@pytest.fixture(scope="session")
def fake() -> FakeProvider:
    return FakeProvider(api_key=UPSTREAM_KEY)


@pytest.fixture(scope="session")
def fake_server(fake: FakeProvider) -> Iterator[RunningServer]:
    with serve(fake) as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh_fake(fake: FakeProvider) -> None:
    fake.reset()


def forwarding_stack(**kwargs: object) -> Gateway:
    """Classification and forwarding only: what these tests are about (models here need no
    price; the other layers have their own tests)."""
    for layer in ("size_limit", "rate_limit", "concurrency", "usage"):
        kwargs.setdefault(layer, None)
    return build_stack(**kwargs)  # type: ignore[arg-type]


def upstreams_for(url: str) -> list[Upstream]:
    return [
        Upstream("openai", f"{url}/v1", api_key=UPSTREAM_KEY),
        Upstream("anthropic", url, api_key=UPSTREAM_KEY),
    ]


@pytest.fixture(scope="session", params=["aiohttp", "httpx"])
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@dataclass(frozen=True)
class GatewayServer:
    url: str
    host: str
    port: int
    gateway: Gateway
    engine: str

    def connections_in_use(self) -> int:
        return self.gateway.forwarder.engine.connections_in_use()


@pytest.fixture(scope="session")
def gateway_server(engine: str, fake_server: RunningServer) -> Iterator[GatewayServer]:
    client = httpx.AsyncClient() if engine == "httpx" else None
    gateway = forwarding_stack(upstreams=upstreams_for(fake_server.url), client=client)
    with serve(gateway) as server:
        yield GatewayServer(server.url, server.host, server.port, gateway, engine)
