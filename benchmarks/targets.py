"""The ASGI apps the forwarding benchmark serves, as factories for ``uvicorn --factory``.

The upstream's origin (``http://127.0.0.1:PORT``) comes from ``LLMGUARD_BENCH_UPSTREAM``.

- ``bare-*``: minimal pure-ASGI forwarders, the floor (benchmarks/bare.py).
- ``gateway-forward*``: the `ForwardingApp` alone; ``gateway-stack``: `build_stack` defaults.
- ``gateway-full``: the stack a team runs: a virtual key with request and token limits, size
  limit, metering and pricing, the SQLite ledger. ``gateway-redis``: the same with the rate
  limits and a budget in Redis.
"""

from __future__ import annotations

import atexit
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from asgi_llmguard import (
    Budget,
    ForwardingApp,
    KeyPolicy,
    RateLimit,
    RedisBudgetStore,
    SQLiteSink,
    StaticKey,
    StaticKeyStore,
    Upstream,
    UsagePipeline,
    build_stack,
    hash_key,
)
from benchmarks.bare import AiohttpForwarder, HttpxForwarder

ENV = "LLMGUARD_BENCH_UPSTREAM"
#: Where the full-stack targets keep their ledger (a temporary directory of the run).
DIR_ENV = "LLMGUARD_BENCH_DIR"
_LIMITS = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)


def _origin() -> str:
    try:
        return os.environ[ENV].rstrip("/")
    except KeyError:
        raise RuntimeError(
            f"set {ENV} to the upstream origin, e.g. http://127.0.0.1:8080"
        ) from None


def _upstreams() -> list[Upstream]:
    return [Upstream("openai", f"{_origin()}/v1", api_key="sk-bench")]


def bare_aiohttp() -> Any:
    return AiohttpForwarder(_origin())


def bare_httpx() -> Any:
    return HttpxForwarder(_origin(), lambda: httpx.AsyncClient(limits=_LIMITS, timeout=60))


def bare_httpx_aiohttp() -> Any:
    import httpx_aiohttp  # benchmark-only extra: pip install httpx-aiohttp

    return HttpxForwarder(
        _origin(),
        lambda: httpx.AsyncClient(
            transport=httpx_aiohttp.AiohttpTransport(limits=_LIMITS), timeout=60
        ),
    )


def gateway_forward() -> Any:
    return ForwardingApp(_upstreams())


def gateway_forward_httpx() -> Any:
    # ForwardingApp leaves a client it was given open: fine for a process that exits.
    return ForwardingApp(_upstreams(), client=httpx.AsyncClient(limits=_LIMITS))


def gateway_stack() -> Any:
    return build_stack(upstreams=_upstreams())


#: The virtual key wrk and the probes send (``Authorization: Bearer sk-bench``).
BENCH_KEY = "sk-bench"
REDIS_URL = "redis://127.0.0.1:6379/0"
# Generous: the benchmark measures the cost of checking limits and budgets, not of refusing.
_RATE_LIMITS = (
    RateLimit("100000000/minute"),
    RateLimit("100000000000/minute", kind="tokens"),
)


def _full_stack(redis: bool) -> Any:
    """The default stack as a user runs it: a virtual key with a request and a token limit
    (token bucket), size limit, usage metering and pricing, a SQLite ledger; with ``redis``,
    the limits and a budget live in Redis (a key prefix of this process, deleted at exit)."""
    directory = Path(os.environ.get(DIR_ENV) or tempfile.mkdtemp(prefix="llmguard-bench-"))
    prefix = f"llmguard-bench:{os.getpid()}:"
    policy = KeyPolicy(
        key_id="bench",
        rate_limits=_RATE_LIMITS,
        budget=Budget(total=1e9) if redis else None,
    )
    keys = StaticKeyStore([StaticKey(policy, key_hash=hash_key(BENCH_KEY))])
    pipeline = UsagePipeline(
        [SQLiteSink(directory / f"ledger-{os.getpid()}.sqlite3")],
        spill_path=directory / f"ledger-{os.getpid()}.spill",
    )
    usage: dict[str, Any] = {}
    rate_limit: dict[str, Any] = {}
    if redis:
        usage["budgets"] = RedisBudgetStore.from_url(REDIS_URL, prefix=prefix + "budget:")
        rate_limit = {"storage": REDIS_URL, "key_prefix": prefix + "rl:"}
        atexit.register(_forget_redis_keys, prefix)
    return build_stack(
        upstreams=_upstreams(),
        keys=keys,
        pipeline=pipeline,
        usage=usage,
        rate_limit=rate_limit,
    )


def _forget_redis_keys(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        for key in client.scan_iter(f"{prefix}*"):
            client.delete(key)
    finally:
        client.close()


def gateway_full() -> Any:
    return _full_stack(redis=False)


def gateway_redis() -> Any:
    return _full_stack(redis=True)


#: Target name -> factory, in the order the benchmark runs them.
FACTORIES: dict[str, Callable[[], Any]] = {
    "bare-aiohttp": bare_aiohttp,
    "bare-httpx": bare_httpx,
    "bare-httpx-aiohttp": bare_httpx_aiohttp,
    "gateway-forward": gateway_forward,
    "gateway-forward-httpx": gateway_forward_httpx,
    "gateway-stack": gateway_stack,
    "gateway-full": gateway_full,
    "gateway-redis": gateway_redis,
    # The collector's part, side by side: the full stack with CPython's default collector, and
    # the bare forwarder with the collector tuned as `asgi-llmguard serve` tunes it.
    "gateway-full-gc-default": gateway_full,
    "bare-aiohttp-gc-tuned": bare_aiohttp,
}
#: Served with the collector tuned as `asgi-llmguard serve` tunes it (see `benchmarks.serve`).
GC_TUNED = frozenset(
    name for name in FACTORIES if name.startswith("gateway") and not name.endswith("gc-default")
) | {"bare-aiohttp-gc-tuned"}
