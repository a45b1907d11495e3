"""The ASGI apps the forwarding benchmark serves, as factories for ``uvicorn --factory``.

The upstream's origin (``http://127.0.0.1:PORT``) comes from ``LLMGUARD_BENCH_UPSTREAM``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import httpx

from asgi_llmguard import ForwardingApp, Upstream, build_stack
from benchmarks.bare import AiohttpForwarder, HttpxForwarder

ENV = "LLMGUARD_BENCH_UPSTREAM"
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


#: Target name -> factory, in the order the benchmark runs them.
FACTORIES: dict[str, Callable[[], Any]] = {
    "bare-aiohttp": bare_aiohttp,
    "bare-httpx": bare_httpx,
    "bare-httpx-aiohttp": bare_httpx_aiohttp,
    "gateway-forward": gateway_forward,
    "gateway-forward-httpx": gateway_forward_httpx,
    "gateway-stack": gateway_stack,
}
