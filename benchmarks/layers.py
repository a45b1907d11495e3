"""In-process CPU cost of each gateway layer, without sockets or a server.

Each configuration is the real middleware stack in front of the real `ForwardingApp`, whose
engine is replaced by a stub that answers at once with a fixed upstream response (JSON or SSE), so
what is measured is the gateway's own work per request: classification, header rules, every
layer, the relay. Requests are driven through the ASGI interface directly, sequentially, and the
process CPU time is divided by the number of requests; every configuration is measured in
interleaved rounds and the median is reported, with its overhead over the bare `ForwardingApp`.

    .venv/bin/python -m benchmarks.layers [--requests 20000] [--rounds 5] [--redis]

Configurations that need a layer which is not built into this version are skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from asgi_llmguard import ForwardingApp, Upstream
from asgi_llmguard.middleware.classify import ClassifyMiddleware

Body = bytes
REQUEST = (Path(__file__).with_name("request.json")).read_bytes()
STREAM_REQUEST = REQUEST.rstrip().rstrip(b"}") + b', "stream": true}'

CHAT_JSON = (
    b'{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o-mini",'
    b'"choices":[{"index":0,"message":{"role":"assistant","content":"Hello there, how can I '
    b'help you today?"},"finish_reason":"stop"}],"usage":{"prompt_tokens":42,'
    b'"completion_tokens":9,"total_tokens":51,"prompt_tokens_details":{"cached_tokens":0},'
    b'"completion_tokens_details":{"reasoning_tokens":0}}}'
)


def _sse() -> bytes:
    out = b""
    for word in (b"Hello", b" there", b" friend", b"!", b""):
        out += (
            b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini",'
            b'"choices":[{"index":0,"delta":{"content":"' + word + b'"},"finish_reason":null}],'
            b'"usage":null}\n\n'
        )
    out += (
        b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini",'
        b'"choices":[],"usage":{"prompt_tokens":42,"completion_tokens":4,"total_tokens":46}}\n\n'
        b"data: [DONE]\n\n"
    )
    return out


CHAT_SSE = _sse()


class _StubResponse:
    __slots__ = ("_chunks", "headers", "status")

    def __init__(self, body: bytes, sse: bool) -> None:
        self.status = 200
        if sse:
            self.headers = [(b"content-type", b"text/event-stream")]
            # Split the stream the way a network would: a few chunks, not whole events.
            self._chunks = [body[i : i + 97] for i in range(0, len(body), 97)]
        else:
            self.headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ]
            self._chunks = [body]

    async def read_chunk(self) -> bytes:
        return self._chunks.pop(0) if self._chunks else b""

    async def read_all(self) -> bytes:
        data = b"".join(self._chunks)
        self._chunks = []
        return data

    async def aclose(self) -> None:
        return None


class StubEngine:
    """Answers every request at once, like an upstream with zero latency and zero cost."""

    async def send(
        self, method: str, url: str, headers: list[tuple[str, str]], body: bytes
    ) -> _StubResponse:
        sse = b'"stream": true' in body or b'"stream":true' in body
        return _StubResponse(CHAT_SSE if sse else CHAT_JSON, sse)

    def connections_in_use(self) -> int:
        return 0

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


def forwarder() -> ForwardingApp:
    app = ForwardingApp([Upstream("openai", "http://upstream.invalid/v1", api_key="sk-bench")])
    app.engine = StubEngine()
    return app


KEY = "sk-llmg-bench-key-0123456789abcdef0123456789"

App = Callable[[dict[str, Any], Callable[[], Awaitable[dict[str, Any]]], Any], Awaitable[None]]


def configurations(redis: bool) -> dict[str, Callable[[], Any]]:
    """name -> factory of the app to drive. Layers are imported lazily: a missing one skips."""

    def bare() -> Any:
        return forwarder()

    def classify() -> Any:
        return ClassifyMiddleware(forwarder())

    def usage() -> Any:
        from asgi_llmguard.middleware.usage import UsageMiddleware

        class Discard:
            def emit(self, event: object) -> None:
                pass

        return ClassifyMiddleware(UsageMiddleware(forwarder(), pipeline=Discard()))

    configs: dict[str, Callable[[], Any]] = {
        "forward (bare ForwardingApp)": bare,
        "classify": classify,
        "classify+usage": usage,
    }
    try:
        from benchmarks import guards
    except ImportError:
        return configs
    configs.update(guards.configurations(forwarder, KEY, redis))
    return configs


async def drive(app: Any, body: bytes, n: int) -> float:
    """CPU seconds per request for ``n`` sequential requests."""
    headers = [
        (b"host", b"gateway.test"),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"authorization", b"Bearer " + KEY.encode()),
        (b"user-agent", b"bench"),
        (b"accept", b"application/json"),
    ]
    base = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8080),
    }
    request_message = {"type": "http.request", "body": body, "more_body": False}
    statuses: list[int] = []
    done = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await done.wait()  # after the body: block until the response is complete
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    gc.collect()
    start = time.process_time()
    for _ in range(n):
        first = True

        async def receive_once() -> dict[str, Any]:
            nonlocal first
            if first:
                first = False
                return dict(request_message)
            return await receive()

        await app(dict(base), receive_once, send)
    elapsed = time.process_time() - start
    bad = [s for s in statuses if s != 200]
    if bad:
        raise RuntimeError(f"{len(bad)} requests answered {bad[0]}, not 200")
    return elapsed / n


async def run(requests: int, rounds: int, redis: bool, stream: bool) -> list[tuple[str, float]]:
    configs = configurations(redis)
    apps = {}
    for name, factory in configs.items():
        try:
            apps[name] = factory()
        except ImportError:
            continue
    body = STREAM_REQUEST if stream else REQUEST
    for app in apps.values():  # warm-up: lazy imports, caches, first-call costs
        await drive(app, body, 200)
    samples: dict[str, list[float]] = {name: [] for name in apps}
    for _ in range(rounds):
        for name, app in apps.items():
            samples[name].append(await drive(app, body, requests))
    for app in apps.values():
        closer = getattr(app, "aclose", None)
        if closer is not None:
            await closer()
    return [(name, statistics.median(values)) for name, values in samples.items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--redis", action="store_true", help="include Redis-backed layers")
    args = parser.parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    for stream in (False, True):
        results = asyncio.run(run(args.requests, args.rounds, args.redis, stream))
        base = results[0][1]
        kind = "streamed (SSE, 7 events)" if stream else "JSON"
        print(f"\n{kind}: median of {args.rounds} rounds x {args.requests} requests")
        print("| configuration | CPU µs/request | over bare forwarder |\n|---|--:|--:|")
        for name, cost in results:
            print(f"| {name} | {cost * 1e6:.1f} | {(cost - base) * 1e6:+.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
