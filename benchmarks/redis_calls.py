"""CPU per Redis rate-limit check, alone and batched (`asgi_llmguard.redis_batch`).

``--concurrency`` tasks each make their share of ``--calls`` token-bucket checks against one
bucket on the Redis at ``--url`` (a key prefix of this run, deleted at the end), the way
concurrent requests do. The process's CPU time per check and the checks per pipeline are
printed for each concurrency: with one task every check is a round trip of its own; with more,
the checks made while a batch is on the wire share the next one.

    .venv/bin/python -m benchmarks.redis_calls [--calls 20000] [--concurrency 1,32,128]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

from asgi_llmguard.policy import RateLimit
from asgi_llmguard.ratelimit import RateLimitConfig, create_limiter
from asgi_llmguard.ratelimit.gcra import RedisGcra
from asgi_llmguard.ratelimit.spec import parse_limit


async def measure(url: str, calls: int, concurrency: int) -> tuple[float, float, float]:
    """(CPU µs per check, checks per batch, checks per second)."""
    prefix = f"llmguard-bench:{os.getpid()}:"
    limiter = create_limiter(RateLimitConfig(storage=url, key_prefix=prefix))
    assert isinstance(limiter, RedisGcra)
    limit = parse_limit(RateLimit("1000000000/minute"))

    async def worker(n: int) -> None:
        for _ in range(n):
            decision = await limiter.acquire("k=bench|rpm", limit, 1.0)
            assert decision.allowed

    try:
        await worker(200)  # connection, script load
        batcher = limiter._batch
        batches, made = batcher.batches, batcher.calls
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker(calls // concurrency) for _ in range(concurrency)))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        made, batches = batcher.calls - made, batcher.batches - batches
        await limiter.forget("")
        return cpu / made * 1e6, made / batches, made / wall
    finally:
        await limiter.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--concurrency", default="1,32,128")
    args = parser.parse_args(argv)
    try:
        import uvloop

        run = uvloop.run
    except ImportError:
        run = asyncio.run
    print("| tasks | CPU µs per check | checks per pipeline | checks/s |")
    print("|--:|--:|--:|--:|")
    for concurrency in (int(c) for c in args.concurrency.split(",")):
        cpu, per_batch, rate = run(measure(args.url, args.calls, concurrency))
        print(f"| {concurrency} | {cpu:.1f} | {per_batch:.1f} | {rate:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
