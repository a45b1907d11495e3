"""The sinks on their own: real SQLite files, the real PostgreSQL, real JSON-lines files."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import uuid

import pytest

from asgi_llmguard.errors import ConfigurationError
from asgi_llmguard.usage.events import UsageEvent
from asgi_llmguard.usage.sinks import (
    CallableSink,
    JSONLSink,
    PostgresSink,
    Sink,
    SQLiteSink,
    parse_ledger_url,
    sink_from_url,
)
from asgi_llmguard.usage.sinks.jsonl import decode_lines
from tests.conftest import require_service

PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"


def make_events(n: int, *, prefix: str = "req", start: int = 0) -> list[UsageEvent]:
    return [
        UsageEvent(
            request_id=f"{prefix}-{i}",
            attempt=i % 2,
            started_at=1_700_000_000.0 + i,
            key_id=f"key-{i % 3}",
            model="gpt-4o",
            provider="openai",
            endpoint="chat.completions",
            credential_id="cred-a",
            status=200,
            input_tokens=100 + i,
            output_tokens=10,
            cached_input_tokens=i % 5,
            cost_nanos=1_000_000 + i,
            latency=0.5,
            ttfb=0.1 if i % 2 else None,
            stream=bool(i % 2),
            metadata={"team": "ml", "n": str(i)},
            outcome="cancelled" if i % 7 == 0 else "ok",
            reason="shutdown" if i % 7 == 0 else None,
        )
        for i in range(start, start + n)
    ]


def sqlite_count(path) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT count(*) FROM usage_events").fetchone()[0]


@pytest.fixture
async def pg_schema():
    require_service("PostgreSQL", "127.0.0.1", 5432)
    import asyncpg

    schema = f"llmguard_test_{uuid.uuid4().hex[:12]}"
    yield schema
    conn = await asyncpg.connect(PG_DSN)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def pg_fetch(schema: str, sql: str):
    import asyncpg

    conn = await asyncpg.connect(PG_DSN)
    try:
        return await conn.fetch(sql.format(s=f'"{schema}"'))
    finally:
        await conn.close()


# -- SQLite ----------------------------------------------------------------------------------------


async def test_sqlite_stores_each_event_once(tmp_path):
    path = tmp_path / "ledger" / "usage.sqlite3"
    sink = SQLiteSink(path)
    events = make_events(50)
    await sink.write(events)
    await sink.write(events)  # a retry
    await sink.write(events[25:] + make_events(10, start=50))  # a replay overlapping new events
    await sink.aclose()
    assert sqlite_count(path) == 60
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        indexes = {r[1] for r in conn.execute("PRAGMA index_list(usage_events)")}
        assert {"usage_events_started_at", "usage_events_key", "usage_events_model"} <= indexes
        row = conn.execute(
            "SELECT attempt, key_id, ttfb, stream, metadata, cost_nanos, outcome, reason "
            "FROM usage_events WHERE request_id = 'req-7'"
        ).fetchone()
        reasons = dict(conn.execute("SELECT request_id, reason FROM usage_events"))
    assert row == (1, "key-1", 0.1, 1, '{"team":"ml","n":"7"}', 1_000_007, "cancelled", "shutdown")
    assert reasons["req-8"] is None


@pytest.mark.parametrize("size", [1, 2, 3, 31, 32, 33, 77, 200])
async def test_sqlite_batches_of_any_size_store_every_field_of_every_event(tmp_path, size):
    """Batches go out as multi-row statements of several shapes: every event of a batch of any
    size lands once with all its values, a repeat within the same batch included."""
    path = tmp_path / "usage.sqlite3"
    sink = SQLiteSink(path)
    events = make_events(size)
    await sink.write([events[0], *events])  # the first event twice in one batch
    await sink.aclose()
    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            "SELECT request_id, attempt, started_at, key_id, input_tokens, cached_input_tokens, "
            "cost_nanos, ttfb, stream, metadata FROM usage_events ORDER BY started_at"
        ).fetchall()
    assert rows == [
        (
            e.request_id,
            e.attempt,
            e.started_at,
            e.key_id,
            e.input_tokens,
            e.cached_input_tokens,
            e.cost_nanos,
            e.ttfb,
            int(e.stream),
            f'{{"team":"ml","n":"{e.metadata["n"]}"}}',
        )
        for e in events
    ]


async def test_sqlite_writes_on_one_dedicated_thread(tmp_path, monkeypatch):
    sink = SQLiteSink(tmp_path / "usage.sqlite3")
    threads = set()
    original = SQLiteSink._write_sync

    def spy(self, events):
        threads.add(threading.current_thread().name)
        return original(self, events)

    monkeypatch.setattr(SQLiteSink, "_write_sync", spy)
    await asyncio.gather(*(sink.write(make_events(5, start=5 * i)) for i in range(8)))
    await sink.aclose()
    assert len(threads) == 1
    assert threads.pop() != threading.current_thread().name
    assert sqlite_count(tmp_path / "usage.sqlite3") == 40


async def test_sqlite_closed_sink_refuses_writes(tmp_path):
    sink = SQLiteSink(tmp_path / "usage.sqlite3")
    await sink.aclose()
    with pytest.raises(RuntimeError):
        await sink.write(make_events(1))


# -- PostgreSQL ------------------------------------------------------------------------------------


async def test_postgres_stores_each_event_once(pg_schema):
    sink = PostgresSink(PG_DSN, schema=pg_schema)
    events = make_events(50)
    await asyncio.gather(sink.write(events), sink.write(events))  # concurrent duplicates
    await sink.write(events[25:] + make_events(10, start=50))
    await sink.aclose()
    rows = await pg_fetch(pg_schema, "SELECT count(*) AS n FROM {s}.usage_events")
    assert rows[0]["n"] == 60
    [row] = await pg_fetch(
        pg_schema,
        "SELECT attempt, key_id, ttfb, stream, metadata->>'n' AS n, cost_nanos, reason, "
        "extract(epoch FROM started_at) AS started FROM {s}.usage_events "
        "WHERE request_id = 'req-7'",
    )
    assert row["reason"] == "shutdown"
    assert (row["attempt"], row["key_id"], row["ttfb"], row["stream"]) == (1, "key-1", 0.1, True)
    assert (row["n"], row["cost_nanos"], float(row["started"])) == ("7", 1_000_007, 1_700_000_007)


async def test_postgres_stores_values_it_cannot_hold_as_text(pg_schema):
    sink = PostgresSink(PG_DSN, schema=pg_schema)
    [event] = make_events(1)
    event.model = "gpt\x00-4o"
    event.metadata = {"user": "a\x00b"}
    await sink.write([event])
    await sink.aclose()
    [row] = await pg_fetch(pg_schema, "SELECT model, metadata->>'user' AS u FROM {s}.usage_events")
    assert (row["model"], row["u"]) == ("gpt\ufffd-4o", "a\ufffdb")


async def test_postgres_replicas_creating_the_table_together(pg_schema):
    sinks = [PostgresSink(PG_DSN, schema=pg_schema) for _ in range(4)]
    events = make_events(20)
    await asyncio.gather(*(sink.write(events) for sink in sinks))
    await asyncio.gather(*(sink.aclose() for sink in sinks))
    rows = await pg_fetch(pg_schema, "SELECT count(*) AS n FROM {s}.usage_events")
    assert rows[0]["n"] == 20


def test_postgres_schema_must_be_an_identifier():
    with pytest.raises(ConfigurationError):
        PostgresSink(PG_DSN, schema='x"; DROP TABLE usage_events; --')


def test_postgres_name_hides_credentials():
    sink = PostgresSink("postgresql://user:s3cret@db.internal:5433/ledger", schema="usage")
    assert "s3cret" not in sink.name
    assert "user" not in sink.name
    assert sink.name == "postgres:postgresql://db.internal:5433/ledger#usage"


# -- JSON lines ------------------------------------------------------------------------------------


def read_lines(path) -> list[UsageEvent]:
    events, bad = decode_lines(path.read_bytes().splitlines())
    assert bad == 0
    return events


async def test_jsonl_dedupes_in_process_and_after_reopening(tmp_path):
    path = tmp_path / "usage.jsonl"
    sink = JSONLSink(path)
    events = make_events(30)
    await sink.write(events)
    await sink.write(events[10:20])
    await sink.aclose()
    assert len(read_lines(path)) == 30
    # A new process replays a spilled batch: the window is rebuilt from the file's tail.
    sink = JSONLSink(path)
    await sink.write(events[20:] + make_events(5, start=30))
    await sink.aclose()
    lines = read_lines(path)
    assert len(lines) == 35
    assert {e.request_id: e.reason for e in lines}["req-14"] == "shutdown"
    assert len({(e.request_id, e.attempt) for e in lines}) == 35


async def test_jsonl_replay_beyond_the_window_duplicates_lines(tmp_path):
    """The documented limit: readers dedupe (see test_report)."""
    path = tmp_path / "usage.jsonl"
    sink = JSONLSink(path, seed_bytes=0)
    await sink.write(make_events(3))
    await sink.aclose()
    sink = JSONLSink(path, seed_bytes=0)
    await sink.write(make_events(3))
    await sink.aclose()
    assert len(read_lines(path)) == 6


async def test_jsonl_after_a_torn_last_line(tmp_path):
    path = tmp_path / "usage.jsonl"
    sink = JSONLSink(path)
    await sink.write(make_events(3))
    await sink.aclose()
    with path.open("ab") as f:
        f.write(b'{"request_id": "torn", "attem')  # a process killed mid-write
    sink = JSONLSink(path)
    await sink.write(make_events(2, start=3))
    await sink.aclose()
    events, bad = decode_lines(path.read_bytes().splitlines())
    assert bad == 1
    assert [e.request_id for e in events] == [f"req-{i}" for i in range(5)]


# -- callables -------------------------------------------------------------------------------------


async def test_callable_sink_batches_and_dedupes():
    batches: list[list[str]] = []

    async def collect(events):
        batches.append([e.request_id for e in events])

    sink = CallableSink(collect)
    events = make_events(4)
    await sink.write(events)
    await sink.write(events[2:] + make_events(1, start=4))
    assert batches == [["req-0", "req-1", "req-2", "req-3"], ["req-4"]]


async def test_callable_sink_per_event_resumes_after_a_failure():
    seen: list[str] = []
    fail_on = {"req-2"}

    async def one(event):
        if event.request_id in fail_on:
            fail_on.clear()
            raise ConnectionError("collector down")
        seen.append(event.request_id)

    sink = CallableSink(one, per_event=True)
    events = make_events(4)
    with pytest.raises(ConnectionError):
        await sink.write(events)
    await sink.write(events)  # the pipeline's retry
    assert seen == ["req-0", "req-1", "req-2", "req-3"]


def test_every_sink_follows_the_protocol(tmp_path):
    async def fn(events):
        return None

    sinks = [
        SQLiteSink(tmp_path / "a.sqlite3"),
        PostgresSink(PG_DSN),
        JSONLSink(tmp_path / "a.jsonl"),
        CallableSink(fn),
    ]
    assert all(isinstance(sink, Sink) for sink in sinks)


# -- URLs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "kind", "target", "schema"),
    [
        ("sqlite:///llmguard.sqlite3", "sqlite", "llmguard.sqlite3", "public"),
        ("sqlite:////var/lib/llmguard.sqlite3", "sqlite", "/var/lib/llmguard.sqlite3", "public"),
        ("jsonl:///logs/usage.jsonl", "jsonl", "logs/usage.jsonl", "public"),
        ("usage.ndjson", "jsonl", "usage.ndjson", "public"),
        ("ledger.db", "sqlite", "ledger.db", "public"),
        (
            "postgresql://u@h:5432/db?schema=llm&sslmode=disable",
            "postgres",
            "postgresql://u@h:5432/db?sslmode=disable",
            "llm",
        ),
        ("postgres://h/db", "postgres", "postgres://h/db", "public"),
    ],
)
def test_ledger_urls(url, kind, target, schema):
    assert parse_ledger_url(url) == (kind, target, schema)


@pytest.mark.parametrize("url", ["", "redis://localhost", "sqlite://relative.db", "sqlite:///"])
def test_bad_ledger_urls(url):
    with pytest.raises(ConfigurationError):
        parse_ledger_url(url)


def test_sink_from_url(tmp_path):
    assert isinstance(sink_from_url(f"sqlite:///{tmp_path}/a.sqlite3"), SQLiteSink)
    assert isinstance(sink_from_url(f"jsonl:///{tmp_path}/a.jsonl"), JSONLSink)
    sink = sink_from_url("postgresql://postgres@127.0.0.1:5432/test?schema=usage")
    assert isinstance(sink, PostgresSink)
    assert sink.schema == "usage"
