"""L1: limits shared by two gateway processes through Redis, and the SDKs' view of a 429."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from asgi_llmguard.forward.app import ForwardingApp
from asgi_llmguard.middleware.classify import ClassifyMiddleware
from asgi_llmguard.middleware.ratelimit import RateLimitMiddleware
from asgi_llmguard.policy import RateLimit
from asgi_llmguard.providers.base import Upstream
from asgi_llmguard.testing import FakeProvider, RunningServer, serve

from ._apps import free_port

ROOT = Path(__file__).resolve().parents[2]
UPSTREAM_KEY = "sk-upstream-ratelimit"
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
LIMIT = 20


@pytest.fixture(scope="module")
def upstream() -> Iterator[RunningServer]:
    with serve(FakeProvider(api_key=UPSTREAM_KEY)) as server:
        yield server


def _start_gateway(port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "tests.ratelimit.gateway_app:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _wait_listening(proc: subprocess.Popen[bytes], port: int) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            # an unknown path: answered (404) by the classifier, never counted by the limit
            httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1)
            return
        except httpx.TransportError:
            if proc.poll() is not None:
                raise RuntimeError(proc.stderr.read().decode() if proc.stderr else "died") from None
            if time.monotonic() > deadline:
                raise RuntimeError("gateway did not start") from None
            time.sleep(0.05)


@pytest.fixture
def two_gateways(shared_redis, prefix, upstream) -> Iterator[list[str]]:
    env = {
        "LLMGUARD_TEST_UPSTREAM": upstream.url,
        "LLMGUARD_TEST_KEY": UPSTREAM_KEY,
        "LLMGUARD_TEST_REDIS": shared_redis,
        "LLMGUARD_TEST_PREFIX": prefix,
        "LLMGUARD_TEST_LIMIT": f"{LIMIT}/minute",
    }
    ports = [free_port(), free_port()]
    procs = [_start_gateway(port, env) for port in ports]
    try:
        for proc, port in zip(procs, ports, strict=True):
            _wait_listening(proc, port)
        yield [f"http://127.0.0.1:{port}" for port in ports]
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


async def _burst(urls: list[str], total: int) -> tuple[list[httpx.Response], float]:
    """``total`` requests at once from concurrent clients, spread over ``urls``."""
    clients = [httpx.AsyncClient(base_url=url, timeout=10) for url in urls]
    try:
        start = time.monotonic()
        responses = await asyncio.gather(
            *(
                clients[i % len(clients)].post("/v1/chat/completions", json=BODY)
                for i in range(total)
            )
        )
        return list(responses), time.monotonic() - start
    finally:
        for c in clients:
            await c.aclose()


def _check_burst(responses: list[httpx.Response], elapsed: float) -> None:
    assert elapsed < 3, f"the burst took {elapsed:.1f} s: not a burst"
    codes = [r.status_code for r in responses]
    admitted = codes.count(200)
    # The bucket starts full (20) and drips 20/minute: within a few seconds, one more at most.
    assert LIMIT <= admitted <= LIMIT + int(LIMIT * elapsed / 60), codes
    assert admitted + codes.count(429) == len(codes), codes
    for r in responses:
        assert r.headers["x-ratelimit-limit-requests"] == str(LIMIT)
        assert r.headers["x-ratelimit-remaining-requests"].isdigit()
        assert r.headers["x-ratelimit-reset-requests"].endswith("s")
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) >= 1
            assert r.headers["x-ratelimit-remaining-requests"] == "0"
            assert r.json()["error"]["code"] == "rate_limit_exceeded"


@pytest.mark.redis
@pytest.mark.anyio
async def test_two_processes_share_one_limit_through_redis(two_gateways):
    responses, elapsed = await _burst(two_gateways, 4 * LIMIT)
    _check_burst(responses, elapsed)
    # both processes admitted and refused: the limit is really shared, not split
    by_gateway = {url: [] for url in two_gateways}
    for r in responses:
        by_gateway[str(r.request.url).split("/v1")[0]].append(r.status_code)
    assert all(len(codes) == 2 * LIMIT for codes in by_gateway.values())


def _memory_gateway(upstream_url: str, limits: list[RateLimit]) -> ClassifyMiddleware:
    forwarder = ForwardingApp([Upstream("openai", f"{upstream_url}/v1", api_key=UPSTREAM_KEY)])
    forwarder_anthropic = ForwardingApp([Upstream("anthropic", upstream_url, api_key=UPSTREAM_KEY)])

    async def both(scope, receive, send):
        # one upstream per API, as build_stack would configure
        ctx_path = scope.get("path", "")
        app = forwarder_anthropic if ctx_path.startswith("/v1/messages") else forwarder
        await app(scope, receive, send)

    return ClassifyMiddleware(RateLimitMiddleware(both, limits=limits, storage="memory://"))


@pytest.mark.anyio
async def test_one_process_in_memory(upstream):
    app = _memory_gateway(upstream.url, [RateLimit(f"{LIMIT}/minute", per="global")])
    with serve(app) as gateway:
        responses, elapsed = await _burst([gateway.url], 4 * LIMIT)
    _check_burst(responses, elapsed)


def test_sdks_see_their_own_rate_limit_errors(upstream):
    app = _memory_gateway(
        upstream.url,
        [
            RateLimit("2/minute", per="global"),
            RateLimit("100000/minute", kind="tokens", per="global"),
        ],
    )
    with serve(app) as gateway:
        client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="client", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(**BODY)
        assert raw.parse().choices[0].message.content
        assert raw.headers["x-ratelimit-limit-requests"] == "2"
        assert raw.headers["x-ratelimit-remaining-requests"] == "1"
        assert raw.headers["x-ratelimit-limit-tokens"] == "100000"
        assert int(raw.headers["x-ratelimit-remaining-tokens"]) > 0
        client.chat.completions.create(**BODY)
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(**BODY)
        err = info.value
        assert err.status_code == 429
        assert err.code == "rate_limit_exceeded"
        assert err.type == "requests"
        assert int(err.response.headers["retry-after"]) >= 1
        assert err.response.headers["x-ratelimit-remaining-requests"] == "0"

        claude = anthropic.Anthropic(base_url=gateway.url, api_key="client", max_retries=0)
        with pytest.raises(anthropic.RateLimitError) as ainfo:
            claude.messages.create(
                model="claude-sonnet-4-6",
                max_tokens=10,
                messages=[{"role": "user", "content": "hi"}],
            )
        assert ainfo.value.body["error"]["type"] == "rate_limit_error"
        assert ainfo.value.response.headers["retry-after"]
