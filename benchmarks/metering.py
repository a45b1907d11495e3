"""What metering costs on streams: CPU per streamed MB, and memory per open stream.

    .venv/bin/python -m benchmarks.metering [--mb 16] [--streams 1000]

CPU: one 16 MB chat-completions stream (events of ~200 bytes, delivered in 16 KiB chunks as a
network would) is relayed through the bare `ForwardingApp` and through the usage layer, with the
client asking for the usage chunk (the meter only reads) and without (the gateway adds it upstream
and removes it again, re-framing events). Reported as CPU ms per MB, median of rounds.

Memory: ``--streams`` streams are held open at once through classifier + usage + forwarder, each
having relayed a few events and waiting for more; the Python heap growth (tracemalloc) divided by
the number of streams is the memory each open stream holds in the gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
import tracemalloc
from typing import Any

from asgi_llmguard.middleware.classify import ClassifyMiddleware
from asgi_llmguard.middleware.usage import UsageMiddleware
from benchmarks.layers import forwarder

EVENT = (
    b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,'
    b'"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":" token"},'
    b'"finish_reason":null}],"usage":null}\n\n'
)
TAIL = (
    b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,'
    b'"model":"gpt-4o-mini","choices":[],"usage":{"prompt_tokens":10,"completion_tokens":5,'
    b'"total_tokens":15}}\n\ndata: [DONE]\n\n'
)
CHUNK = 16 << 10


class _Discard:
    def emit(self, event: object) -> None:
        pass


class _Stream:
    __slots__ = ("_chunks", "_gate", "headers", "status")

    def __init__(self, chunks: list[bytes], gate: asyncio.Event | None) -> None:
        self.status = 200
        self.headers = [(b"content-type", b"text/event-stream")]
        self._chunks = chunks
        self._gate = gate

    async def read_chunk(self) -> bytes:
        if not self._chunks:
            return b""
        if self._gate is not None and len(self._chunks) < 3:
            await self._gate.wait()  # hold the stream open after its first events
        return self._chunks.pop(0)

    async def read_all(self) -> bytes:
        raise NotImplementedError

    async def aclose(self) -> None:
        return None


class _Engine:
    def __init__(self, body: bytes, gate: asyncio.Event | None = None) -> None:
        self._chunks = [body[i : i + CHUNK] for i in range(0, len(body), CHUNK)]
        self._gate = gate

    async def send(self, method: str, url: str, headers: Any, body: bytes) -> _Stream:
        return _Stream(list(self._chunks), self._gate)

    def connections_in_use(self) -> int:
        return 0

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


def _app(kind: str, engine: _Engine) -> Any:
    fwd = forwarder()
    fwd.engine = engine  # type: ignore[assignment]
    if kind == "bare":
        return fwd
    return ClassifyMiddleware(UsageMiddleware(fwd, pipeline=_Discard()))


def _request(include_usage: bool) -> bytes:
    options = ', "stream_options": {"include_usage": true}' if include_usage else ""
    return (
        b'{"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", '
        b'"content": "hi"}]' + options.encode() + b"}"
    )


async def _one(app: Any, body: bytes, done: asyncio.Event) -> int:
    received = 0
    first = True

    async def receive() -> dict[str, Any]:
        nonlocal first
        if first:
            first = False
            return {"type": "http.request", "body": body, "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal received
        if message["type"] == "http.response.body":
            received += len(message.get("body", b""))

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1),
    }
    await app(scope, receive, send)
    return received


async def cpu_per_mb(mb: int, rounds: int) -> dict[str, float]:
    stream = EVENT * (mb * (1 << 20) // len(EVENT)) + TAIL
    cases = {
        "bare ForwardingApp": ("bare", True),
        "usage layer, client asked for usage (read only)": ("usage", True),
        "usage layer, usage added and removed (re-framed)": ("usage", False),
    }
    results: dict[str, list[float]] = {name: [] for name in cases}
    done = asyncio.Event()
    for _ in range(rounds):
        for name, (kind, include) in cases.items():
            app = _app(kind, _Engine(stream))
            gc.collect()
            start = time.process_time()
            received = await _one(app, _request(include), done)
            elapsed = time.process_time() - start
            assert received >= len(stream) * 0.9, (name, received)
            results[name].append(elapsed * 1000 / mb)
    return {name: statistics.median(values) for name, values in results.items()}


async def memory_per_stream(streams: int) -> float:
    stream = EVENT * 64 + TAIL
    gate = asyncio.Event()
    done = asyncio.Event()
    app = _app("usage", _Engine(stream, gate))
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    tasks = [asyncio.ensure_future(_one(app, _request(False), done)) for _ in range(streams)]
    for _ in range(50):
        await asyncio.sleep(0)
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    gate.set()
    done.set()
    await asyncio.gather(*tasks)
    return held / streams


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--streams", type=int, default=1000)
    args = parser.parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    cpu = asyncio.run(cpu_per_mb(args.mb, args.rounds))
    base = next(iter(cpu.values()))
    print(f"\nCPU per streamed MB (median of {args.rounds} rounds, {args.mb} MB stream)")
    print("| path | CPU ms/MB | over bare |\n|---|--:|--:|")
    for name, value in cpu.items():
        print(f"| {name} | {value:.2f} | {value - base:+.2f} |")
    per_stream = asyncio.run(memory_per_stream(args.streams))
    print(f"\nPython heap held per open stream ({args.streams} open at once through")
    print(f"classify + usage + forward): {per_stream / 1024:.1f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
