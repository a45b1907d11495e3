"""Instructions per request of each layer configuration, counted by valgrind: noise-free.

`benchmarks.layers` times the layers in CPU seconds, which on a shared machine move by a third
from one run to the next. This counts the machine instructions instead (valgrind's callgrind,
which simulates the CPU): the same code, inputs and interpreter give the same count whatever
else the machine is doing, so a change of a few percent in one layer is visible.

Each configuration of `benchmarks.layers` (the real layers in front of a `ForwardingApp` whose
engine answers at once) runs in its own process under ``valgrind --tool=callgrind`` twice, with
``--small`` and ``--small + --requests`` sequential JSON requests after the same warm-up; the
difference divided by ``--requests`` is the instructions per request, start-up and imports
excluded. Two processes run at a time (valgrind is single-threaded).

    apt-get install -y valgrind
    .venv/bin/python -m benchmarks.instructions [--requests 1000] [--only full,bare]

``--served-gc`` tunes the collector after the warm-up as ``asgi-llmguard serve`` does by default
(``[server] gc_threshold = 10000``, ``gc_freeze = true``): what a served gateway runs, and a count
that does not move when a change only makes the heap at start-up bigger (collections then walk
fewer objects).

Under valgrind a run is about fifty times slower: the default set takes about six minutes on
two cores.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks import layers

ROOT = Path(__file__).resolve().parent.parent
_COLLECTED = re.compile(r"Collected : (\d+)")


def _child(name: str, requests: int) -> None:
    """Run ``requests`` sequential requests through configuration ``name`` (after a warm-up)."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    async def run() -> None:
        app = layers.configurations(False)[name]()
        await layers.drive(app, layers.REQUEST, 200)  # imports, caches, first-call costs
        if os.environ.get("LLMGUARD_BENCH_SERVED_GC"):
            from asgi_llmguard.runtime import tune_gc

            tune_gc(threshold=10_000, freeze=True)
        if requests:
            await layers.drive(app, layers.REQUEST, requests)

    asyncio.run(run())


def count(name: str, requests: int) -> int:
    """Instructions of a whole child process running ``requests`` requests through ``name``."""
    cmd = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        "-m",
        "benchmarks.instructions",
        "--child",
        name,
        "--requests",
        str(requests),
    ]
    # A fixed hash seed: dict and set layouts, and with them the counts, repeat run to run.
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    found = _COLLECTED.search(done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"valgrind run of {name!r} failed:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def per_request(name: str, small: int, requests: int) -> float:
    return (count(name, small + requests) - count(name, small)) / requests


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--small", type=int, default=100, help=argparse.SUPPRESS)
    parser.add_argument("--only", default="", help="substrings of configuration names, a,b")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--served-gc", action="store_true", help="tune the collector as `serve` does"
    )
    args = parser.parse_args(argv)
    if args.served_gc:
        os.environ["LLMGUARD_BENCH_SERVED_GC"] = "1"
    if args.child is not None:
        _child(args.child, args.requests)
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed: apt-get install -y valgrind", file=sys.stderr)
        return 2
    names = list(layers.configurations(False))
    wanted = [w for w in args.only.split(",") if w]
    if wanted:
        names = [n for n in names if n == names[0] or any(w in n for w in wanted)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        counts = list(pool.map(lambda n: per_request(n, args.small, args.requests), names))
    base = counts[0]
    gc_note = ", collector tuned as served" if args.served_gc else ""
    runs = f"{args.requests} requests{gc_note}"
    print(f"\nInstructions per JSON request (valgrind callgrind, {runs})")
    print("| configuration | instructions/request | over bare forwarder |\n|---|--:|--:|")
    for name, instructions in zip(names, counts, strict=True):
        print(f"| {name} | {instructions:,.0f} | {instructions - base:+,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
