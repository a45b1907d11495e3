"""Where captured exchanges go: a JSON Lines file, a SQLite database, or any async callable.

A sink is any ``async def sink(record: CaptureRecord) -> None``. The built-in sinks also take a
whole batch (``write_many``) so the capture writer hands them everything queued in one step, and
do their file work on a thread of their own (one per sink, so writes stay in order and SQLite's
connection stays on the thread that opened it), never on the event loop. ``aclose()`` finishes
pending writes and releases the file or connection; the next write reopens it.

Capture files hold prompts and answers: they are created readable by their owner only (0600).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import warnings
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol, TypeVar, runtime_checkable

import msgspec

from asgi_llmguard.capture.record import CaptureRecord
from asgi_llmguard.errors import ConfigurationError
from asgi_llmguard.migrate import sqlite_add_missing_columns

T = TypeVar("T")

_encoder = msgspec.json.Encoder()


class CaptureSink(Protocol):
    """Anything the capture writer can hand a record to."""

    def __call__(self, record: CaptureRecord, /) -> Awaitable[None]: ...


@runtime_checkable
class BatchCaptureSink(Protocol):
    """A sink that also takes a batch, and can be closed."""

    def __call__(self, record: CaptureRecord, /) -> Awaitable[None]: ...

    async def write_many(self, records: Sequence[CaptureRecord], /) -> None: ...

    async def aclose(self) -> None: ...


class _ThreadedSink:
    """Runs the sink's blocking work on one dedicated thread, started on the first write."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        resolved = Path(path).expanduser()
        if not resolved.parent.is_dir():
            raise ConfigurationError(
                f"{type(self).__name__}: the directory {str(resolved.parent)!r} does not exist"
            )
        self.path = resolved
        self._executor: ThreadPoolExecutor | None = None

    async def _run(self, fn: Callable[[], T]) -> T:
        executor = self._executor
        if executor is None:
            executor = self._executor = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix=f"llmguard-capture-{self.path.name}"
            )
        return await asyncio.get_running_loop().run_in_executor(executor, fn)

    async def __call__(self, record: CaptureRecord, /) -> None:
        await self.write_many((record,))

    async def write_many(self, records: Sequence[CaptureRecord], /) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        """Release the file or connection (on the sink's thread)."""

    async def aclose(self) -> None:
        executor = self._executor
        if executor is None:
            return
        await self._run(self._close)
        self._executor = None
        executor.shutdown(wait=False)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"


class JSONLCaptureSink(_ThreadedSink):
    """Append one JSON object per line to ``path`` (created 0600 if missing).

    The file is opened for each batch, so log rotation that renames the file (logrotate's
    ``create`` mode) just works: the next batch starts the new file.
    """

    async def write_many(self, records: Sequence[CaptureRecord], /) -> None:
        if not records:
            return
        data = b"".join(_encoder.encode(record) + b"\n" for record in records)
        await self._run(lambda: self._append(data))

    def _append(self, data: bytes) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS captures (
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
    record TEXT NOT NULL,
    client_request_id TEXT
);
CREATE INDEX IF NOT EXISTS captures_started_at ON captures (started_at);
CREATE INDEX IF NOT EXISTS captures_key_id ON captures (key_id, started_at);
"""
_INSERT = (
    "INSERT OR REPLACE INTO captures (request_id, started_at, key_id, api, endpoint, model,"
    " method, path, status, outcome, duration, record, client_request_id)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


class SQLiteCaptureSink(_ThreadedSink):
    """Store records in the ``captures`` table of a SQLite database (WAL mode).

    The main fields are columns (request id, time, key id, endpoint, model, status, outcome) for
    querying; ``record`` holds the whole `CaptureRecord` as JSON. A record written again under
    the same request id replaces the earlier one.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(path)
        self._db: sqlite3.Connection | None = None

    async def write_many(self, records: Sequence[CaptureRecord], /) -> None:
        if not records:
            return
        rows = [
            (
                r.request_id,
                r.started_at,
                r.key_id,
                r.api,
                r.endpoint,
                r.model,
                r.method,
                r.path,
                r.status,
                r.outcome,
                r.duration,
                _encoder.encode(r).decode("utf-8"),
                r.client_request_id,
            )
            for r in records
        ]
        await self._run(lambda: self._insert(rows))

    def _connect(self) -> sqlite3.Connection:
        db = self._db
        if db is None:
            if not self.path.exists():
                # Create it owner-only before SQLite does, with its default permissions.
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
            db = sqlite3.connect(self.path, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=5000")
            # A table an older version created gets the columns added since, keeping its rows
            # (before the indexes, which may name them).
            sqlite_add_missing_columns(db, "captures", _SCHEMA)
            db.executescript(_SCHEMA)
            self._db = db
        return db

    def _insert(self, rows: Sequence[tuple[object, ...]]) -> None:
        db = self._connect()
        with db:
            db.execute("BEGIN")
            db.executemany(_INSERT, rows)

    def _close(self) -> None:
        db = self._db
        if db is not None:
            self._db = None
            db.close()


def sink_from_url(uri: str) -> CaptureSink:
    """A built-in sink from a URL, as the config file names them.

    ``jsonl:///var/log/llmguard/capture.jsonl`` (absolute path) or ``jsonl://capture.jsonl``
    (relative to the working directory); ``sqlite:///var/lib/llmguard/capture.db`` likewise.
    """
    scheme, sep, rest = uri.partition("://")
    if not sep or not rest:
        raise ConfigurationError(
            f"capture sink must look like 'jsonl:///path/file.jsonl' or 'sqlite:///path/file.db', "
            f"not {uri!r}"
        )
    scheme = scheme.lower()
    if scheme == "jsonl":
        return JSONLCaptureSink(rest)
    if scheme == "sqlite":
        return SQLiteCaptureSink(rest)
    raise ConfigurationError(f"unknown capture sink scheme {scheme!r}: use 'jsonl' or 'sqlite'")


def sink_from_uri(uri: str) -> CaptureSink:
    """Deprecated spelling of `sink_from_url`."""
    warnings.warn(
        "sink_from_uri is deprecated: use sink_from_url", DeprecationWarning, stacklevel=2
    )
    return sink_from_url(uri)
