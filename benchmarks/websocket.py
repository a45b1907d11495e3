"""WebSocket sessions through the gateway: RSS per open idle session, CPU per relayed frame.

    .venv/bin/python -m benchmarks.websocket [--sessions 1000] [--turns 20] [--chunks 500]

The upstream is the fake provider (`asgi-llmguard mock-upstream`) in its own process; the gateway
runs the full default stack (`benchmarks.targets:gateway_full`: virtual key, rate limits,
metering, SQLite ledger) under uvicorn in its own process, as `benchmarks.memory` runs it.

- Memory: N Responses-API WebSocket sessions are opened (each one an upstream socket too) and
  left idle; the gateway's RSS is read from /proc before, with them open, and after they closed.
- CPU: one session runs T turns of C deltas each (``x-fake-chunks``), so every turn relays
  C + 8 frames downstream; the gateway process's user + system CPU time (from /proc) is divided
  by the frames relayed. Once without compression, once with permessage-deflate negotiated by
  the client (as the ``websockets`` library and Codex do by default; the gateway then compresses
  every frame it sends the client). For comparison, the same turns as HTTP streams
  (``POST /v1/responses``, ``stream: true``) on one keep-alive connection: CPU per SSE event.

The idle sessions are measured twice too: with permessage-deflate negotiated (the default of
most clients), then without.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.forwarding import BenchError, Processes, free_port, tail, wait_for_port
from benchmarks.memory import rss_mib
from benchmarks.targets import BENCH_KEY, DIR_ENV, ENV

ROOT = Path(__file__).resolve().parent.parent
MODEL = "gpt-4o-mini"
CREATE = {"type": "response.create", "model": MODEL, "input": "tell me a long story"}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


async def idle_sessions(
    port: int, pid: int, sessions: int, compression: str | None = "deflate"
) -> dict[str, float]:
    from websockets.asyncio.client import connect

    url = f"ws://127.0.0.1:{port}/v1/responses"
    headers = {"Authorization": f"Bearer {BENCH_KEY}"}
    before = rss_mib(pid)
    started = time.monotonic()
    opened: list[Any] = []
    for start in range(0, sessions, 100):
        batch = range(start, min(sessions, start + 100))
        opened += await asyncio.gather(
            *(
                connect(url, additional_headers=headers, open_timeout=30, compression=compression)
                for _ in batch
            )
        )
    seconds = time.monotonic() - started
    await asyncio.sleep(1.0)
    during = rss_mib(pid)
    await asyncio.gather(*(ws.close() for ws in opened), return_exceptions=True)
    await asyncio.sleep(2.0)
    return {
        "sessions": sessions,
        "rss_before_mib": before,
        "rss_with_sessions_mib": during,
        "rss_after_close_mib": rss_mib(pid),
        "per_session_kib": (during - before) * 1024 / sessions,
        "seconds_to_open": seconds,
    }


async def websocket_frames(
    port: int, pid: int, turns: int, chunks: int, compression: str | None
) -> dict[str, float]:
    from websockets.asyncio.client import connect

    url = f"ws://127.0.0.1:{port}/v1/responses"
    headers = {"Authorization": f"Bearer {BENCH_KEY}", "x-fake-chunks": str(chunks)}
    frames = 0
    async with connect(
        url, additional_headers=headers, max_size=None, compression=compression
    ) as ws:
        await ws.send(json.dumps(CREATE))  # warm: the first turn opens what stays open
        while json.loads(await ws.recv())["type"] != "response.completed":
            pass
        cpu = cpu_seconds(pid)
        started = time.perf_counter()
        for _ in range(turns):
            await ws.send(json.dumps(CREATE))
            while True:
                frames += 1
                if b'"response.completed"' in (await ws.recv(decode=False)):
                    break
        wall = time.perf_counter() - started
        used = cpu_seconds(pid) - cpu
    return {
        "turns": turns,
        "frames": frames,
        "gateway_cpu_s": used,
        "cpu_us_per_frame": used * 1e6 / frames,
        "frames_per_s": frames / wall,
    }


async def sse_events(port: int, pid: int, turns: int, chunks: int) -> dict[str, float]:
    body = json.dumps({**{k: v for k, v in CREATE.items() if k != "type"}, "stream": True})
    head = (
        "POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {BENCH_KEY}\r\nx-fake-chunks: {chunks}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body.encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def one() -> int:
        writer.write(head)
        await writer.drain()
        data = b""
        while b"event: response.completed" not in data or not data.endswith(b"0\r\n\r\n"):
            chunk = await reader.read(1 << 16)
            if not chunk:
                raise BenchError(f"the stream closed early: {data[:300]!r}")
            data += chunk
        return data.count(b"\nevent: ") + data.startswith(b"event: ")

    await one()
    cpu = cpu_seconds(pid)
    events = 0
    for _ in range(turns):
        events += await one()
    used = cpu_seconds(pid) - cpu
    writer.close()
    return {"events": events, "gateway_cpu_s": used, "cpu_us_per_event": used * 1e6 / events}


def run(sessions: int, turns: int, chunks: int) -> dict[str, Any]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * sessions + 1024)), hard))
    procs = Processes(pin=False)
    with tempfile.TemporaryDirectory(prefix="llmguard-ws-") as tmp_dir:
        tmp = Path(tmp_dir)
        try:
            up_port = free_port()
            env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
            up_log = tmp / "upstream.log"
            cmd = [sys.executable, "-m", "asgi_llmguard.cli", "mock-upstream"]
            upstream = procs.start([*cmd, "--port", str(up_port)], up_log, env)
            wait_for_port(up_port, upstream, up_log, timeout=30)
            env[ENV] = f"http://127.0.0.1:{up_port}"
            env[DIR_ENV] = str(tmp)
            result: dict[str, Any] = {}
            # A fresh gateway for each memory measurement: freed memory is reused, not returned.
            steps: list[tuple[str, Any]] = [
                ("idle", lambda port, pid: idle_sessions(port, pid, sessions)),
                ("idle_plain", lambda port, pid: idle_sessions(port, pid, sessions, None)),
                (
                    "websocket",
                    lambda port, pid: websocket_frames(port, pid, turns, chunks, None),
                ),
            ]
            for index, (name, step) in enumerate(steps):
                gw_port = free_port()
                gw_log = tmp / f"gateway-{index}.log"
                gateway = procs.start(
                    [sys.executable, "-m", "benchmarks.serve", "gateway-full", str(gw_port)],
                    gw_log,
                    env,
                )
                wait_for_port(gw_port, gateway, gw_log, timeout=30)
                try:
                    result[name] = asyncio.run(step(gw_port, gateway.pid))
                    if name == "websocket":
                        result["websocket_deflate"] = asyncio.run(
                            websocket_frames(gw_port, gateway.pid, turns, chunks, "deflate")
                        )
                        result["sse"] = asyncio.run(sse_events(gw_port, gateway.pid, turns, chunks))
                except (OSError, BenchError) as exc:
                    raise BenchError(f"{exc}\n--- gateway log ---\n{tail(gw_log)}") from exc
            return result
        finally:
            procs.stop_all()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--turns", type=int, default=100)
    parser.add_argument("--chunks", type=int, default=500)
    args = parser.parse_args(argv)
    try:
        result = run(args.sessions, args.turns, args.chunks)
    except BenchError as exc:
        print(f"websocket benchmark failed: {exc}", file=sys.stderr)
        return 1
    idle, ws, sse = result["idle"], result["websocket"], result["sse"]
    deflate = result["websocket_deflate"]
    print(
        f"gateway RSS: {idle['rss_before_mib']:.1f} MiB, {idle['rss_with_sessions_mib']:.1f} MiB "
        f"with {idle['sessions']} idle sessions ({idle['per_session_kib']:.1f} KiB each), "
        f"{idle['rss_after_close_mib']:.1f} MiB after they closed; without compression: "
        f"{result['idle_plain']['per_session_kib']:.1f} KiB each"
    )
    print(
        f"CPU per relayed frame: {ws['cpu_us_per_frame']:.1f} us over {ws['frames']} frames "
        f"({ws['frames_per_s']:.0f} frames/s); with permessage-deflate towards the client: "
        f"{deflate['cpu_us_per_frame']:.1f} us; per SSE event over HTTP: "
        f"{sse['cpu_us_per_event']:.1f} us over {sse['events']} events"
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
