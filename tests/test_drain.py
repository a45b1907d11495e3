"""Graceful shutdown that ends streams cleanly (`DrainMiddleware`, `Gateway.drain`).

In process: while draining, new requests get 503 in their route's error shape and streams
shorter than the grace finish. Against a real ``asgi-llmguard serve`` process told to stop with
SIGTERM: streams longer than the grace end with the terminal SSE error event, which the OpenAI
SDK raises as an `APIError`, and each of them is in the ledger.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from asgi_llmguard import SQLiteSink, Upstream, UsagePipeline, build_stack
from asgi_llmguard.testing import FakeProvider, serve, serve_async
from asgi_llmguard.usage.query import UsageFilter, query_usage

STREAM = {
    "model": "gpt-4o-mini",
    "stream": True,
    "messages": [{"role": "user", "content": "long story"}],
}


# -- a real gateway process ---------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def gateway_config(port: int, upstream: str, ledger: Path, *, grace: float, extra: str = "") -> str:
    """A config file's text: the fake upstream, a SQLite ledger kept queued until shutdown."""
    return f"""
[server]
port = {port}
shutdown_grace = {grace}
log_level = "warning"

[[upstreams]]
provider = "openai"
base_url = "{upstream}/v1"
name = "fake"

[usage]
sinks = ["{ledger}"]
spill_path = "{ledger}.spill"
flush_interval = 60
batch_size = 10000
{extra}
"""


@contextlib.contextmanager
def gateway_process(config: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """``asgi-llmguard serve --config`` in a subprocess, ready when its health check answers;
    killed at exit if still running (its stderr is shown when it did not start)."""
    log = config.with_suffix(".log")
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "asgi_llmguard.cli", "serve", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the gateway did not start:\n{log.read_text()}")
            time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def ledger_rows(ledger: Path) -> list[tuple[str, str, int, int]]:
    """(request_id, outcome, stream, output_tokens) of every record."""
    with contextlib.closing(sqlite3.connect(ledger)) as db:
        return list(
            db.execute("SELECT request_id, outcome, stream, output_tokens FROM usage_events")
        )


def ledger_reasons(ledger: Path) -> list[tuple[str, str | None, int]]:
    """(outcome, reason, estimated) of every record."""
    with contextlib.closing(sqlite3.connect(ledger)) as db:
        return list(db.execute("SELECT outcome, reason, estimated FROM usage_events"))


async def ledger_errors(ledger: Path) -> int:
    """The errors the admin API and dashboard count in the ledger."""
    (total,) = await query_usage(f"sqlite:///{ledger}", UsageFilter(start=0))
    return total.errors


# -- in process: refusals while draining, streams within the grace finish ---------------------


async def test_draining_refuses_new_requests_and_lets_short_streams_finish() -> None:
    fake = FakeProvider()
    with serve(fake) as upstream:
        gateway = build_stack(
            upstreams=[
                Upstream("openai", f"{upstream.url}/v1"),
                Upstream("anthropic", upstream.url),
            ]
        )
        async with (
            serve_async(gateway) as server,
            httpx.AsyncClient(base_url=server.url, timeout=30) as http,
        ):
            stream = asyncio.create_task(
                http.post(
                    "/v1/chat/completions",
                    json=STREAM,
                    headers={"x-fake-chunk-delay": "0.05", "x-fake-chunks": "10"},
                )
            )
            while fake.active_streams < 1:
                await asyncio.sleep(0.01)
            drain = asyncio.create_task(gateway.drain(30))
            await asyncio.sleep(0)
            async with httpx.AsyncClient(base_url=server.url) as other:
                refused = await other.post("/v1/chat/completions", json=STREAM)
                refused_anthropic = await other.post(
                    "/v1/messages",
                    json={"model": "claude-3-5-haiku-latest", "max_tokens": 5, "messages": []},
                )
                health = await other.get("/healthz")  # not a layer of this stack: 404 passes
            body = (await stream).content
            assert await drain == 0  # nothing had to be ended

    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert refused.headers["connection"] == "close"
    assert refused.json()["error"]["code"] == "shutting_down"
    assert refused_anthropic.status_code == 503
    assert refused_anthropic.json()["type"] == "error"
    assert refused_anthropic.json()["error"]["type"] == "overloaded_error"
    assert health.status_code == 503
    assert body.rstrip().endswith(b"data: [DONE]")


async def test_stream_past_the_grace_ends_with_an_error_event_and_is_recorded(
    tmp_path: Path,
) -> None:
    ledger = tmp_path / "ledger.sqlite3"
    pipeline = UsagePipeline([SQLiteSink(str(ledger))], spill_path=str(tmp_path / "spill"))
    fake = FakeProvider()
    with serve(fake) as upstream:
        gateway = build_stack(
            upstreams=[Upstream("openai", f"{upstream.url}/v1")], pipeline=pipeline
        )
        async with (
            serve_async(gateway) as server,
            httpx.AsyncClient(base_url=server.url, timeout=30) as http,
        ):
            chunks: list[bytes] = []

            async def read() -> None:
                async with http.stream(
                    "POST",
                    "/v1/chat/completions",
                    json=STREAM,
                    headers={"x-fake-chunk-delay": "0.05", "x-fake-chunks": "400"},
                ) as resp:
                    async for chunk in resp.aiter_bytes():
                        chunks.append(chunk)

            reader = asyncio.create_task(read())
            while len(chunks) < 3:
                await asyncio.sleep(0.01)
            ended = await gateway.drain(0.2)
            await reader
        # The lifespan shutdown has drained the pipeline into the ledger.
        fake.wait_until(lambda: fake.active_streams == 0, 5.0)
    body = b"".join(chunks)
    assert ended == 1
    assert b"data: [DONE]" not in body
    last = body.rsplit(b"\n\n", 2)[-2]
    assert body.endswith(b"\n\n")
    assert last.startswith(b"data: {")
    error = json.loads(last[len(b"data: ") :])["error"]
    assert error["type"] == "overloaded_error"
    assert "shutting down" in error["message"]
    rows = ledger_rows(ledger)
    assert len(rows) == 1
    assert rows[0][2] == 1
    assert rows[0][3] > 0
    # Ended by the shutdown: cancelled with its reason, not an upstream error.
    assert ledger_reasons(ledger) == [("cancelled", "shutdown", 1)]
    assert await ledger_errors(ledger) == 0


# -- a real ``asgi-llmguard serve`` process and SIGTERM -----------------------------------------


def _sdk_stream(url: str, chunks: int) -> tuple[str, BaseException | None]:
    """Read a stream with the OpenAI SDK; the text received and the error it raised, if any."""
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    text = []
    try:
        stream = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "long story"}],
            stream=True,
            extra_headers={"x-fake-chunk-delay": "0.05", "x-fake-chunks": str(chunks)},
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                text.append(chunk.choices[0].delta.content)
    except openai.APIError as exc:
        return "".join(text), exc
    return "".join(text), None


def test_sigterm_ends_long_streams_with_an_error_event(tmp_path: Path) -> None:
    port = free_port()
    ledger = tmp_path / "ledger.sqlite3"
    fake = FakeProvider()
    with serve(fake) as upstream:
        config = tmp_path / "llmguard.toml"
        config.write_text(gateway_config(port, upstream.url, ledger, grace=1.0))
        with (
            gateway_process(config, port) as proc,
            concurrent.futures.ThreadPoolExecutor(4) as pool,
        ):
            url = f"http://127.0.0.1:{port}"
            long = [pool.submit(_sdk_stream, url, 2000) for _ in range(3)]
            fake.wait_until(lambda: fake.active_streams == 3, 10.0)
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)  # uvicorn has stopped listening; the drain refuses the rest
            try:
                late = httpx.post(f"{url}/v1/chat/completions", json=STREAM, timeout=5)
                late_status: int | str = late.status_code
            except httpx.TransportError:
                late_status = "refused"
            results = [f.result(timeout=20) for f in long]
            # uvicorn re-raises the signal once shut down: the process ends "killed by SIGTERM".
            assert proc.wait(20) in (0, -signal.SIGTERM)
            fake.wait_until(lambda: fake.active_streams == 0, 5.0)

    assert late_status in (503, "refused")
    for text, error in results:
        assert text  # part of the answer arrived before the end
        assert isinstance(error, openai.APIError)
        assert "shutting down" in str(error.message)
    rows = ledger_rows(ledger)
    assert len(rows) == 3
    assert len({r[0] for r in rows}) == 3
    assert all(r[2] == 1 and r[3] > 0 for r in rows)
    assert ledger_reasons(ledger) == [("cancelled", "shutdown", 1)] * 3
    assert asyncio.run(ledger_errors(ledger)) == 0
