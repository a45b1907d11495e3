"""`PostgresKeyStore`: keys shared by every replica, through asyncpg (the ``postgres`` extra).

Same table as `SQLiteKeyStore` (``virtual_keys``), in a schema of your choice. The pool is
created on first use, and the schema and table with it, under an advisory lock so replicas
starting together do not race on ``CREATE TABLE``.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from asgi_llmguard.errors import ConfigurationError
from asgi_llmguard.keys.base import (
    KeyExists,
    KeyRecord,
    KeyStoreClosed,
    decode_policy,
    encode_policy,
)
from asgi_llmguard.keys.hashing import hashes_match, is_key_hash
from asgi_llmguard.keys.sqlite import TABLE
from asgi_llmguard.lifecycle import Resource
from asgi_llmguard.policy import KeyPolicy

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")

_DDL = """
CREATE TABLE IF NOT EXISTS {s}.{t} (
    key_hash text PRIMARY KEY,
    key_id text NOT NULL,
    name text,
    policy jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);
CREATE UNIQUE INDEX IF NOT EXISTS {t}_active_id ON {s}.{t} (key_id) WHERE revoked_at IS NULL;
"""

_EPOCH = "extract(epoch from {c})::float8"


def _safe_dsn(dsn: str) -> str:
    """The DSN without user or password, for names and logs."""
    parts = urlsplit(dsn)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


class PostgresKeyStore(Resource):
    """Keys in ``<schema>.virtual_keys`` (created on first use). A `WritableKeyStore`.

    ``min_size``/``max_size`` size the asyncpg pool; ``command_timeout`` bounds one statement.
    Put a `CachedKeyStore` in front of it in a gateway.
    """

    def __init__(
        self,
        dsn: str,
        schema: str = "public",
        *,
        min_size: int = 1,
        max_size: int = 4,
        command_timeout: float = 10.0,
    ) -> None:
        if not _IDENTIFIER.fullmatch(schema):
            raise ConfigurationError(
                f"PostgreSQL schema {schema!r} must be a plain identifier (letters, digits, _)"
            )
        self.schema = schema
        self.name = f"postgres:{_safe_dsn(dsn)}#{schema}"
        self._dsn = dsn
        self._min_size = min_size
        self._max_size = max_size
        self._command_timeout = command_timeout
        table = f'"{schema}".{TABLE}'
        self._table = table
        self._sql_lookup = (
            "SELECT key_hash, policy::text, revoked_at IS NOT NULL "  # noqa: S608
            f"FROM {table} WHERE key_hash = $1"
        )
        self._sql_create = (
            f"INSERT INTO {table} (key_hash, key_id, name, policy) "  # noqa: S608
            f"VALUES ($1, $2, $3, $4::jsonb) RETURNING {_EPOCH.format(c='created_at')}"
        )
        self._sql_list = (
            f"SELECT key_id, name, policy::text, {_EPOCH.format(c='created_at')}, "  # noqa: S608
            f"{_EPOCH.format(c='revoked_at')} FROM {table} ORDER BY created_at, key_id"
        )
        self._sql_revoke = (
            f"UPDATE {table} SET revoked_at = now() "  # noqa: S608
            "WHERE key_id = $1 AND revoked_at IS NULL"
        )
        self._pool: Any = None
        self._pool_lock = asyncio.Lock()
        self._closed = False

    async def lookup(self, key_hash: str) -> KeyPolicy | None:
        pool = self._pool if self._pool is not None else await self._create_pool()
        row = await pool.fetchrow(self._sql_lookup, key_hash)
        if row is None or not hashes_match(row[0], key_hash):
            return None
        return decode_policy(row[1], revoked=row[2])

    async def create(self, policy: KeyPolicy, key_hash: str) -> KeyRecord:
        if not is_key_hash(key_hash):
            raise ValueError("key_hash must be a hex SHA-256 digest (see hash_key)")
        pool = self._pool if self._pool is not None else await self._create_pool()
        import asyncpg  # type: ignore[import-untyped]  # importable: the pool exists

        try:
            created = await pool.fetchval(
                self._sql_create,
                key_hash,
                policy.key_id,
                policy.name,
                encode_policy(policy).decode(),
            )
        except asyncpg.UniqueViolationError as exc:
            if exc.constraint_name == f"{TABLE}_active_id":
                raise KeyExists(f"an active key with id {policy.key_id!r} already exists") from None
            raise KeyExists("this key is already stored") from None
        return KeyRecord(policy.key_id, policy.name, policy, float(created))

    async def list(self) -> Sequence[KeyRecord]:
        pool = self._pool if self._pool is not None else await self._create_pool()
        rows = await pool.fetch(self._sql_list)
        return [
            KeyRecord(
                key_id, name, decode_policy(policy, revoked=revoked is not None), created, revoked
            )
            for key_id, name, policy, created, revoked in rows
        ]

    async def revoke(self, key_id: str) -> bool:
        pool = self._pool if self._pool is not None else await self._create_pool()
        status: str = await pool.execute(self._sql_revoke, key_id)
        return status != "UPDATE 0"

    async def aclose(self) -> None:
        self._closed = True
        async with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), 10)
            except TimeoutError:
                pool.terminate()
            except asyncio.CancelledError:
                pool.terminate()
                raise

    def __repr__(self) -> str:
        return f"<PostgresKeyStore {self.name}>"

    async def _create_pool(self) -> Any:
        async with self._pool_lock:
            if self._pool is not None:
                return self._pool
            if self._closed:
                raise KeyStoreClosed(f"{self!r} is closed")
            try:
                import asyncpg
            except ImportError:
                raise ConfigurationError(
                    "PostgresKeyStore needs asyncpg: pip install 'asgi-llmguard[postgres]'"
                ) from None
            pool = await asyncpg.create_pool(
                self._dsn,
                min_size=self._min_size,
                max_size=self._max_size,
                command_timeout=self._command_timeout,
                server_settings={"application_name": "asgi-llmguard keys"},
            )
            try:
                async with pool.acquire() as conn, conn.transaction():
                    await conn.execute(
                        "SELECT pg_advisory_xact_lock(hashtext($1))",
                        f"asgi_llmguard.{TABLE}.{self.schema}",
                    )
                    await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
                    await conn.execute(_DDL.format(s=f'"{self.schema}"', t=TABLE))
            except BaseException:
                pool.terminate()
                raise
            self._pool = pool
            return pool
