"""Ledgers and capture tables written by an older version are upgraded in place when a sink
opens them: the missing columns are added, the rows already there are kept."""

from __future__ import annotations

import sqlite3
import uuid

import pytest

from asgi_llmguard.capture import CaptureRecord, SQLiteCaptureSink
from asgi_llmguard.migrate import column_definitions, sqlite_add_missing_columns
from asgi_llmguard.usage.events import UsageEvent
from asgi_llmguard.usage.sinks import PostgresSink, SQLiteSink
from tests.conftest import require_service

PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"

# The ledger table as the first released versions created it (no client_request_id).
OLD_SQLITE_LEDGER = """
CREATE TABLE IF NOT EXISTS usage_events (
    request_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    started_at REAL NOT NULL,
    key_id TEXT,
    model TEXT,
    served_model TEXT,
    provider TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    credential_id TEXT,
    status INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cached_input_tokens INTEGER NOT NULL,
    cache_creation_tokens INTEGER NOT NULL,
    reasoning_tokens INTEGER NOT NULL,
    cost_nanos INTEGER NOT NULL,
    latency REAL NOT NULL,
    ttfb REAL,
    stream INTEGER NOT NULL,
    estimated INTEGER NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}',
    recorded_at REAL NOT NULL,
    PRIMARY KEY (request_id, attempt)
);
"""
OLD_POSTGRES_LEDGER = """
CREATE SCHEMA "{schema}";
CREATE TABLE IF NOT EXISTS "{schema}".usage_events (
    request_id text NOT NULL,
    attempt integer NOT NULL,
    started_at timestamptz NOT NULL,
    key_id text,
    model text,
    served_model text,
    provider text NOT NULL,
    endpoint text NOT NULL,
    credential_id text,
    status integer NOT NULL,
    outcome text NOT NULL,
    input_tokens bigint NOT NULL,
    output_tokens bigint NOT NULL,
    cached_input_tokens bigint NOT NULL,
    cache_creation_tokens bigint NOT NULL,
    reasoning_tokens bigint NOT NULL,
    cost_nanos bigint NOT NULL,
    latency double precision NOT NULL,
    ttfb double precision,
    stream boolean NOT NULL,
    estimated boolean NOT NULL,
    metadata jsonb NOT NULL DEFAULT '{{}}',
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (request_id, attempt)
);
"""
OLD_SQLITE_CAPTURES = """
CREATE TABLE captures (
    request_id TEXT PRIMARY KEY,
    started_at REAL NOT NULL,
    key_id TEXT,
    api TEXT,
    endpoint TEXT,
    model TEXT,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    status INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    duration REAL NOT NULL,
    record TEXT NOT NULL
);
"""


def _event(request_id: str, client_request_id: str | None) -> UsageEvent:
    return UsageEvent(
        request_id=request_id,
        started_at=1_700_000_100.0,
        key_id="team-a",
        model="gpt-4o",
        provider="openai",
        endpoint="chat.completions",
        status=200,
        input_tokens=5,
        output_tokens=7,
        cost_nanos=1234,
        client_request_id=client_request_id,
        service_tier="flex",
        units=1.5,
        unit="minute",
    )


async def test_an_old_sqlite_ledger_gets_the_new_column_and_keeps_its_rows(tmp_path):
    path = tmp_path / "usage.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript(OLD_SQLITE_LEDGER)
        db.execute(
            "INSERT INTO usage_events (request_id, attempt, started_at, provider, endpoint, "
            "status, outcome, input_tokens, output_tokens, cached_input_tokens, "
            "cache_creation_tokens, reasoning_tokens, cost_nanos, latency, stream, estimated, "
            "recorded_at) VALUES ('req_old', 0, 1700000000.0, 'openai', 'chat.completions', "
            "200, 'ok', 3, 4, 0, 0, 0, 99, 0.5, 0, 0, 1700000001.0)"
        )
    db.close()
    sink = SQLiteSink(path)
    await sink.write([_event("req_new", "caller-1")])
    await sink.aclose()
    with sqlite3.connect(path) as db:
        rows = db.execute(
            "SELECT request_id, client_request_id, input_tokens, cost_nanos, service_tier, "
            "units, unit FROM usage_events ORDER BY started_at"
        ).fetchall()
    db.close()
    assert rows == [
        ("req_old", None, 3, 99, None, 0.0, None),
        ("req_new", "caller-1", 5, 1234, "flex", 1.5, "minute"),
    ]
    # Opening it again finds nothing to add.
    again = SQLiteSink(path)
    await again.write([_event("req_newer", None)])
    await again.aclose()


@pytest.fixture
async def pg_schema():
    require_service("PostgreSQL", "127.0.0.1", 5432)
    import asyncpg

    schema = f"llmguard_migrate_{uuid.uuid4().hex[:12]}"
    yield schema
    conn = await asyncpg.connect(PG_DSN)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def test_an_old_postgres_ledger_gets_the_new_column_and_keeps_its_rows(pg_schema):
    import asyncpg

    conn = await asyncpg.connect(PG_DSN)
    try:
        await conn.execute(OLD_POSTGRES_LEDGER.format(schema=pg_schema))
        await conn.execute(
            f'INSERT INTO "{pg_schema}".usage_events (request_id, attempt, started_at, provider, '
            "endpoint, status, outcome, input_tokens, output_tokens, cached_input_tokens, "
            "cache_creation_tokens, reasoning_tokens, cost_nanos, latency, stream, estimated) "
            "VALUES ('req_old', 0, now(), 'openai', 'chat.completions', 200, 'ok', 3, 4, 0, 0, "
            "0, 99, 0.5, false, false)"
        )
    finally:
        await conn.close()
    # Replicas opening the old table together: one adds the column, the others find it.
    sinks = [PostgresSink(PG_DSN, schema=pg_schema) for _ in range(3)]
    import asyncio

    await asyncio.gather(
        *(s.write([_event(f"req_new{i}", f"caller-{i}")]) for i, s in enumerate(sinks))
    )
    for sink in sinks:
        await sink.aclose()
    conn = await asyncpg.connect(PG_DSN)
    try:
        rows = await conn.fetch(
            "SELECT request_id, client_request_id, cost_nanos, units, unit "
            f'FROM "{pg_schema}".usage_events ORDER BY request_id'
        )
    finally:
        await conn.close()
    assert [tuple(r) for r in rows] == [
        ("req_new0", "caller-0", 1234, 1.5, "minute"),
        ("req_new1", "caller-1", 1234, 1.5, "minute"),
        ("req_new2", "caller-2", 1234, 1.5, "minute"),
        ("req_old", None, 99, 0.0, None),
    ]


async def test_an_old_capture_table_gets_the_new_column_and_keeps_its_rows(tmp_path):
    path = tmp_path / "captures.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript(OLD_SQLITE_CAPTURES)
        db.execute(
            "INSERT INTO captures VALUES ('req_old', 1700000000.0, NULL, 'openai', "
            "'chat.completions', 'gpt-4o', 'POST', '/v1/chat/completions', 200, 'complete', "
            "0.1, '{}')"
        )
    db.close()
    sink = SQLiteCaptureSink(path)
    record = CaptureRecord(
        request_id="req_new",
        client_request_id="caller-1",
        started_at=1_700_000_100.0,
        duration=0.2,
        method="POST",
        path="/v1/chat/completions",
        status=200,
    )
    await sink.write_many([record])
    await sink.aclose()
    with sqlite3.connect(path) as db:
        rows = db.execute(
            "SELECT request_id, client_request_id FROM captures ORDER BY started_at"
        ).fetchall()
    db.close()
    assert rows == [("req_old", None), ("req_new", "caller-1")]


def test_any_column_a_schema_gains_is_added_with_a_default_for_old_rows(tmp_path):
    """The migration is generic: it adds whatever the CREATE TABLE names and the table lacks."""
    old = "CREATE TABLE IF NOT EXISTS t (\n    id TEXT NOT NULL,\n    PRIMARY KEY (id)\n);"
    new = (
        "CREATE TABLE IF NOT EXISTS t (\n    id TEXT NOT NULL,\n    units REAL,\n"
        "    count INTEGER NOT NULL,\n    unit TEXT NOT NULL DEFAULT 'token',\n"
        "    PRIMARY KEY (id)\n);\nCREATE INDEX IF NOT EXISTS t_units ON t (units);"
    )
    db = sqlite3.connect(tmp_path / "t.sqlite3", isolation_level=None)
    assert sqlite_add_missing_columns(db, "t", new) == []  # no table yet: the script creates it
    db.executescript(old)
    db.execute("INSERT INTO t VALUES ('a')")
    assert sqlite_add_missing_columns(db, "t", new) == ["units", "count", "unit"]
    assert sqlite_add_missing_columns(db, "t", new) == []
    db.executescript(new)  # the index on a new column
    assert db.execute("SELECT * FROM t").fetchall() == [("a", None, 0, "token")]
    db.close()
    assert column_definitions(new, "t") == {
        "id": "TEXT NOT NULL DEFAULT ''",
        "units": "REAL",
        "count": "INTEGER NOT NULL DEFAULT 0",
        "unit": "TEXT NOT NULL DEFAULT 'token'",
    }
