"""The usage report: spend and tokens per key, model, provider, endpoint or credential.

Reads the ledger a sink wrote: a SQLite file, a PostgreSQL table or a JSON-lines file (or a spill
directory of them), never writing to it. JSON lines are deduplicated by ``(request_id, attempt)``
because a replay can repeat a line there (see `JSONLSink`); the database ledgers hold each event
once by construction.

``asgi-llmguard usage --since 24h --by key,model --db sqlite:///llmguard.sqlite3``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import sqlite3
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, cast, get_args
from urllib.parse import quote

import msgspec

from asgi_llmguard.errors import ConfigurationError
from asgi_llmguard.usage.events import UsageEvent
from asgi_llmguard.usage.sinks import parse_ledger_url
from asgi_llmguard.usage.sinks.jsonl import read_chunk
from asgi_llmguard.usage.sinks.postgres import quote_schema

GroupBy = Literal["key", "model", "provider", "endpoint", "credential"]
GROUP_BY: tuple[GroupBy, ...] = get_args(GroupBy)
DEFAULT_LEDGER = "sqlite:///llmguard.sqlite3"

#: The ledger column each group reads.
COLUMN = _COLUMN = {
    "key": "key_id",
    "model": "model",
    "provider": "provider",
    "endpoint": "endpoint",
    "credential": "credential_id",
}
_SINCE = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_NANOS = Decimal(10) ** 9


class LedgerError(Exception):
    """The ledger cannot be read (missing file, no ``usage_events`` table...)."""


@dataclass(frozen=True, slots=True)
class Row:
    """One group of the report; ``group`` holds its values in the order of ``by``."""

    group: tuple[str | None, ...]
    #: Distinct request ids, and records (one per upstream attempt).
    requests: int
    attempts: int
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int
    cost_nanos: int

    @property
    def cost_usd(self) -> Decimal:
        """The exact spend in dollars."""
        return Decimal(self.cost_nanos) / _NANOS


def parse_since(text: str) -> timedelta:
    """``"30m"``, ``"24h"``, ``"7d"``, ``"2w"``, ``"90s"`` or a sum like ``"1h30m"``."""
    compact = text.strip().lower().replace(" ", "")
    if not compact or _SINCE.sub("", compact):
        raise ValueError(f"invalid duration {text!r}: use a number and s, m, h, d or w (24h, 7d)")
    seconds = sum(float(n) * _UNIT[unit] for n, unit in _SINCE.findall(compact))
    if seconds <= 0:
        raise ValueError(f"duration {text!r} must be positive")
    return timedelta(seconds=seconds)


def parse_by(text: str) -> list[GroupBy]:
    """``"key,model"`` → ``["key", "model"]``; ``""`` or ``"none"``: totals only."""
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    if names == ["none"]:
        return []
    bad = [n for n in names if n not in _COLUMN]
    if bad:
        raise ValueError(f"cannot group by {', '.join(bad)}: choose from {', '.join(GROUP_BY)}")
    return list(dict.fromkeys(cast(list[GroupBy], names)))


async def usage_report(
    source_dsn_or_path: str,
    since: timedelta,
    by: Sequence[GroupBy],
    *,
    now: float | None = None,
) -> list[Row]:
    """Sum the ledger's events that started within ``since`` of ``now``, grouped ``by``.

    ``source_dsn_or_path``: ``sqlite:///path``, ``postgresql://...[?schema=name]``,
    ``jsonl:///path`` (a file, or a directory of ``*.jsonl`` such as the spill directory) or a
    bare path. Rows come by spend, highest first.
    """
    for name in by:
        if name not in _COLUMN:
            raise ValueError(f"cannot group by {name!r}: choose from {', '.join(GROUP_BY)}")
    cutoff = (time.time() if now is None else now) - since.total_seconds()
    ledger = parse_ledger_url(source_dsn_or_path)
    if ledger.kind == "sqlite":
        rows = await asyncio.to_thread(_sqlite_rows, ledger.target, cutoff, by)
    elif ledger.kind == "jsonl":
        rows = await asyncio.to_thread(_jsonl_rows, ledger.target, cutoff, by)
    else:
        rows = await _postgres_rows(ledger.target, ledger.schema, cutoff, by)
    return sorted(
        (row for row in rows if row.attempts),
        key=lambda r: (-r.cost_nanos, -r.attempts, tuple(v or "" for v in r.group)),
    )


#: The sums of a `Row` (requests, attempts, tokens, cost), shared with `usage.query`.
SUMS_SQL = (
    "count(DISTINCT request_id), count(*), "
    "coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0), "
    "coalesce(sum(cached_input_tokens), 0), coalesce(sum(cost_nanos), 0)"
)


def _select(by: Sequence[GroupBy], table: str, time_filter: str) -> str:
    groups = ", ".join(_COLUMN[name] for name in by)
    sql = (
        f"SELECT {groups + ', ' if groups else ''}{SUMS_SQL} "  # noqa: S608
        f"FROM {table} WHERE {time_filter}"
    )
    return f"{sql} GROUP BY {groups}" if groups else sql


def _row(values: Sequence[Any], n_groups: int) -> Row:
    group = tuple(None if v is None else str(v) for v in values[:n_groups])
    numbers = [int(v) for v in values[n_groups:]]
    return Row(group, *numbers)


def _sqlite_rows(path: str, cutoff: float, by: Sequence[GroupBy]) -> list[Row]:
    if not os.path.isfile(path):
        raise LedgerError(f"no SQLite ledger at {path!r}")
    uri = f"file:{quote(os.path.abspath(path))}?mode=ro"
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
            cursor = conn.execute(_select(by, "usage_events", "started_at >= ?"), (cutoff,))
            return [_row(values, len(by)) for values in cursor]
    except sqlite3.OperationalError as exc:
        raise LedgerError(f"cannot read the usage ledger {path!r}: {exc}") from None


def _jsonl_files(path: str) -> list[Path]:
    target = Path(path)
    if target.is_dir():
        return sorted(target.glob("*.jsonl"))
    if not target.is_file():
        raise LedgerError(f"no JSON-lines ledger at {path!r}")
    return [target]


def _jsonl_events(path: str) -> Iterable[UsageEvent]:
    """Every event in the file(s), each ``(request_id, attempt)`` once (the first line wins)."""
    seen: set[tuple[str, int]] = set()
    for file in _jsonl_files(path):
        with file.open("rb") as f:
            while True:
                events, _, eof = read_chunk(f)
                if eof:
                    break
                for event in events:
                    key = (event.request_id, event.attempt)
                    if key not in seen:
                        seen.add(key)
                        yield event


def _jsonl_rows(path: str, cutoff: float, by: Sequence[GroupBy]) -> list[Row]:
    columns = [_COLUMN[name] for name in by]
    sums: dict[tuple[str | None, ...], list[int]] = {}
    requests: dict[tuple[str | None, ...], set[str]] = {}
    for event in _jsonl_events(path):
        if event.started_at < cutoff:
            continue
        group = tuple(getattr(event, column) for column in columns)
        acc = sums.setdefault(group, [0, 0, 0, 0, 0])
        acc[0] += 1
        acc[1] += event.input_tokens
        acc[2] += event.output_tokens
        acc[3] += event.cached_input_tokens
        acc[4] += event.cost_nanos
        requests.setdefault(group, set()).add(event.request_id)
    return [Row(group, len(requests[group]), *acc) for group, acc in sums.items()]


async def _postgres_rows(dsn: str, schema: str, cutoff: float, by: Sequence[GroupBy]) -> list[Row]:
    try:
        import asyncpg  # type: ignore[import-untyped]
    except ImportError:
        raise ConfigurationError(
            "reading PostgreSQL needs asyncpg: pip install 'asgi-llmguard[postgres]'"
        ) from None
    table = f"{quote_schema(schema)}.usage_events"
    conn = await asyncpg.connect(dsn)
    try:
        records = await conn.fetch(_select(by, table, "started_at >= to_timestamp($1)"), cutoff)
    except asyncpg.UndefinedTableError:
        raise LedgerError(f"no usage_events table in schema {schema!r}") from None
    finally:
        await conn.close()
    return [_row(list(record.values()), len(by)) for record in records]


# -- output ----------------------------------------------------------------------------------------


_COUNTS = ("requests", "attempts", "input_tokens", "output_tokens", "cached_input_tokens")
_FIELDS = (*_COUNTS, "cost_nanos")


def _usd(nanos: int) -> str:
    return f"${Decimal(nanos) / _NANOS:,.6f}"


def format_report(rows: Sequence[Row], by: Sequence[GroupBy]) -> str:
    """A text table of the rows and their total (``requests``: distinct request ids)."""
    n_text = max(len(by), 1)
    header: list[str] = [*by] if by else [""]
    header += ["requests", "attempts", "input_tokens", "output_tokens"]
    header += ["cached_tokens", "spend_usd"]
    body = [_cells(["-" if v is None else v for v in row.group], row) for row in rows] if by else []
    total = Row((), *(sum(getattr(row, f) for row in rows) for f in _FIELDS))
    footer = _cells(["TOTAL", *[""] * (n_text - 1)], total)
    table = [header, *body, footer]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    rule = "  ".join("-" * w for w in widths)

    def render(line: list[str]) -> str:
        cells = (
            cell.ljust(width) if i < n_text else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        )
        return "  ".join(cells).rstrip()

    lines = [render(header), rule, *map(render, body)]
    if body:
        lines.append(rule)
    lines.append(render(footer))
    return "\n".join(lines)


def _cells(group: list[str], row: Row) -> list[str]:
    numbers = (f"{getattr(row, f):,}" for f in _COUNTS)
    return [*group, *numbers, _usd(row.cost_nanos)]


def report_json(rows: Sequence[Row], by: Sequence[GroupBy]) -> bytes:
    return msgspec.json.encode(
        [
            {
                **dict(zip(by, row.group, strict=True)),
                **{f: getattr(row, f) for f in _FIELDS},
                "cost_usd": str(row.cost_usd),
            }
            for row in rows
        ]
    )


# -- CLI -------------------------------------------------------------------------------------------


def _since_arg(text: str) -> timedelta:
    try:
        return parse_since(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _by_arg(text: str) -> list[GroupBy]:
    try:
        return parse_by(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_usage_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Add ``usage`` to the CLI's subcommands; it runs `run_usage`."""
    parser = subparsers.add_parser("usage", help="spend and tokens from the usage ledger")
    parser.add_argument(
        "--since", type=_since_arg, default="24h", help="time window: 30m, 24h, 7d (default 24h)"
    )
    parser.add_argument(
        "--by",
        type=_by_arg,
        default="key,model",
        help=f"comma-separated groups among {','.join(GROUP_BY)}, or none (default key,model)",
    )
    parser.add_argument(
        "--db",
        default=DEFAULT_LEDGER,
        help=f"sqlite:///path, postgresql://...[?schema=name] or jsonl:///path "
        f"(default {DEFAULT_LEDGER})",
    )
    parser.add_argument("--format", choices=("table", "json"), default="table")
    parser.set_defaults(func=run_usage)
    return parser


def run_usage(args: argparse.Namespace) -> int:
    try:
        rows = asyncio.run(usage_report(args.db, args.since, args.by))
    except (LedgerError, ConfigurationError, ValueError) as exc:
        print(f"asgi-llmguard usage: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # the database's own errors: connection refused, permissions...
        print(f"asgi-llmguard usage: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if args.format == "json":
        sys.stdout.write(report_json(rows, args.by).decode() + "\n")
    else:
        print(format_report(rows, args.by))
    return 0
