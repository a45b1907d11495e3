"""The usage report over the three ledgers, from a known set of events."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest

from asgi_llmguard.usage.events import UsageEvent
from asgi_llmguard.usage.report import (
    Row,
    add_usage_parser,
    format_report,
    parse_by,
    parse_since,
    usage_report,
)
from asgi_llmguard.usage.sinks import JSONLSink, PostgresSink, SQLiteSink
from asgi_llmguard.usage.sinks.jsonl import encode_lines
from tests.conftest import require_service

# Marked here, not only by the conftest: anyio loses the parameters of async tests that are
# marked after collection.
pytestmark = pytest.mark.anyio

PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"
NOW = 1_800_000_000.0
HOUR = 3600.0


def ev(rid, *, attempt=0, key="key-a", model="gpt-4o", age=HOUR, cost=0, **fields):
    return UsageEvent(
        request_id=rid,
        attempt=attempt,
        started_at=NOW - age,
        key_id=key,
        model=model,
        provider=fields.pop("provider", "openai"),
        endpoint=fields.pop("endpoint", "chat.completions"),
        cost_nanos=cost,
        **fields,
    )


EVENTS = [
    # key-a / gpt-4o: request r1 retried (two attempts), and r2
    ev("r1", attempt=0, input_tokens=100, output_tokens=0, cost=0, credential_id="c1"),
    ev("r1", attempt=1, input_tokens=100, output_tokens=50, cost=1_250_000, credential_id="c2"),
    ev("r2", input_tokens=10, output_tokens=5, cached_input_tokens=4, cost=75_000),
    # key-a / claude
    ev("r3", model="claude", provider="anthropic", endpoint="messages", input_tokens=7,
       output_tokens=3, cached_input_tokens=2, cost=123_456_789),
    # key-b / gpt-4o, one of them two days old
    ev("r4", key="key-b", input_tokens=1, output_tokens=1, cost=1),
    ev("r5", key="key-b", input_tokens=2, output_tokens=2, cost=2, age=48 * HOUR),
    # no key (a rejected request), eight days old
    ev("r6", key=None, outcome="rejected", age=8 * 24 * HOUR, cost=0),
]  # fmt: skip

EXPECTED_DAY = [
    Row(("key-a", "claude"), 1, 1, 7, 3, 2, 123_456_789),
    Row(("key-a", "gpt-4o"), 2, 3, 210, 55, 4, 1_325_000),
    Row(("key-b", "gpt-4o"), 1, 1, 1, 1, 0, 1),
]


@pytest.fixture
async def sqlite_ledger(tmp_path):
    path = tmp_path / "usage.sqlite3"
    sink = SQLiteSink(path)
    await sink.write(EVENTS)
    await sink.aclose()
    return f"sqlite:///{path}"


@pytest.fixture
async def jsonl_ledger(tmp_path):
    path = tmp_path / "usage.jsonl"
    sink = JSONLSink(path)
    await sink.write(EVENTS)
    await sink.aclose()
    # A replay after a crash repeated some lines: the report must not count them twice.
    with path.open("ab") as f:
        f.write(encode_lines(EVENTS[1:4]) + b"not json\n")
    return f"jsonl:///{path}"


@pytest.fixture
async def postgres_ledger():
    require_service("PostgreSQL", "127.0.0.1", 5432)
    import asyncpg

    schema = f"llmguard_test_{uuid.uuid4().hex[:12]}"
    sink = PostgresSink(PG_DSN, schema=schema)
    await sink.write(EVENTS)
    await sink.aclose()
    yield f"{PG_DSN}?schema={schema}"
    conn = await asyncpg.connect(PG_DSN)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", "jsonl", "postgres"])
def ledger(request):
    return request.getfixturevalue(f"{request.param}_ledger")


async def test_grouped_by_key_and_model(ledger):
    rows = await usage_report(ledger, timedelta(hours=24), ["key", "model"], now=NOW)
    assert rows == EXPECTED_DAY  # ordered by spend
    assert rows[0].cost_usd == Decimal("0.123456789")


async def test_since_filters_by_start_time(ledger):
    week = await usage_report(ledger, timedelta(days=7), ["key"], now=NOW)
    assert [(r.group, r.requests, r.cost_nanos) for r in week] == [
        (("key-a",), 3, 124_781_789),
        (("key-b",), 2, 3),
    ]
    month = await usage_report(ledger, parse_since("30d"), ["key"], now=NOW)
    assert [(r.group, r.requests) for r in month] == [
        (("key-a",), 3),
        (("key-b",), 2),
        ((None,), 1),
    ]
    assert await usage_report(ledger, timedelta(minutes=30), ["key"], now=NOW) == []


async def test_totals_and_other_groupings(ledger):
    [total] = await usage_report(ledger, timedelta(days=7), [], now=NOW)
    assert total == Row((), 5, 6, 220, 61, 6, 124_781_792)
    by_credential = await usage_report(ledger, timedelta(days=1), ["credential"], now=NOW)
    assert {r.group: (r.requests, r.attempts) for r in by_credential} == {
        ("c2",): (1, 1),
        (None,): (3, 3),
        ("c1",): (1, 1),
    }
    by_api = await usage_report(ledger, timedelta(days=1), ["provider", "endpoint"], now=NOW)
    assert [r.group for r in by_api] == [
        ("anthropic", "messages"),
        ("openai", "chat.completions"),
    ]


def test_format_report_table():
    text = format_report(EXPECTED_DAY, ["key", "model"])
    lines = text.splitlines()
    assert lines[0].split() == [
        "key",
        "model",
        "requests",
        "attempts",
        "input_tokens",
        "output_tokens",
        "cached_tokens",
        "spend_usd",
    ]
    assert lines[2].split() == ["key-a", "claude", "1", "1", "7", "3", "2", "$0.123457"]
    assert lines[3].split() == ["key-a", "gpt-4o", "2", "3", "210", "55", "4", "$0.001325"]
    assert lines[-1].split() == ["TOTAL", "4", "5", "218", "59", "6", "$0.124782"]
    totals_only = format_report([Row((), 1, 1, 1_000_000, 0, 0, 5 * 10**9)], [])
    assert totals_only.splitlines()[-1].split() == [
        "TOTAL",
        "1",
        "1",
        "1,000,000",
        "0",
        "0",
        "$5.000000",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("24h", timedelta(hours=24)),
        ("7d", timedelta(days=7)),
        ("30m", timedelta(minutes=30)),
        ("90s", timedelta(seconds=90)),
        ("2w", timedelta(weeks=2)),
        ("1h30m", timedelta(minutes=90)),
        ("1.5h", timedelta(minutes=90)),
    ],
)
def test_parse_since(text, expected):
    assert parse_since(text) == expected


@pytest.mark.parametrize("text", ["", "24", "h", "1y", "-1h", "0h", "24h garbage"])
def test_parse_since_refuses(text):
    with pytest.raises(ValueError, match="duration"):
        parse_since(text)


def test_parse_by():
    assert parse_by("key,model") == ["key", "model"]
    assert parse_by(" Model , key,model") == ["model", "key"]
    assert parse_by("none") == []
    with pytest.raises(ValueError, match="team"):
        parse_by("key,team")


def _cli():
    parser = argparse.ArgumentParser(prog="asgi-llmguard")
    add_usage_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_usage_command(tmp_path, capsys):
    path = tmp_path / "usage.sqlite3"
    shift = time.time() - NOW  # the CLI reports relative to the real clock
    moved = [UsageEvent(**{**_fields(e), "started_at": e.started_at + shift}) for e in EVENTS]

    async def write():
        sink = SQLiteSink(path)
        await sink.write(moved)
        await sink.aclose()

    asyncio.run(write())
    args = _cli().parse_args(["usage", "--since", "24h", "--by", "key,model", "--db", str(path)])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "key-a  claude" in out
    assert "$0.124782" in out
    args = _cli().parse_args(
        ["usage", "--since", "7d", "--by", "model", "--db", f"sqlite:///{path}", "--format", "json"]
    )
    assert args.func(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert data[0] == {
        "model": "claude",
        "requests": 1,
        "attempts": 1,
        "input_tokens": 7,
        "output_tokens": 3,
        "cached_input_tokens": 2,
        "cost_nanos": 123_456_789,
        "cost_usd": "0.123456789",
    }


def test_cli_errors(tmp_path, capsys):
    args = _cli().parse_args(["usage", "--db", str(tmp_path / "missing.sqlite3")])
    assert args.func(args) == 2
    assert "no SQLite ledger" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _cli().parse_args(["usage", "--by", "team"])


def _fields(event: UsageEvent) -> dict:
    return {f: getattr(event, f) for f in event.__struct_fields__}
