"""``asgi-llmguard budgets | ratelimit | cooldowns | usage query``: the admin API from a shell.

These commands talk to a running gateway's admin API, never to the stores directly: in-memory
budgets, rate-limit buckets and cooldowns live only inside the server process, and going through
the API gives the same answer for shared (Redis, PostgreSQL) state too, with the same checks.

The API's URL is ``--url``, else ``$LLMGUARD_ADMIN_URL``, else ``http://127.0.0.1:8080/admin``.
The admin key is read from ``$LLMGUARD_ADMIN_KEY`` only (a command-line argument would show in
the process list). ``--json`` prints the API's answer as is.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any
from urllib.parse import quote

import httpx
import orjson

ENV_URL = "LLMGUARD_ADMIN_URL"
ENV_KEY = "LLMGUARD_ADMIN_KEY"
DEFAULT_URL = "http://127.0.0.1:8080/admin"


class _Failed(Exception):
    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def _call(
    args: argparse.Namespace,
    method: str,
    path: str,
    *,
    params: list[tuple[str, str]] | None = None,
    body: dict[str, Any] | None = None,
) -> Any:
    key = os.environ.get(ENV_KEY)
    if not key:
        raise _Failed(f"set {ENV_KEY} to the admin key", 2)
    query: list[tuple[str, str | int | float | bool | None]] = list(params or [])
    base = (args.url or os.environ.get(ENV_URL) or DEFAULT_URL).rstrip("/")
    try:
        response = httpx.request(
            method,
            base + path,
            params=query,
            content=orjson.dumps(body) if body is not None else None,
            headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
            timeout=args.timeout,
            trust_env=False,
        )
    except httpx.HTTPError as exc:
        raise _Failed(f"cannot reach the admin API at {base}: {type(exc).__name__}") from None
    try:
        data = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        raise _Failed(f"{base}{path}: HTTP {response.status_code}, not a JSON answer") from None
    if response.status_code >= 400:
        error = data.get("error", {}) if isinstance(data, dict) else {}
        raise _Failed(f"HTTP {response.status_code}: {error.get('message', data)}")
    return data


def _segment(value: str) -> str:
    return quote(value, safe="")


def _usd(value: float) -> str:
    return f"${value:,.6f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    table = [header, *rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in table
    )


def _budgets(args: argparse.Namespace) -> str | Any:
    path = f"/budgets/{_segment(args.key_id)}"
    if args.action == "reset":
        data = _call(args, "POST", path + "/reset")
        return data if args.json else f"reset the budget of {args.key_id}"
    data = _call(args, "GET", path)
    if args.json:
        return data
    if not data["periods"]:
        return f"{args.key_id}: no budget"
    rows = [
        [
            name,
            _usd(p["limit_usd"]),
            _usd(p["spent_usd"]),
            _usd(p["reserved_usd"]),
            _usd(p["remaining_usd"]),
            p["window"],
        ]
        for name, p in data["periods"].items()
    ]
    return _table(["PERIOD", "LIMIT", "SPENT", "RESERVED", "REMAINING", "WINDOW"], rows)


def _ratelimit(args: argparse.Namespace) -> str | Any:
    path = f"/ratelimits/{_segment(args.key_id)}"
    models = args.model or []
    if args.action == "reset":
        data = _call(args, "POST", path + "/reset", body={"models": models})
        return data if args.json else f"reset {data['reset']} rate-limit buckets of {args.key_id}"
    data = _call(args, "GET", path, params=[("model", m) for m in models])
    if args.json:
        return data
    rows = [
        [
            b["limit"],
            b["kind"],
            b["per"],
            b["model"] or "-",
            str(b["remaining"]),
            f"{b['reset_after']:g}s",
            "yes" if b["allowed"] else "no",
        ]
        for b in data["buckets"]
    ]
    header = ["LIMIT", "KIND", "PER", "MODEL", "REMAINING", "FULL IN", "ALLOWED"]
    return _table(header, rows) if rows else f"{args.key_id}: no rate limits"


def _cooldowns(args: argparse.Namespace) -> str | Any:
    if args.action == "reset":
        body = {"credential_id": args.credential, "model": args.model, "upstream": args.upstream}
        data = _call(args, "POST", "/cooldowns/reset", body=body)
        if args.json:
            return data
        return f"reset {data['cooldowns_reset']} cooldowns, {data['breakers_reset']} breakers"
    data = _call(args, "GET", "/cooldowns")
    if args.json:
        return data
    rows = [
        [
            c["credential_id"],
            c["model"] or "*",
            f"{c['remaining']:g}s",
            c["reason"],
            str(c["failures"]),
        ]
        for c in data["cooldowns"]
    ]
    out = _table(["CREDENTIAL", "MODEL", "REMAINING", "REASON", "FAILURES"], rows)
    breakers = data["breakers"]
    if breakers:
        out += "\n\n" + _table(["UPSTREAM", "BREAKER"], [[k, v] for k, v in breakers.items()])
    return out


def _query(args: argparse.Namespace) -> str | Any:
    params = [
        (name, value)
        for name, value in (
            ("since", args.since),
            ("start", args.start),
            ("end", args.end),
            ("key", args.key),
            ("model", args.model),
            ("bucket", args.bucket),
            ("by", args.by),
        )
        if value
    ]
    if args.top:
        data = _call(args, "GET", "/usage/top-keys", params=[*params, ("limit", str(args.top))])
        rows_data = data["keys"]
        by = ["key"]
    else:
        data = _call(args, "GET", "/usage", params=params)
        rows_data = [
            *data["rows"],
            {
                **data["total"],
                **({"bucket": None} if data["bucket"] else {}),
                **dict.fromkeys(data["by"], "TOTAL"),
            },
        ]
        by = data["by"]
        if data["bucket"]:
            by = ["bucket", *by]
    if args.json:
        return data

    def when(value: float | None) -> str:
        return "TOTAL" if value is None else time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime(value))

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value * 1000:.0f}ms"

    header = [
        *(b.upper() for b in by),
        "REQUESTS",
        "TOKENS",
        "COST",
        "REJECTED",
        "P50",
        "P95",
        "P99",
    ]
    rows = [
        [
            *(when(r.get("bucket")) if b == "bucket" else str(r.get(b) or "-") for b in by),
            str(r["requests"]),
            str(r["total_tokens"]),
            _usd(r["cost_nanos"] / 1e9),
            str(r["rejections"]),
            ms(r["latency"]["p50"]),
            ms(r["latency"]["p95"]),
            ms(r["latency"]["p99"]),
        ]
        for r in rows_data
    ]
    return _table(header, rows)


def _run(handler: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            out = handler(args)
        except _Failed as exc:
            print(f"asgi-llmguard: {exc}", file=sys.stderr)
            return exc.status
        print(
            out if isinstance(out, str) else orjson.dumps(out, option=orjson.OPT_INDENT_2).decode()
        )
        return 0

    return run


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help=f"admin API URL (default ${ENV_URL}, else {DEFAULT_URL})")
    common.add_argument("--json", action="store_true", help="print the API's JSON answer")
    common.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
    return common


def add_admin_parsers(subparsers: Any, usage: argparse.ArgumentParser | None = None) -> None:
    """Add ``budgets``, ``ratelimit`` and ``cooldowns`` to the CLI's sub-commands, and ``query``
    under the existing ``usage`` command when its parser is given."""
    common = _common()
    note = f"Talks to the gateway's admin API (admin key from ${ENV_KEY})."

    budgets = subparsers.add_parser("budgets", help="show or reset a key's spend", description=note)
    sub = budgets.add_subparsers(dest="action", required=True)
    for action, text in (("show", "spend per period"), ("reset", "forget the key's spend")):
        p = sub.add_parser(action, parents=[common], help=text)
        p.add_argument("key_id", metavar="KEY_ID")
        p.set_defaults(func=_run(_budgets))

    rate = subparsers.add_parser(
        "ratelimit", help="show or reset a key's rate-limit state", description=note
    )
    sub = rate.add_subparsers(dest="action", required=True)
    for action, text in (("show", "the key's buckets"), ("reset", "refill the key's buckets")):
        p = sub.add_parser(action, parents=[common], help=text)
        p.add_argument("key_id", metavar="KEY_ID")
        p.add_argument(
            "--model",
            action="append",
            help="also the key's per-model buckets of this model (repeat)",
        )
        p.set_defaults(func=_run(_ratelimit))

    cool = subparsers.add_parser(
        "cooldowns", help="list or reset upstream cooldowns", description=note
    )
    sub = cool.add_subparsers(dest="action", required=True)
    sub.add_parser("list", parents=[common], help="cooldowns and breakers").set_defaults(
        func=_run(_cooldowns)
    )
    p = sub.add_parser("reset", parents=[common], help="clear cooldowns (all, or those matching)")
    p.add_argument("--credential", help="only this upstream credential")
    p.add_argument("--model", help="only this model's cooldowns")
    p.add_argument("--upstream", help="only this upstream's circuit breaker")
    p.set_defaults(func=_run(_cooldowns))

    if usage is not None:
        sub = usage.add_subparsers(dest="usage_command", required=False)
        q = sub.add_parser(
            "query", parents=[common], help="query the running gateway's ledger", description=note
        )
        q.add_argument(
            "--since", help="time window ending now or at --end: 30m, 24h, 7d (default 24h)"
        )
        q.add_argument("--start", help="epoch seconds or ISO 8601")
        q.add_argument("--end", help="epoch seconds or ISO 8601")
        q.add_argument("--key", help="only this key id")
        q.add_argument("--model", help="only this model")
        q.add_argument("--bucket", choices=("hour", "day"), help="one row per UTC hour or day")
        q.add_argument("--by", help="group by key, model, provider, endpoint or credential")
        q.add_argument("--top", type=int, metavar="N", help="the N keys that spent the most")
        q.set_defaults(func=_run(_query))
