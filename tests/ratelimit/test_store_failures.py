"""L2: the store fails (killed, or slowed by 2 s): each limit's policy, a log line, a counter,
and recovery once Redis is back. Runs on a private redis-server, never the shared one."""

from __future__ import annotations

import asyncio
import logging
import time

import httpx
import pytest
import redis.asyncio

from asgi_llmguard.middleware.classify import ClassifyMiddleware
from asgi_llmguard.middleware.ratelimit import RateLimitMiddleware
from asgi_llmguard.policy import KeyPolicy, RateLimit

from ._apps import KeyLayer, UsageStub, ok_app

pytestmark = pytest.mark.anyio

CHAT = "/v1/chat/completions"
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
TIMEOUT = 0.25
KEYS = {
    "closed": KeyPolicy("k-closed", rate_limits=(RateLimit("1000/minute"),)),
    "open": KeyPolicy("k-open", rate_limits=(RateLimit("1000/minute", on_error="open"),)),
    "tight": KeyPolicy("k-tight", rate_limits=(RateLimit("2/minute"),)),
    "tokens": KeyPolicy(
        "k-tokens", rate_limits=(RateLimit("1000/minute", kind="tokens", on_error="open"),)
    ),
}


def gateway(url: str, algorithm: str) -> tuple[ClassifyMiddleware, RateLimitMiddleware]:
    rl = RateLimitMiddleware(
        UsageStub(ok_app), storage=url, algorithm=algorithm, redis_timeout=TIMEOUT
    )
    return ClassifyMiddleware(KeyLayer(rl, KEYS)), rl


async def post(c: httpx.AsyncClient, key: str) -> tuple[httpx.Response, float]:
    start = time.monotonic()
    r = await c.post(CHAT, json=BODY, headers={"x-test-key": key, "x-test-usage": "5"})
    return r, time.monotonic() - start


def store_warnings(caplog) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "asgi_llmguard.ratelimit" and r.levelno >= logging.WARNING
    ]


@pytest.mark.parametrize("algorithm", ["gcra", "moving-window"])
async def test_redis_killed_then_restarted(own_redis, algorithm, caplog):
    caplog.set_level(logging.WARNING, logger="asgi_llmguard.ratelimit")
    app, rl = gateway(own_redis.url, algorithm)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as c:
        for key in ("closed", "open", "tokens"):
            r, _ = await post(c, key)
            assert r.status_code == 200
            assert "x-ratelimit-remaining-requests" in r.headers or key == "tokens"
        assert rl.stats.store_errors == 0

        own_redis.kill()
        for _ in range(5):
            r, took = await post(c, "closed")
            assert r.status_code == 503, r.text
            assert r.headers["retry-after"] == "1"
            assert took < 1.0
            r, took = await post(c, "open")
            assert r.status_code == 200
            assert r.headers["x-ratelimit-limit-requests"] == "9999"  # no limit answered
            assert took < 1.0
            r, took = await post(c, "tokens")  # the peek fails open, the charge fails after
            assert r.status_code == 200
        assert rl.stats.fail_closed == 5
        assert rl.stats.fail_open == 10
        assert rl.stats.store_errors >= 15
        warnings = store_warnings(caplog)
        assert len(warnings) == 1, warnings  # one line for the burst, not one per request
        assert "unavailable" in warnings[0]
        assert own_redis.password not in caplog.text

        own_redis.start()  # same port, empty

        async def recovered() -> bool:
            r, _ = await post(c, "closed")
            return r.status_code == 200

        deadline = time.monotonic() + 5
        while not await recovered():
            assert time.monotonic() < deadline, "no recovery after Redis came back"
            await asyncio.sleep(0.05)
        codes = [(await post(c, "tight"))[0].status_code for _ in range(3)]
        assert codes == [200, 200, 429]  # limiting for real again
        assert "answers again" in store_warnings(caplog)[-1]
        assert own_redis.password not in caplog.text
    await rl.aclose()


async def test_slow_redis_follows_the_policy_within_the_timeout(own_redis):
    app, rl = gateway(own_redis.url, "gcra")
    sleeper = redis.asyncio.Redis(port=own_redis.port, password=own_redis.password)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gw"
        ) as c:
            assert (await post(c, "closed"))[0].status_code == 200  # connections warm
            nap = asyncio.create_task(sleeper.execute_command("DEBUG", "SLEEP", "2"))
            await asyncio.sleep(0.1)  # the server is now asleep for ~1.9 s

            results = await asyncio.gather(*(post(c, "closed") for _ in range(10)))
            results += await asyncio.gather(*(post(c, "open") for _ in range(10)))
            closed, opened = results[:10], results[10:]
            assert all(r.status_code == 503 for r, _ in closed), [r.status_code for r, _ in closed]
            assert all(r.status_code == 200 for r, _ in opened)
            # each answer came within about the configured timeout, not the 2 s of the nap
            assert max(took for _, took in results) < TIMEOUT + 0.5
            assert not nap.done()
            assert rl.stats.fail_closed == 10
            assert rl.stats.fail_open == 10
            await nap
            r, _ = await post(c, "closed")
            assert r.status_code == 200  # back to normal once Redis is
    finally:
        await sleeper.aclose()
        await rl.aclose()
