"""RELIABILITY R10: 10,000 requests mixing cancels, errors, timeouts and broken streams over three
routed credentials, then one normal request. It succeeds, and nothing is left behind: no task,
no pooled connection in use, no cooldown entry once the cooldowns have expired, no warm-up.

The gateway runs in the test's own event loop (`serve_async`), so its tasks are countable; the
fake upstreams run in their own threads. Every request is real HTTP over loopback.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import httpx

from asgi_llmguard import build_stack
from asgi_llmguard.forward.config import Timeouts
from asgi_llmguard.forward.cooldowns import CooldownPolicy
from asgi_llmguard.forward.router import RetryPolicy, Routing, WarmupPolicy
from asgi_llmguard.testing import serve_async
from tests.forward.test_routing import PRICE, Recorder, fleet, upstream

TOTAL = 10_000
CONCURRENCY = 64
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello soak"}]}


def _kind(rng: random.Random) -> str:
    return rng.choices(
        ["ok", "stream", "error", "limited", "cancel", "timeout", "reset"],
        weights=[40, 15, 10, 10, 12, 3, 10],
    )[0]


async def _one(client: httpx.AsyncClient, kind: str) -> str:
    headers: dict[str, str] = {}
    body = dict(BODY)
    if kind in ("stream", "cancel", "reset"):
        body["stream"] = True
    if kind == "error":
        headers["x-fake-status"] = "500"
    elif kind == "limited":
        headers["x-fake-status"] = "429"
    elif kind == "timeout":
        headers["x-fake-latency"] = "0.5"
    elif kind == "reset":
        headers["x-fake-reset-after-chunks"] = "2"
    elif kind == "cancel":
        headers["x-fake-chunk-delay"] = "0.02"
    try:
        async with client.stream(
            "POST", "/v1/chat/completions", json=body, headers=headers
        ) as resp:
            if kind == "cancel":
                async for _ in resp.aiter_raw():
                    break  # leave mid-stream: the gateway must cancel upstream
                return "cancelled"
            await resp.aread()
            return str(resp.status_code)
    except httpx.HTTPError as exc:
        return type(exc).__name__


async def test_soak_leaves_nothing_behind() -> None:
    with fleet("a", "b", "c") as f:
        routing = Routing(
            selector="fill-first",
            cooldowns=CooldownPolicy(base=0.05, cap=0.2, server_error=0.1, timeout=0.1),
            retry=RetryPolicy(max_attempts=2, backoff=0.001, backoff_cap=0.002),
            warmup=WarmupPolicy(ttl=0.5, timeout=1.0),
        )
        recorder = Recorder()
        gateway = build_stack(
            upstreams=[upstream(f, n) for n in ("a", "b", "c")],
            routing=routing,
            timeouts=Timeouts(first_byte=0.2, write=0.1),
            size_limit=None,
            rate_limit=None,
            concurrency=None,
            access_log=None,
            usage={"missing_price": PRICE},
            pipeline=recorder,  # type: ignore[arg-type]
        )
        baseline = len(asyncio.all_tasks())
        async with serve_async(gateway) as server:
            rng = random.Random(10_000)
            kinds = [_kind(rng) for _ in range(TOTAL)]
            limits = httpx.Limits(max_connections=CONCURRENCY)
            outcomes: Counter[str] = Counter()
            async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=10) as client:
                queue = iter(kinds)

                async def worker() -> None:
                    for kind in queue:
                        outcomes[await _one(client, kind)] += 1

                await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
            assert sum(outcomes.values()) == TOTAL
            assert outcomes["200"] > TOTAL // 3
            assert outcomes["cancelled"] > 0
            assert outcomes["504"] > 0

            forwarder = gateway.forwarder
            warmer = forwarder.warmer
            assert warmer is not None
            await warmer.wait()
            for _ in range(200):  # cancelled exchanges close their connections at once
                if forwarder.engine.connections_in_use() == 0:
                    break
                await asyncio.sleep(0.01)
            assert forwarder.engine.connections_in_use() == 0

            await asyncio.sleep(0.5)  # every cooldown (cap 0.2 s) has expired
            async with httpx.AsyncClient(base_url=server.url) as client:
                resp = await client.post("/v1/chat/completions", json=BODY)
            assert resp.status_code == 200
            assert resp.json()["choices"][0]["message"]["content"]

            await warmer.wait()  # the last request may have started warm-ups of its own
            cooldowns = forwarder.router.cooldowns
            assert cooldowns is not None
            assert cooldowns.snapshot() == []
            assert len(cooldowns) == 0
            assert warmer.in_flight() == 0
            # One record per upstream attempt, and every request that reached one has its own.
            events = recorder.events
            assert len({(e.request_id, e.attempt) for e in events}) == len(events)
            attempts: dict[str, list[int]] = {}
            for e in events:
                if e.outcome != "warmup":
                    attempts.setdefault(e.request_id, []).append(e.attempt)
            assert all(sorted(a) == list(range(len(a))) for a in attempts.values())
            assert len(attempts) > TOTAL // 2
        # Server stopped: only the tasks that were there before remain.
        await asyncio.sleep(0)
        leftover = [t for t in asyncio.all_tasks() if not t.done()]
        assert len(leftover) <= baseline
