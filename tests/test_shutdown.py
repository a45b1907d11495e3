"""Shutdown with streams in flight and events queued: nothing is lost (RELIABILITY U2).

The gateway runs under uvicorn with a graceful-shutdown period; 500 records wait in the
pipeline (a long flush interval keeps them queued) while 20 slow streams are still being relayed
when the server is told to stop. The streams finish within the grace period, then the lifespan
shutdown drains the pipeline: the ledger holds every record, in SQLite and in PostgreSQL.
"""

from __future__ import annotations

import concurrent.futures
import sqlite3
import uuid
from collections.abc import Callable, Iterator

import asyncpg
import httpx
import pytest

from asgi_llmguard import PostgresSink, SQLiteSink, Upstream, UsagePipeline, build_stack
from asgi_llmguard.testing import FakeProvider, serve
from tests.conftest import require_service

PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"
STREAMS = 20
QUEUED = 500


def _stream(url: str) -> bytes:
    with httpx.Client(base_url=url, timeout=30) as http:
        resp = http.post(
            "/v1/chat/completions",
            json={
                "model": "gpt-4o-mini",
                "stream": True,
                "messages": [{"role": "user", "content": "long story"}],
            },
            headers={"x-fake-chunk-delay": "0.1", "x-fake-chunks": "15"},
        )
        return resp.content


def _run(tmp_path, sink) -> UsagePipeline:
    fake = FakeProvider()
    pipeline = UsagePipeline(
        [sink], spill_path=str(tmp_path / "spill"), flush_interval=60, batch_size=10_000
    )
    with serve(fake) as upstream:
        app = build_stack(upstreams=[Upstream("openai", f"{upstream.url}/v1")], pipeline=pipeline)
        server_cm = serve(app, timeout_graceful_shutdown=10, shutdown_timeout=30)
        server = server_cm.__enter__()
        try:
            with httpx.Client(base_url=server.url) as http:
                for i in range(QUEUED):
                    r = http.post(
                        "/v1/embeddings", json={"model": "text-embedding-3-small", "input": f"{i}"}
                    )
                    assert r.status_code == 200
            with concurrent.futures.ThreadPoolExecutor(STREAMS) as pool:
                streams = [pool.submit(_stream, server.url) for _ in range(STREAMS)]
                fake.wait_until(lambda: fake.active_streams == STREAMS, 5.0)
                # Nothing written yet: the 500 records are queued in the pipeline.
                assert pipeline.stats.written == 0
                server_cm.__exit__(None, None, None)  # stop while 20 streams are in flight
                server_cm = None
                bodies = [s.result(timeout=30) for s in streams]
        finally:
            if server_cm is not None:
                server_cm.__exit__(None, None, None)
    assert all(b.rstrip().endswith(b"data: [DONE]") for b in bodies)  # finished, not cut
    assert pipeline.stats.dropped == 0
    return pipeline


def test_sqlite_ledger_keeps_every_record(tmp_path):
    ledger = tmp_path / "ledger.sqlite3"
    pipeline = _run(tmp_path, SQLiteSink(str(ledger)))
    with sqlite3.connect(ledger) as db:
        rows = db.execute("SELECT outcome, stream, COUNT(*) FROM usage_events GROUP BY 1, 2")
        counts = {(o, bool(s)): n for o, s, n in rows}
    assert counts == {("ok", False): QUEUED, ("ok", True): STREAMS}
    assert pipeline.stats.written == QUEUED + STREAMS


@pytest.fixture
def pg_schema() -> Iterator[Callable[[], str]]:
    require_service("PostgreSQL", "127.0.0.1", 5432)
    schema = f"shutdown_{uuid.uuid4().hex[:10]}"
    yield lambda: schema

    async def drop() -> None:
        conn = await asyncpg.connect(PG_DSN)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()

    import asyncio

    asyncio.run(drop())


def test_postgres_ledger_keeps_every_record(tmp_path, pg_schema):
    schema = pg_schema()
    _run(tmp_path, PostgresSink(PG_DSN, schema=schema))

    async def count() -> int:
        conn = await asyncpg.connect(PG_DSN)
        try:
            return int(await conn.fetchval(f'SELECT COUNT(*) FROM "{schema}".usage_events'))
        finally:
            await conn.close()

    import asyncio

    assert asyncio.run(count()) == QUEUED + STREAMS


def test_sigterm_to_the_server_process_keeps_every_record(tmp_path):
    """The same through ``asgi-llmguard serve`` and SIGTERM: the drain waits for the streams
    (shorter than ``shutdown_grace``), then the lifespan shutdown drains the queue."""
    import signal

    from tests.test_drain import free_port, gateway_config, gateway_process, ledger_rows

    port = free_port()
    ledger = tmp_path / "ledger.sqlite3"
    fake = FakeProvider()
    with serve(fake) as upstream:
        config = tmp_path / "llmguard.toml"
        config.write_text(gateway_config(port, upstream.url, ledger, grace=20))
        url = f"http://127.0.0.1:{port}"
        with gateway_process(config, port) as proc:
            with httpx.Client(base_url=url) as http:
                for i in range(QUEUED):
                    r = http.post(
                        "/v1/embeddings", json={"model": "text-embedding-3-small", "input": f"{i}"}
                    )
                    assert r.status_code == 200
            assert not ledger.exists() or ledger_rows(ledger) == []  # all still queued
            with concurrent.futures.ThreadPoolExecutor(STREAMS) as pool:
                streams = [pool.submit(_stream, url) for _ in range(STREAMS)]
                fake.wait_until(lambda: fake.active_streams == STREAMS, 10.0)
                proc.send_signal(signal.SIGTERM)
                bodies = [s.result(timeout=30) for s in streams]
            assert proc.wait(30) in (0, -signal.SIGTERM)
    assert all(b.rstrip().endswith(b"data: [DONE]") for b in bodies)  # finished, not cut
    counts: dict[tuple[str, bool], int] = {}
    for _, outcome, stream, _ in ledger_rows(ledger):
        counts[(outcome, bool(stream))] = counts.get((outcome, bool(stream)), 0) + 1
    assert counts == {("ok", False): QUEUED, ("ok", True): STREAMS}
