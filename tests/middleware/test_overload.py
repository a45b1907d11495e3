"""OverloadMiddleware (M2): past the cap, an immediate 503 + Retry-After; health still answers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from asgi_llmguard.errors import ConfigurationError
from asgi_llmguard.middleware.health import HealthMiddleware
from asgi_llmguard.middleware.overload import OverloadMiddleware
from asgi_llmguard.providers.base import Upstream
from asgi_llmguard.stack import build_stack
from asgi_llmguard.testing import FakeProvider, RunningServer, serve, wait_for

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(20)]

CHAT = "/v1/chat/completions"
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
MESSAGES_BODY = {
    "model": "claude-3-5-haiku-latest",
    "max_tokens": 16,
    "messages": [{"role": "user", "content": "hi"}],
}
UPSTREAM_KEY = "sk-upstream-overload"
LATENCY = 2.0


async def _ready() -> bool:
    return True


@contextmanager
def gateway(
    max_in_flight: int,
) -> Iterator[tuple[FakeProvider, OverloadMiddleware, RunningServer]]:
    """The real stack behind health and overload, as build_stack will place them, on uvicorn."""
    fake = FakeProvider(api_key=UPSTREAM_KEY)
    with serve(fake) as upstream:
        stack = build_stack(
            upstreams=[
                Upstream("openai", f"{upstream.url}/v1", api_key=UPSTREAM_KEY),
                Upstream("anthropic", upstream.url, api_key=UPSTREAM_KEY),
            ],
            rate_limit=None,
            concurrency=None,
        )
        health = HealthMiddleware(stack, checks={"always": _ready}, cache_ttl=0)
        overload = OverloadMiddleware(health, max_in_flight=max_in_flight, retry_after=2)
        with serve(overload, backlog=256) as server:
            yield fake, overload, server


async def test_cap_sheds_at_once_and_health_still_answers():
    with gateway(5) as (fake, mw, server):
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=10) as c:
            slow = {"x-fake-latency": str(LATENCY)}
            start = time.monotonic()
            tasks = [asyncio.create_task(c.post(CHAT, json=BODY, headers=slow)) for _ in range(20)]
            await wait_for(lambda: sum(t.done() for t in tasks) == 15, timeout=LATENCY / 2)
            shed_after = time.monotonic() - start
            assert shed_after < LATENCY / 2
            assert mw.in_flight == 5
            await wait_for(lambda: len(fake.requests) == 5, timeout=LATENCY / 2)

            # while saturated: health answers, other requests are shed in their own shape
            live = await c.get("/healthz")
            ready = await c.get("/readyz")
            assert (live.status_code, live.json()) == (200, {"status": "ok"})
            assert ready.status_code == 200
            assert ready.json() == {"status": "ready", "checks": {"always": "ok"}}
            anthropic = await c.post("/v1/messages", json=MESSAGES_BODY)
            assert anthropic.status_code == 503
            assert anthropic.headers["retry-after"] == "2"
            assert anthropic.json()["type"] == "error"
            assert anthropic.json()["error"]["type"] == "overloaded_error"
            assert time.monotonic() - start < LATENCY  # all of it before the slow ones finish

            responses = await asyncio.gather(*tasks)
    codes = [r.status_code for r in responses]
    assert codes.count(200) == 5
    assert codes.count(503) == 15
    refused = next(r for r in responses if r.status_code == 503)
    assert refused.headers["retry-after"] == "2"
    assert refused.json()["error"]["code"] == "overloaded"
    assert refused.json()["error"]["type"] == "server_error"
    assert len(fake.requests) == 5  # the shed ones never reached the upstream
    assert mw.shed == 16
    assert mw.in_flight == 0


async def _open_request(port: int) -> asyncio.StreamWriter:
    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n"
        b"x-fake-latency: 30\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    await writer.drain()
    return writer


async def test_clients_leaving_mid_flight_release_their_slots():
    with gateway(5) as (fake, mw, server):
        writers = await asyncio.gather(*(_open_request(server.port) for _ in range(5)))
        await wait_for(lambda: mw.in_flight == 5, timeout=5)
        await wait_for(lambda: len(fake.requests) == 5, timeout=5)
        async with httpx.AsyncClient(base_url=server.url) as c:
            assert (await c.post(CHAT, json=BODY)).status_code == 503
            for writer in writers:
                writer.transport.abort()  # the client is gone, mid-flight
            await wait_for(lambda: mw.in_flight == 0, timeout=5)
            r = await c.post(CHAT, json=BODY)
        assert r.status_code == 200
        assert mw.in_flight == 0


async def test_errors_release_the_slot_and_the_body_is_never_read():
    calls = 0

    async def boom(scope, receive, send):
        nonlocal calls
        calls += 1
        raise RuntimeError("exploded")

    mw = OverloadMiddleware(boom, max_in_flight=1)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=mw), base_url="http://gw") as c:
        for _ in range(3):  # with a cap of 1, a leaked slot would 503 the next
            with pytest.raises(RuntimeError):
                await c.post(CHAT, json=BODY)
    assert (calls, mw.in_flight, mw.shed) == (3, 0, 0)

    gate = asyncio.Event()
    entered = asyncio.Event()

    async def hold(scope, receive, send):
        if scope["path"] != "/healthz":
            entered.set()
            await gate.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def receive_forbidden():
        raise AssertionError("the shed request's body was read")

    sent: list[dict] = []

    async def record(message):
        sent.append(message)

    mw = OverloadMiddleware(hold, max_in_flight=1)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=mw), base_url="http://gw") as c:
        first = asyncio.create_task(c.post(CHAT, json=BODY))
        await entered.wait()
        scope = {"type": "http", "method": "POST", "path": CHAT, "headers": [], "root_path": ""}
        await mw(scope, receive_forbidden, record)
        assert sent[0]["status"] == 503
        # exempt paths pass, uncounted
        health = {**scope, "method": "GET", "path": "/healthz"}
        await mw(health, receive_forbidden, record)  # type: ignore[arg-type]
        assert sent[-1]["body"] == b"{}"
        assert mw.in_flight == 1
        gate.set()
        assert (await first).status_code == 200
    assert (mw.in_flight, mw.shed) == (0, 1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_in_flight": 0}, "max_in_flight"),
        ({"max_in_flight": True}, "max_in_flight"),
        ({"max_in_flight": 1, "retry_after": -1}, "retry_after"),
        ({"max_in_flight": 1, "exempt_paths": "/healthz"}, "exempt_paths"),
        ({"max_in_flight": 1, "exempt_paths": ["healthz"]}, "exempt_paths"),
    ],
)
def test_bad_config(kwargs, match):
    with pytest.raises(ConfigurationError, match=match):
        OverloadMiddleware(lambda *a: None, **kwargs)
