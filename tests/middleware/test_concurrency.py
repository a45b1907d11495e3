"""ConcurrencyMiddleware: the cap holds under load, and every slot comes back, whatever happens."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from asgi_llmguard.errors import ConfigurationError
from asgi_llmguard.forward.app import ForwardingApp
from asgi_llmguard.middleware.classify import ClassifyMiddleware
from asgi_llmguard.middleware.concurrency import ConcurrencyMiddleware
from asgi_llmguard.policy import KeyPolicy
from asgi_llmguard.providers.base import Upstream
from asgi_llmguard.testing import FakeProvider, serve, wait_for
from tests.ratelimit._apps import KeyLayer, free_port

pytestmark = pytest.mark.anyio

CHAT = "/v1/chat/completions"
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
UPSTREAM_KEY = "sk-upstream-concurrency"


def client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw")


async def test_cap_holds_under_concurrent_load_and_slots_come_back():
    gate = asyncio.Event()
    inside = 0
    most = 0

    async def slow(scope, receive, send):
        nonlocal inside, most
        inside += 1
        most = max(most, inside)
        try:
            await gate.wait()
        finally:
            inside -= 1
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    keys = {"a": KeyPolicy("key-a", max_concurrency=3), "b": KeyPolicy("key-b")}
    mw = ConcurrencyMiddleware(slow, max_per_key_default=2)
    app = ClassifyMiddleware(KeyLayer(mw, keys))
    async with client(app) as c:

        async def post(key):
            return await c.post(CHAT, json=BODY, headers={"x-test-key": key})

        tasks = [asyncio.create_task(post("a")) for _ in range(20)]
        tasks += [asyncio.create_task(post("b")) for _ in range(5)]
        await wait_for(lambda: sum(t.done() for t in tasks) == 20, timeout=5)
        assert dict(mw.in_flight) == {"k=key-a": 3, "k=key-b": 2}
        gate.set()
        responses = await asyncio.gather(*tasks)
    codes = [r.status_code for r in responses]
    assert codes[:20].count(200) == 3
    assert codes[20:].count(200) == 2
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"] == {
        "message": refused.json()["error"]["message"],
        "type": "requests",
        "param": None,
        "code": "concurrency_limit_exceeded",
    }
    assert most == 5
    assert mw.rejected == 20
    assert dict(mw.in_flight) == {}


async def test_slot_released_on_error_and_cancellation():
    async def boom(scope, receive, send):
        raise RuntimeError("upstream exploded")

    blocked = asyncio.Event()

    async def hang(scope, receive, send):
        blocked.set()
        await asyncio.sleep(3600)

    mw = ConcurrencyMiddleware(boom, max_per_key_default=1)
    async with client(ClassifyMiddleware(mw)) as c:
        for _ in range(3):
            with pytest.raises(RuntimeError):
                await c.post(CHAT, json=BODY)
    assert dict(mw.in_flight) == {}

    mw = ConcurrencyMiddleware(hang, max_per_key_default=1)
    async with client(ClassifyMiddleware(mw)) as c:
        task = asyncio.create_task(c.post(CHAT, json=BODY))
        await blocked.wait()
        assert sum(mw.in_flight.values()) == 1
        assert (await c.post(CHAT, json=BODY)).status_code == 429
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert dict(mw.in_flight) == {}


async def test_slot_released_on_upstream_error_statuses_through_the_forwarder():
    fake = FakeProvider(api_key=UPSTREAM_KEY)
    with serve(fake) as upstream:
        forwarder = ForwardingApp([Upstream("openai", f"{upstream.url}/v1", api_key=UPSTREAM_KEY)])
        down = ForwardingApp(
            [Upstream("openai", f"http://127.0.0.1:{free_port()}/v1", api_key=UPSTREAM_KEY)]
        )
        for app, headers, status in [
            (forwarder, {"x-fake-status": "500"}, 500),
            (forwarder, {"x-fake-status": "429"}, 429),
            (down, {}, 502),
        ]:
            mw = ConcurrencyMiddleware(app, max_per_key_default=1)
            try:
                async with client(ClassifyMiddleware(mw)) as c:
                    for _ in range(3):  # with a cap of 1, a leaked slot would 429 the next
                        r = await c.post(CHAT, json=BODY, headers=headers)
                        assert r.status_code == status
                        assert r.json()["error"].get("code") != "concurrency_limit_exceeded"
            finally:
                await app.aclose()
            assert dict(mw.in_flight) == {}


async def _open_request(port: int) -> asyncio.StreamWriter:
    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n"
        b"x-fake-latency: 30\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    await writer.drain()
    return writer


async def test_a_thousand_clients_leaving_mid_flight_leave_every_slot_free():
    fake = FakeProvider(api_key=UPSTREAM_KEY)
    with serve(fake) as upstream:
        forwarder = ForwardingApp([Upstream("openai", f"{upstream.url}/v1", api_key=UPSTREAM_KEY)])
        mw = ConcurrencyMiddleware(forwarder, max_per_key_default=5000)
        # The forwarder lives in the server's loop; its lifespan shutdown closes it.
        with serve(ClassifyMiddleware(mw), backlog=2048) as gateway:
            writers = await asyncio.gather(*(_open_request(gateway.port) for _ in range(1000)))
            await wait_for(lambda: sum(mw.in_flight.values()) == 1000, timeout=20)
            await wait_for(lambda: len(fake.requests) == 1000, timeout=20)
            for writer in writers:
                writer.transport.abort()  # the client is gone, mid-flight
            await wait_for(lambda: not mw.in_flight, timeout=10)
            # and the gateway still serves a normal request, with a slot that comes back
            async with httpx.AsyncClient(base_url=gateway.url) as c:
                r = await c.post(CHAT, json=BODY)
            assert r.status_code == 200
            assert dict(mw.in_flight) == {}


def test_bad_default_cap():
    with pytest.raises(ConfigurationError, match="max_per_key_default"):
        ConcurrencyMiddleware(lambda *a: None, max_per_key_default=0)
