"""`PostgresSink`: one ledger shared by every replica, through asyncpg (the ``postgres`` extra).

The pool is created on the first write, and the schema and table with it (under an advisory lock,
so replicas starting together do not race on ``CREATE TABLE``); a table an older version created
gets the columns added since (``ADD COLUMN IF NOT EXISTS``, under the same lock). A batch is one
statement: the events travel as one array per column and ``INSERT ... SELECT FROM unnest(...)
ON CONFLICT (request_id, attempt) DO NOTHING`` stores each once. That is a single round trip
like ``COPY`` into a temporary table followed by an ``INSERT ... SELECT``, without the temporary
table (which poolers in transaction mode, such as PgBouncer, do not keep between statements).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from asgi_llmguard.errors import ConfigurationError
from asgi_llmguard.migrate import postgres_add_columns
from asgi_llmguard.usage.events import UsageEvent
from asgi_llmguard.usage.sinks.base import COLUMNS, event_row

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")

_DDL = """
CREATE TABLE IF NOT EXISTS {s}.usage_events (
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
    reason text,
    cache_creation_1h_tokens bigint NOT NULL DEFAULT 0,
    service_tier text,
    units double precision NOT NULL DEFAULT 0,
    unit text,
    served_api text,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    client_request_id text,
    PRIMARY KEY (request_id, attempt)
);
CREATE INDEX IF NOT EXISTS usage_events_started_at ON {s}.usage_events (started_at);
CREATE INDEX IF NOT EXISTS usage_events_key ON {s}.usage_events (key_id, started_at);
CREATE INDEX IF NOT EXISTS usage_events_model ON {s}.usage_events (model, started_at);
"""

# The array type of each column but recorded_at (the server's now()), in COLUMNS order.
_ARRAY_TYPES = (
    "text",
    "int4",
    "float8",
    "text",
    "text",
    "text",
    "text",
    "text",
    "text",
    "int4",
    "text",
    "int8",
    "int8",
    "int8",
    "int8",
    "int8",
    "int8",
    "float8",
    "float8",
    "bool",
    "bool",
    "text",
    "text",
    "text",
    "int8",
    "text",
    "float8",
    "text",
    "text",
)
_CONVERT = {"started_at": "to_timestamp(started_at)", "metadata": "metadata::jsonb"}


_TEXT_COLUMNS = [i for i, t in enumerate(_ARRAY_TYPES) if t == "text"]


def _text(value: str | None) -> str | None:
    """PostgreSQL text and jsonb cannot hold NUL: store U+FFFD rather than refuse the row."""
    if value is None or ("\x00" not in value and "\\u0000" not in value):
        return value
    return value.replace("\x00", "\ufffd").replace("\\u0000", "\\ufffd")


def quote_schema(schema: str) -> str:
    """The schema name, checked and quoted for SQL."""
    if not _IDENTIFIER.fullmatch(schema):
        raise ConfigurationError(
            f"PostgreSQL schema {schema!r} must be a plain identifier (letters, digits, _)"
        )
    return f'"{schema}"'


def _insert_sql(schema: str) -> str:
    columns = COLUMNS[:-1]
    arrays = ", ".join(f"${i}::{t}[]" for i, t in enumerate(_ARRAY_TYPES, start=1))
    select = ", ".join(_CONVERT.get(c, c) for c in columns)
    names = ", ".join(columns)
    return (
        f"INSERT INTO {schema}.usage_events ({names}) "  # noqa: S608 (checked identifier)
        f"SELECT {select} FROM unnest({arrays}) AS u({names}) "
        "ON CONFLICT (request_id, attempt) DO NOTHING"
    )


def safe_dsn(dsn: str) -> str:
    """The DSN without user or password, for names and logs."""
    parts = urlsplit(dsn)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


class PostgresSink:
    """Write events to ``<schema>.usage_events`` (created on first use).

    ``min_size``/``max_size`` size the asyncpg pool (one connection per concurrent batch is
    plenty: the pipeline's ``workers``); ``command_timeout`` bounds one statement.
    """

    def __init__(
        self,
        dsn: str,
        schema: str = "public",
        *,
        min_size: int = 1,
        max_size: int = 4,
        command_timeout: float = 30.0,
    ) -> None:
        self._schema = quote_schema(schema)
        self.schema = schema
        self.name = f"postgres:{safe_dsn(dsn)}#{schema}"
        self._dsn = dsn
        self._min_size = min_size
        self._max_size = max_size
        self._command_timeout = command_timeout
        self._insert = _insert_sql(self._schema)
        self._pool: Any = None
        self._pool_lock = asyncio.Lock()
        self._closed = False

    async def write(self, events: Sequence[UsageEvent]) -> None:
        if self._closed:
            raise RuntimeError(f"{self.name} is closed")
        if not events:
            return
        pool = self._pool if self._pool is not None else await self._create_pool()
        rows = [event_row(event, 0.0)[:-1] for event in events]
        arrays = [list(column) for column in zip(*rows, strict=True)]
        for i in _TEXT_COLUMNS:
            arrays[i] = [_text(v) for v in arrays[i]]
        async with pool.acquire() as conn:
            await conn.execute(self._insert, *arrays)

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

    async def _create_pool(self) -> Any:
        async with self._pool_lock:
            if self._pool is not None:
                return self._pool
            if self._closed:
                raise RuntimeError(f"{self.name} is closed")
            try:
                import asyncpg  # type: ignore[import-untyped]
            except ImportError:
                raise ConfigurationError(
                    "PostgresSink needs asyncpg: pip install 'asgi-llmguard[postgres]'"
                ) from None
            pool = await asyncpg.create_pool(
                self._dsn,
                min_size=self._min_size,
                max_size=self._max_size,
                command_timeout=self._command_timeout,
                server_settings={"application_name": "asgi-llmguard usage"},
            )
            try:
                async with pool.acquire() as conn, conn.transaction():
                    # Replicas starting together: one creates, the others wait and find it.
                    await conn.execute(
                        "SELECT pg_advisory_xact_lock(hashtext($1))",
                        f"asgi_llmguard.usage_events.{self.schema}",
                    )
                    await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {self._schema}")
                    ddl = _DDL.format(s=self._schema)
                    # A ledger an older version created gets the columns added since (before
                    # the indexes, which may name them).
                    present = await conn.fetch(
                        "SELECT column_name FROM information_schema.columns "
                        "WHERE table_schema = $1 AND table_name = 'usage_events'",
                        self.schema,
                    )
                    alter = postgres_add_columns(
                        f"{self._schema}.usage_events", ddl, [r[0] for r in present]
                    )
                    if present and alter is not None:
                        await conn.execute(alter)
                    await conn.execute(ddl)
            except BaseException:
                pool.terminate()
                raise
            self._pool = pool
            return pool
