"""The ledger query behind the admin API and dashboard: totals, time buckets and percentiles.

Where `usage_report` answers "what did each key spend in the last 24 hours", this answers the
dashboard's questions over an explicit time range, optionally for one key and one model: the
totals, the same sums per UTC hour or day (and per key or model), requests the gateway refused
(``rejections``: a budget said no before any attempt), failed attempts, and latency p50/p95/p99.

It reads the SQLite and PostgreSQL ledgers with the report's own column sums (`SUMS_SQL`);
PostgreSQL computes the percentiles itself (``percentile_cont``), SQLite through a small
aggregate registered on the read-only connection, which interpolates the same way. A JSON-lines
ledger has no query engine: use ``asgi-llmguard usage`` for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

from asgi_llmguard.errors import ConfigurationError
from asgi_llmguard.usage.report import COLUMN, SUMS_SQL, GroupBy, LedgerError
from asgi_llmguard.usage.sinks import parse_ledger_url
from asgi_llmguard.usage.sinks.postgres import quote_schema

Bucket = Literal["hour", "day"]
BUCKET_SECONDS: dict[str, int] = {"hour": 3600, "day": 86400}
PERCENTILES = (0.5, 0.95, 0.99)
#: A SQLite percentile keeps at most this many latencies per group (a uniform sample past it),
#: so a long range over a busy ledger cannot exhaust memory.
MAX_SAMPLES = 50_000
#: At most this many groups come back (hours x keys x models can multiply quickly).
MAX_GROUPS = 10_000

_FAILED = "('upstream_error', 'upstream_truncated')"
_EXTRA_SQL = (
    "coalesce(sum(CASE WHEN outcome = 'rejected' THEN 1 ELSE 0 END), 0), "
    f"coalesce(sum(CASE WHEN outcome IN {_FAILED} THEN 1 ELSE 0 END), 0)"
)


@dataclass(frozen=True, slots=True)
class UsageFilter:
    """Which events count: ``start <= started_at < end`` (seconds since the epoch; ``end``
    ``None`` for "until now"), and only those of ``key_id`` / ``model`` when given."""

    start: float
    end: float | None = None
    key_id: str | None = None
    model: str | None = None


@dataclass(frozen=True, slots=True)
class Summary:
    """One group of a query: ``bucket`` is the UTC start of its hour or day (``None`` without
    buckets); ``group`` holds the values of ``by`` in order. Latencies are in seconds, over the
    attempts that reached an upstream (``None`` when there were none)."""

    bucket: float | None
    group: tuple[str | None, ...]
    requests: int
    attempts: int
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int
    cost_nanos: int
    rejections: int
    errors: int
    p50: float | None
    p95: float | None
    p99: float | None

    def as_dict(self, by: Sequence[GroupBy]) -> dict[str, Any]:
        out: dict[str, Any] = {} if self.bucket is None else {"bucket": self.bucket}
        out.update(zip(by, self.group, strict=True))
        for name in _NUMBERS:
            out[name] = getattr(self, name)
        out["total_tokens"] = self.input_tokens + self.output_tokens
        out["latency"] = {"p50": self.p50, "p95": self.p95, "p99": self.p99}
        return out


_NUMBERS = (
    "requests",
    "attempts",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "cost_nanos",
    "rejections",
    "errors",
)


def interpolate(values: list[float], q: float) -> float:
    """The ``q`` quantile of sorted ``values``, interpolated as PostgreSQL's percentile_cont."""
    position = q * (len(values) - 1)
    low = math.floor(position)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (position - low)


class _Percentiles:
    """SQLite aggregate: ``"p50 p95 p99"`` of its non-NULL inputs (reservoir past the cap)."""

    def __init__(self) -> None:
        self.values: list[float] = []
        self.seen = 0
        self.random = random.Random(0)  # sampling, not security

    def step(self, value: float | None) -> None:
        if value is None:
            return
        self.seen += 1
        if len(self.values) < MAX_SAMPLES:
            self.values.append(float(value))
        else:
            slot = self.random.randrange(self.seen)
            if slot < MAX_SAMPLES:
                self.values[slot] = float(value)

    def finalize(self) -> str | None:
        if not self.values:
            return None
        values = sorted(self.values)
        return " ".join(repr(interpolate(values, q)) for q in PERCENTILES)


def _sql(
    by: Sequence[GroupBy],
    bucket: Bucket | None,
    table: str,
    filt: UsageFilter,
    *,
    postgres: bool,
) -> tuple[str, list[Any]]:
    params: list[Any] = []

    def param(value: Any) -> str:
        params.append(value)
        return f"${len(params)}" if postgres else "?"

    epoch = "extract(epoch FROM started_at)" if postgres else "started_at"

    def at(value: float) -> str:
        return f"to_timestamp({param(value)})" if postgres else param(value)

    where = [f"started_at >= {at(filt.start)}"]
    if filt.end is not None:
        where.append(f"started_at < {at(filt.end)}")
    if filt.key_id is not None:
        where.append(f"key_id = {param(filt.key_id)}")
    if filt.model is not None:
        where.append(f"model = {param(filt.model)}")
    groups = [COLUMN[name] for name in by]
    if bucket is not None:
        size = BUCKET_SECONDS[bucket]
        groups.insert(
            0,
            f"floor({epoch} / {size}) * {size}"
            if postgres
            else f"CAST(started_at / {size} AS INTEGER) * {size}",
        )
    served = "CASE WHEN outcome <> 'rejected' THEN latency END"
    if postgres:
        pct = (
            "percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY latency) "
            "FILTER (WHERE outcome <> 'rejected')"
        )
    else:
        pct = f"llmguard_percentiles({served})"
    head = ", ".join(groups)
    sql = (
        f"SELECT {head + ', ' if head else ''}{SUMS_SQL}, {_EXTRA_SQL}, {pct} "  # noqa: S608
        f"FROM {table} WHERE {' AND '.join(where)}"
    )
    if groups:
        positions = ", ".join(str(i + 1) for i in range(len(groups)))
        sql += f" GROUP BY {positions} ORDER BY {positions}"
    return sql + f" LIMIT {MAX_GROUPS}", params


def _summary(values: Sequence[Any], n_groups: int, bucketed: bool) -> Summary:
    values = list(values)
    bucket = float(values.pop(0)) if bucketed else None
    group = tuple(None if v is None else str(v) for v in values[:n_groups])
    numbers = [int(v) for v in values[n_groups : n_groups + len(_NUMBERS)]]
    pct = values[n_groups + len(_NUMBERS)]
    latency: list[float | None] = [None, None, None]
    if isinstance(pct, str):
        latency = [float(v) for v in pct.split()]
    elif pct is not None and all(v is not None for v in pct):
        latency = [float(v) for v in pct]
    counts = dict(zip(_NUMBERS, numbers, strict=True))
    return Summary(bucket, group, **counts, p50=latency[0], p95=latency[1], p99=latency[2])


async def query_usage(
    source: str,
    filt: UsageFilter,
    *,
    by: Sequence[GroupBy] = (),
    bucket: Bucket | None = None,
) -> list[Summary]:
    """Sum the ledger at ``source`` (``sqlite:///...`` or ``postgresql://...``) over ``filt``,
    grouped by time ``bucket`` (oldest first) and ``by``. Without either: one total row (with
    zero counts when nothing matched)."""
    for name in by:
        if name not in COLUMN:
            raise ValueError(f"cannot group by {name!r}")
    if bucket is not None and bucket not in BUCKET_SECONDS:
        raise ValueError(f"bucket must be 'hour' or 'day', not {bucket!r}")
    ledger = parse_ledger_url(source)
    if ledger.kind == "sqlite":
        sql, params = _sql(by, bucket, "usage_events", filt, postgres=False)
        records = await asyncio.to_thread(_sqlite_fetch, ledger.target, sql, params)
    elif ledger.kind == "postgres":
        table = f"{quote_schema(ledger.schema)}.usage_events"
        sql, params = _sql(by, bucket, table, filt, postgres=True)
        records = await _postgres_fetch(ledger.target, ledger.schema, sql, params)
    else:
        raise LedgerError("the usage query reads SQLite or PostgreSQL ledgers, not JSON lines")
    return [_summary(r, len(by), bucket is not None) for r in records]


async def top_keys(source: str, filt: UsageFilter, limit: int = 10) -> list[Summary]:
    """The ``limit`` keys that spent the most in ``filt``'s range, highest first."""
    rows = await query_usage(source, filt, by=("key",))
    rows.sort(key=lambda r: (-r.cost_nanos, -r.requests, r.group[0] or ""))
    return rows[:limit]


def _sqlite_fetch(path: str, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
    if not os.path.isfile(path):
        raise LedgerError(f"no SQLite ledger at {path!r}")
    uri = f"file:{quote(os.path.abspath(path))}?mode=ro"
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
            conn.create_aggregate("llmguard_percentiles", 1, _Percentiles)  # type: ignore[arg-type]
            return list(conn.execute(sql, params))
    except sqlite3.OperationalError as exc:
        raise LedgerError(f"cannot read the usage ledger {path!r}: {exc}") from None


async def _postgres_fetch(
    dsn: str, schema: str, sql: str, params: list[Any]
) -> list[tuple[Any, ...]]:
    try:
        import asyncpg  # type: ignore[import-untyped]
    except ImportError:
        raise ConfigurationError(
            "reading PostgreSQL needs asyncpg: pip install 'asgi-llmguard[postgres]'"
        ) from None
    conn = await asyncpg.connect(dsn)
    try:
        records = await conn.fetch(sql, *params)
    except asyncpg.UndefinedTableError:
        raise LedgerError(f"no usage_events table in schema {schema!r}") from None
    finally:
        await conn.close()
    return [tuple(record.values()) for record in records]
