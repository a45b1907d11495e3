"""`SQLiteKeyStore`: the embedded default, one table in one file, shared with the CLI.

Every call runs on one dedicated thread that owns the connection, never on the event loop. The
database is in WAL mode, so the ``asgi-llmguard keys`` commands (another process) can add and
revoke keys while gateways read; each waits up to ``busy_timeout`` for the write lock.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import sqlite3
from collections.abc import Callable, Sequence
from typing import TypeVar

from asgi_llmguard.keys.base import (
    KeyExists,
    KeyRecord,
    KeyStoreClosed,
    decode_policy,
    encode_policy,
    now,
)
from asgi_llmguard.keys.hashing import hashes_match, is_key_hash
from asgi_llmguard.lifecycle import Resource
from asgi_llmguard.policy import KeyPolicy

T = TypeVar("T")

TABLE = "virtual_keys"

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    key_hash TEXT PRIMARY KEY,
    key_id TEXT NOT NULL,
    name TEXT,
    policy TEXT NOT NULL,
    created_at REAL NOT NULL,
    revoked_at REAL
);
CREATE UNIQUE INDEX IF NOT EXISTS {TABLE}_active_id ON {TABLE} (key_id) WHERE revoked_at IS NULL;
"""


class SQLiteKeyStore(Resource):
    """Keys in the ``virtual_keys`` table of a SQLite file (created on first use).

    A `WritableKeyStore`. Put a `CachedKeyStore` in front of it in a gateway.
    """

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 10.0) -> None:
        self.path = os.fspath(path)
        self._busy_timeout = busy_timeout
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="llmguard-keys-sqlite"
        )

    # -- the KeyStore API (on the event loop) ---------------------------------------------------

    async def lookup(self, key_hash: str) -> KeyPolicy | None:
        return await self._run(self._lookup_sync, key_hash)

    async def create(self, policy: KeyPolicy, key_hash: str) -> KeyRecord:
        if not is_key_hash(key_hash):
            raise ValueError("key_hash must be a hex SHA-256 digest (see hash_key)")
        return await self._run(self._create_sync, policy, key_hash)

    async def list(self) -> Sequence[KeyRecord]:
        return await self._run(self._list_sync)

    async def revoke(self, key_id: str) -> bool:
        return await self._run(self._revoke_sync, key_id)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._close_sync)
        finally:
            self._executor.shutdown(wait=False)

    def __repr__(self) -> str:
        return f"<SQLiteKeyStore {self.path}>"

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        if self._closed:
            raise KeyStoreClosed(f"{self!r} is closed")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # -- on the store's thread ------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        conn = self._conn
        if conn is not None:
            return conn
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        # Autocommit mode: the one write that needs a transaction opens it explicitly.
        conn = sqlite3.connect(self.path, timeout=self._busy_timeout, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL").fetchone()
            conn.executescript(SCHEMA)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def _lookup_sync(self, key_hash: str) -> KeyPolicy | None:
        row = (
            self._connection()
            .execute(
                f"SELECT key_hash, policy, revoked_at FROM {TABLE} WHERE key_hash = ?",  # noqa: S608
                (key_hash,),
            )
            .fetchone()
        )
        if row is None or not hashes_match(row[0], key_hash):
            return None
        return decode_policy(row[1], revoked=row[2] is not None)

    def _create_sync(self, policy: KeyPolicy, key_hash: str) -> KeyRecord:
        conn = self._connection()
        created = now()
        try:
            conn.execute(
                f"INSERT INTO {TABLE} (key_hash, key_id, name, policy, created_at) "  # noqa: S608
                "VALUES (?, ?, ?, ?, ?)",
                (key_hash, policy.key_id, policy.name, encode_policy(policy).decode(), created),
            )
        except sqlite3.IntegrityError as exc:
            if "key_id" in str(exc):
                raise KeyExists(f"an active key with id {policy.key_id!r} already exists") from None
            raise KeyExists("this key is already stored") from None
        return KeyRecord(policy.key_id, policy.name, policy, created)

    def _list_sync(self) -> Sequence[KeyRecord]:
        rows = self._connection().execute(
            f"SELECT key_id, name, policy, created_at, revoked_at FROM {TABLE} "  # noqa: S608
            "ORDER BY created_at, key_id"
        )
        return [
            KeyRecord(
                key_id, name, decode_policy(policy, revoked=revoked is not None), created, revoked
            )
            for key_id, name, policy, created, revoked in rows
        ]

    def _revoke_sync(self, key_id: str) -> bool:
        cursor = self._connection().execute(
            f"UPDATE {TABLE} SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL",  # noqa: S608
            (now(), key_id),
        )
        return cursor.rowcount > 0

    def _close_sync(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()
