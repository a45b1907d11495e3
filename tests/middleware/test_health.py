"""HealthMiddleware: liveness, readiness checks bounded in time, cached, shared; real checks."""

from __future__ import annotations

import asyncio
import logging
import time

import httpx
import pytest

from asgi_llmguard.errors import ConfigurationError
from asgi_llmguard.middleware.health import HealthMiddleware, postgres_check, redis_check
from asgi_llmguard.testing import serve
from tests.conftest import require_service
from tests.ratelimit._apps import free_port

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(20)]


async def inner(scope, receive, send):
    """The app behind: answers 418 so a probe that leaked through would show."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send({"type": "http.response.start", "status": 418, "headers": []})
    await send({"type": "http.response.body", "body": b"inner"})


async def ok() -> bool:
    return True


async def bad() -> bool:
    return False


async def hang() -> bool:
    await asyncio.sleep(3600)
    return True


async def test_liveness_and_readiness_over_a_real_server():
    mw = HealthMiddleware(inner, checks={"a": ok, "b": ok})
    with serve(mw) as server:
        async with httpx.AsyncClient(base_url=server.url) as c:
            live = await c.get("/healthz")
            assert (live.status_code, live.json()) == (200, {"status": "ok"})
            assert live.headers["cache-control"] == "no-store"
            ready = await c.get("/readyz")
            assert ready.status_code == 200
            assert ready.json() == {"status": "ready", "checks": {"a": "ok", "b": "ok"}}
            head = await c.head("/readyz")
            assert (head.status_code, head.content) == (200, b"")
            post = await c.post("/healthz")
            assert (post.status_code, post.headers["allow"]) == (405, "GET, HEAD")
            other = await c.get("/v1/models")
            assert (other.status_code, other.text) == (418, "inner")


async def test_a_failing_check_makes_it_unready():
    mw = HealthMiddleware(inner, checks={"a": ok, "b": bad})
    with serve(mw) as server:
        async with httpx.AsyncClient(base_url=server.url) as c:
            r = await c.get("/readyz")
            assert r.status_code == 503
            assert r.json() == {"status": "unready", "checks": {"a": "ok", "b": "fail"}}
            assert (await c.get("/healthz")).status_code == 200  # liveness does not care


async def test_a_raising_check_fails_without_leaking_its_message(caplog):
    async def raises() -> bool:
        raise RuntimeError("postgresql://u:hunter2-secret@db/x is down")

    mw = HealthMiddleware(inner, checks={"db": raises})
    with caplog.at_level(logging.WARNING), serve(mw) as server:
        async with httpx.AsyncClient(base_url=server.url) as c:
            r = await c.get("/readyz")
    assert r.status_code == 503
    assert r.json()["checks"] == {"db": "fail"}
    assert "hunter2" not in r.text
    assert "hunter2" not in caplog.text
    assert "RuntimeError" in caplog.text


async def test_a_hanging_check_times_out_within_check_timeout():
    mw = HealthMiddleware(inner, checks={"fast": ok, "stuck": hang}, check_timeout=0.3)
    with serve(mw) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=5) as c:
            start = time.monotonic()
            r = await c.get("/readyz")
            elapsed = time.monotonic() - start
    assert r.status_code == 503
    assert r.json() == {"status": "unready", "checks": {"fast": "ok", "stuck": "timeout"}}
    assert 0.25 < elapsed < 1.0


async def test_fifty_concurrent_probes_run_the_checks_once_and_the_cache_expires():
    runs = 0

    async def counted() -> bool:
        nonlocal runs
        runs += 1
        await asyncio.sleep(0.2)
        return True

    mw = HealthMiddleware(inner, checks={"c": counted}, cache_ttl=0.5)
    with serve(mw) as server:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(base_url=server.url, limits=limits) as c:
            responses = await asyncio.gather(*(c.get("/readyz") for _ in range(50)))
            assert {r.status_code for r in responses} == {200}
            assert runs == 1  # shared in-flight run
            assert (await c.get("/readyz")).status_code == 200
            assert runs == 1  # cached
            await asyncio.sleep(0.6)
            assert (await c.get("/readyz")).status_code == 200
            assert runs == 2  # expired, run again
    assert mw.runs == 2


async def test_no_cache_still_shares_the_run_in_flight():
    runs = 0

    async def counted() -> bool:
        nonlocal runs
        runs += 1
        await asyncio.sleep(0.1)
        return True

    mw = HealthMiddleware(inner, checks={"c": counted}, cache_ttl=0)
    transport = httpx.ASGITransport(app=mw)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
        await asyncio.gather(*(c.get("/readyz") for _ in range(10)))
        assert runs == 1
        await c.get("/readyz")
        assert runs == 2


async def test_paths_follow_a_mount():
    mw = HealthMiddleware(inner)
    transport = httpx.ASGITransport(app=mw, root_path="/llm")
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
        r = await c.get("/llm/healthz")
        assert r.status_code == 200
        r = await c.get("/llm/readyz")
        assert r.json() == {"status": "ready", "checks": {}}


@pytest.mark.redis
async def test_redis_check_against_the_real_redis_and_a_closed_port():
    require_service("Redis", "127.0.0.1", 6379)
    up = redis_check("redis://127.0.0.1:6379/0")
    down = redis_check(f"redis://:sekret-pw@127.0.0.1:{free_port()}/0", timeout=0.5)
    assert "sekret-pw" not in repr(down)
    try:
        assert await up() is True
        assert await up() is True  # the client is reused
        mw = HealthMiddleware(inner, checks={"redis": up, "other": down}, check_timeout=1)
        transport = httpx.ASGITransport(app=mw)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
            r = await c.get("/readyz")
        assert r.status_code == 503
        assert r.json()["checks"] == {"redis": "ok", "other": "fail"}
        assert "sekret-pw" not in r.text
    finally:
        await up.aclose()
        await down.aclose()


@pytest.mark.postgres
async def test_postgres_check_against_the_real_postgres_and_a_closed_port():
    require_service("PostgreSQL", "127.0.0.1", 5432)
    up = postgres_check("postgresql://127.0.0.1:5432/test")
    down = postgres_check(f"postgresql://u:sekret-pw@127.0.0.1:{free_port()}/test")
    assert "sekret-pw" not in repr(down)
    mw = HealthMiddleware(inner, checks={"pg": up, "other": down}, check_timeout=2)
    transport = httpx.ASGITransport(app=mw)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
        r = await c.get("/readyz")
    assert r.json()["checks"] == {"pg": "ok", "other": "fail"}
    assert "sekret-pw" not in r.text


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"live_path": "healthz"}, "live_path"),
        ({"ready_path": "/healthz"}, "differ"),
        ({"check_timeout": 0}, "check_timeout"),
        ({"cache_ttl": -1}, "cache_ttl"),
        ({"checks": {"x": "not callable"}}, "check 'x'"),
    ],
)
def test_bad_config(kwargs, match):
    with pytest.raises(ConfigurationError, match=match):
        HealthMiddleware(inner, **kwargs)
