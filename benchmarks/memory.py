"""Memory of the gateway with many slow streams open: RSS before, and with N streams in flight.

    .venv/bin/python -m benchmarks.memory [--streams 1000]

The upstream is the fake provider (`asgi-llmguard mock-upstream`) in its own process, streaming
slowly (one chunk every 2 s, 60 chunks, asked per request with ``x-fake-*`` headers, which the
gateway forwards). The gateway runs the full default stack (`benchmarks.targets:gateway_full`:
virtual key, limits, metering, SQLite ledger) under uvicorn in its own process. This script opens
N streaming requests over N connections with asyncio, waits until every one has received its
first event, reads the gateway's RSS from /proc, then closes them all. Everything started here
is stopped on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.forwarding import BenchError, Processes, free_port, tail, wait_for_port
from benchmarks.targets import DIR_ENV, ENV

ROOT = Path(__file__).resolve().parent.parent
REQUEST = json.dumps(
    {
        "model": "gpt-4o-mini",
        "stream": True,
        "messages": [{"role": "user", "content": "tell me a long story"}],
    }
).encode()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no VmRSS for pid {pid}")


async def open_stream(port: int, ready: list[int]) -> asyncio.StreamWriter:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: application/json\r\nAuthorization: Bearer sk-bench\r\n"
        "x-fake-chunk-delay: 2\r\nx-fake-chunks: 60\r\n"
        f"Content-Length: {len(REQUEST)}\r\n\r\n"
    )
    writer.write(head.encode() + REQUEST)
    await writer.drain()
    data = b""
    while b"data:" not in data:
        chunk = await reader.read(65536)
        if not chunk:
            raise BenchError(f"a stream closed before its first event: {data[:300]!r}")
        data += chunk
    if not data.startswith(b"HTTP/1.1 200"):
        raise BenchError(f"a stream was refused: {data[:300]!r}")
    ready.append(1)
    return writer


async def measure(port: int, pid: int, streams: int) -> dict[str, float]:
    before = rss_mib(pid)
    ready: list[int] = []
    started = time.monotonic()
    writers = await asyncio.gather(*(open_stream(port, ready) for _ in range(streams)))
    opened = time.monotonic() - started
    await asyncio.sleep(1.0)
    during = rss_mib(pid)
    for writer in writers:
        writer.close()
    with contextlib.suppress(Exception):
        await asyncio.gather(*(w.wait_closed() for w in writers), return_exceptions=True)
    await asyncio.sleep(2.0)
    after = rss_mib(pid)
    return {
        "streams": streams,
        "rss_before_mib": before,
        "rss_with_streams_mib": during,
        "rss_after_close_mib": after,
        "per_stream_kib": (during - before) * 1024 / streams,
        "seconds_to_open": opened,
    }


def run(streams: int) -> dict[str, float]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, max(soft, 4 * streams + 1024))
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    procs = Processes(pin=False)
    with tempfile.TemporaryDirectory(prefix="llmguard-mem-") as tmp_dir:
        tmp = Path(tmp_dir)
        try:
            up_port, gw_port = free_port(), free_port()
            env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
            up_log = tmp / "upstream.log"
            cmd = [sys.executable, "-m", "asgi_llmguard.cli", "mock-upstream"]
            upstream = procs.start([*cmd, "--port", str(up_port)], up_log, env)
            wait_for_port(up_port, upstream, up_log, timeout=30)
            env[ENV] = f"http://127.0.0.1:{up_port}"
            env[DIR_ENV] = str(tmp)
            gw_log = tmp / "gateway.log"
            gateway = procs.start(
                [sys.executable, "-m", "benchmarks.serve", "gateway-full", str(gw_port)],
                gw_log,
                env,
            )
            wait_for_port(gw_port, gateway, gw_log, timeout=30)
            try:
                return asyncio.run(measure(gw_port, gateway.pid, streams))
            except (OSError, BenchError) as exc:
                raise BenchError(f"{exc}\n--- gateway log ---\n{tail(gw_log)}") from exc
        finally:
            procs.stop_all()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1000)
    args = parser.parse_args(argv)
    try:
        result = run(args.streams)
    except BenchError as exc:
        print(f"memory benchmark failed: {exc}", file=sys.stderr)
        return 1
    print(
        f"gateway RSS: {result['rss_before_mib']:.1f} MiB idle, "
        f"{result['rss_with_streams_mib']:.1f} MiB with {args.streams} streams open "
        f"({result['per_stream_kib']:.1f} KiB per stream), "
        f"{result['rss_after_close_mib']:.1f} MiB after they closed"
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
