"""Serve one benchmark target with uvicorn: ``python -m benchmarks.serve NAME PORT``.

One process, uvloop, httptools, no access log, log level warning. The benchmark runs it pinned
to one CPU with ``taskset``; ``LLMGUARD_BENCH_UPSTREAM`` names the upstream. The gateway targets
are served as ``asgi-llmguard serve`` serves the gateway: once started, the collector is tuned
with the ``[server]`` defaults (`asgi_llmguard.runtime`); the bare forwarders keep CPython's.
Two targets show the collector's part: ``gateway-full-gc-default`` (CPython's collector) and
``bare-aiohttp-gc-tuned`` (the bare forwarder tuned like the gateway).
"""

from __future__ import annotations

import argparse
from typing import Any

import uvicorn

from asgi_llmguard.config import ServerConfig
from asgi_llmguard.runtime import tune_gc
from benchmarks.targets import FACTORIES, GC_TUNED


def _tuned_at_startup(app: Any) -> Any:
    """``app`` with the standalone server's collector tuning applied once it has started."""

    async def served(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await app(scope, receive, send)
            return

        async def send_(message: Any) -> None:
            if message["type"] == "lifespan.startup.complete":
                server = ServerConfig()
                tune_gc(threshold=server.gc_threshold, freeze=server.gc_freeze)
            await send(message)

        await app(scope, receive, send_)

    return served


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("target", choices=sorted(FACTORIES))
    parser.add_argument("port", type=int)
    args = parser.parse_args()
    factory = FACTORIES[args.target]
    if args.target in GC_TUNED:
        config_app: Any = lambda: _tuned_at_startup(factory())  # noqa: E731
    else:
        config_app = factory
    config = uvicorn.Config(
        config_app,
        factory=True,
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level="warning",
        backlog=4096,
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
