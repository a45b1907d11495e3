"""The capture sinks (JSONL, SQLite, from a URI) and the record's body encoding."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
import threading

import msgspec
import pytest

from asgi_llmguard.capture import (
    CaptureRecord,
    JSONLCaptureSink,
    SQLiteCaptureSink,
    decode_body,
    encode_body,
    sink_from_uri,
    sink_from_url,
)
from asgi_llmguard.errors import ConfigurationError

pytestmark = pytest.mark.anyio


def _record(request_id: str = "req_1", **fields: object) -> CaptureRecord:
    values: dict[str, object] = {
        "request_id": request_id,
        "started_at": 1700000000.5,
        "duration": 0.25,
        "method": "POST",
        "path": "/v1/chat/completions",
        "endpoint": "chat.completions",
        "key_id": "k1",
        "status": 200,
        "request_body": '{"model":"m"}',
        "response_body": "ok",
    }
    values.update(fields)
    return CaptureRecord(**values)  # type: ignore[arg-type]


async def test_jsonl_sink_appends_one_line_per_record_owner_only(tmp_path):
    path = tmp_path / "c.jsonl"
    sink = JSONLCaptureSink(path)
    await sink(_record("req_1"))
    await sink.write_many([_record("req_2"), _record("req_3", status=502)])
    await sink.aclose()
    lines = path.read_bytes().splitlines()
    records = [msgspec.json.decode(line, type=CaptureRecord) for line in lines]
    assert [r.request_id for r in records] == ["req_1", "req_2", "req_3"]
    assert records[2].status == 502
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_jsonl_sink_writes_off_the_event_loop_and_survives_rotation(tmp_path):
    path = tmp_path / "c.jsonl"
    sink = JSONLCaptureSink(path)
    threads: list[str] = []
    append = sink._append

    def spy(data: bytes) -> None:
        threads.append(threading.current_thread().name)
        append(data)

    sink._append = spy  # type: ignore[method-assign]
    await sink(_record("req_1"))
    os.rename(path, tmp_path / "c.jsonl.1")  # logrotate
    await sink(_record("req_2"))
    await sink.aclose()
    assert threads
    assert all(name != threading.main_thread().name for name in threads)
    assert b"req_1" in (tmp_path / "c.jsonl.1").read_bytes()
    assert b"req_2" in path.read_bytes()
    assert b"req_1" not in path.read_bytes()


async def test_sqlite_sink_uses_wal_columns_and_replaces_by_request_id(tmp_path):
    path = tmp_path / "c.db"
    sink = SQLiteCaptureSink(path)
    await sink.write_many([_record("req_1"), _record("req_2", model="gpt-4o")])
    await sink(_record("req_1", status=499, outcome="disconnected", incomplete=True))
    await sink.aclose()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        rows = db.execute(
            "SELECT request_id, status, outcome, model, record FROM captures ORDER BY request_id"
        ).fetchall()
    finally:
        db.close()
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [
        ("req_1", 499, "disconnected", None),
        ("req_2", 200, "complete", "gpt-4o"),
    ]
    assert msgspec.json.decode(rows[0][4], type=CaptureRecord).incomplete


async def test_sqlite_sink_reopens_after_aclose(tmp_path):
    sink = SQLiteCaptureSink(tmp_path / "c.db")
    await sink(_record("req_1"))
    await sink.aclose()
    await sink(_record("req_2"))
    await sink.aclose()
    db = sqlite3.connect(tmp_path / "c.db")
    try:
        assert db.execute("SELECT count(*) FROM captures").fetchone()[0] == 2
    finally:
        db.close()


async def test_concurrent_writes_keep_every_record(tmp_path):
    sink = JSONLCaptureSink(tmp_path / "c.jsonl")
    await asyncio.gather(*(sink(_record(f"req_{i}")) for i in range(50)))
    await sink.aclose()
    assert len((tmp_path / "c.jsonl").read_bytes().splitlines()) == 50


def test_sink_from_url(tmp_path):
    jsonl = sink_from_url(f"jsonl://{tmp_path}/c.jsonl")
    assert isinstance(jsonl, JSONLCaptureSink)
    assert jsonl.path == tmp_path / "c.jsonl"
    sqlite = sink_from_url(f"sqlite://{tmp_path}/c.db")
    assert isinstance(sqlite, SQLiteCaptureSink)
    for bad in ("capture.jsonl", "jsonl://", "s3://bucket/key", f"sqlite://{tmp_path}/nope/c.db"):
        with pytest.raises(ConfigurationError):
            sink_from_url(bad)


def test_sink_from_uri_still_works_and_says_it_is_deprecated(tmp_path):
    with pytest.warns(DeprecationWarning, match="sink_from_url"):
        jsonl = sink_from_uri(f"jsonl://{tmp_path}/c.jsonl")
    assert isinstance(jsonl, JSONLCaptureSink)


@pytest.mark.parametrize(
    ("data", "truncated", "encoding"),
    [
        (b'{"a": "\xc3\xa9"}', False, "text"),
        (b"\x1f\x8b\x08\x00binary", False, "base64"),
        (b"ab\xc3", True, "text"),  # a character cut in two by truncation: dropped
        (b"ab\xc3", False, "base64"),  # not truncated: really not UTF-8
        (b"", False, "text"),
    ],
)
def test_body_encoding(data, truncated, encoding):
    text, got = encode_body(data, truncated=truncated)
    assert got == encoding
    decoded = decode_body(text, got)
    assert decoded == (data[:2] if truncated else data)
