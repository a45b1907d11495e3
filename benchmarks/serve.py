"""Serve one benchmark target with uvicorn: ``python -m benchmarks.serve NAME PORT``.

One process, uvloop, httptools, no access log, log level warning. The benchmark runs it pinned
to one CPU with ``taskset``; ``LLMGUARD_BENCH_UPSTREAM`` names the upstream.
"""

from __future__ import annotations

import argparse

import uvicorn

from benchmarks.targets import FACTORIES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("target", choices=sorted(FACTORIES))
    parser.add_argument("port", type=int)
    args = parser.parse_args()
    factory = FACTORIES[args.target].__name__
    config = uvicorn.Config(
        f"benchmarks.targets:{factory}",
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
