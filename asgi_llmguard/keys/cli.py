"""``asgi-llmguard keys create | list | revoke``: manage the keys of a SQLite or PostgreSQL store.

`add_keys_parser` adds the ``keys`` command to the CLI's sub-parsers; each sub-command sets
``func`` to its handler, which takes the parsed arguments and returns the exit status. The store
is named by ``--db`` (``sqlite:///relative.sqlite3``, ``sqlite:////absolute.sqlite3``,
``postgresql://user@host/db?schema=name``), else by ``$ASGI_LLMGUARD_KEYS_DB`` (keeps a DSN
with a password out of the process list), else ``sqlite:///llmguard.sqlite3`` in the current
directory.

``create`` prints the new key once; the store keeps only its SHA-256. ``list`` and ``revoke``
never print a key or a digest.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
import orjson

from asgi_llmguard.errors import ConfigurationError
from asgi_llmguard.keys.base import KeyExists, KeyRecord, WritableKeyStore, issue_key
from asgi_llmguard.keys.hashing import DEFAULT_PREFIX
from asgi_llmguard.keys.url import store_from_url
from asgi_llmguard.routes import APIS

T = TypeVar("T")

ENV_KEYS_DB = "ASGI_LLMGUARD_KEYS_DB"
DEFAULT_DB = "sqlite:///llmguard.sqlite3"
PROVIDERS = APIS


def _run(url: str, action: Callable[[WritableKeyStore], Awaitable[T]]) -> T:
    async def main() -> T:
        store = store_from_url(url)
        try:
            return await action(store)
        finally:
            await store.aclose()

    return asyncio.run(main())


def _db(args: argparse.Namespace) -> str:
    db: str | None = args.db
    return db or os.environ.get(ENV_KEYS_DB) or DEFAULT_DB


def _meta(value: str) -> tuple[str, str]:
    name, sep, val = value.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {value!r}")
    return name, val


def _positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return n


def _dollars(value: str) -> float:
    n = float(value)
    if not n >= 0:
        raise argparse.ArgumentTypeError("must be an amount >= 0")
    return n


def _split(values: list[str] | None) -> list[str] | None:
    """Repeated options and comma-separated lists, both: ``--model a,b --model c``."""
    if values is None:
        return None
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def _policy_fields(args: argparse.Namespace) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name, values in (
        ("models", _split(args.model)),
        ("endpoints", _split(args.endpoint)),
        ("providers", _split(args.provider)),
        ("tool_types", _split(args.tool_type)),
    ):
        if values is not None:
            fields[name] = values
    if bad := set(fields.get("providers", ())) - set(PROVIDERS):
        raise ConfigurationError(f"unknown provider(s) {sorted(bad)}: use {', '.join(PROVIDERS)}")
    if args.mcp_server is not None:  # URLs are not split on commas: a query may hold one
        fields["mcp_servers"] = [url.strip() for url in args.mcp_server if url.strip()]
    if args.no_background:
        fields["allow_background"] = False
    limits = []
    for count, kind, period in (
        (args.rpm, "requests", "minute"),
        (args.rpd, "requests", "day"),
        (args.tpm, "tokens", "minute"),
        (args.tpd, "tokens", "day"),
    ):
        if count is not None:
            limits.append({"limit": f"{count}/{period}", "kind": kind})
    if limits:
        fields["rate_limits"] = limits
    if args.concurrency is not None:
        fields["max_concurrency"] = args.concurrency
    if args.max_body_bytes is not None:
        fields["max_body_bytes"] = args.max_body_bytes
    budget = {
        period: amount
        for period, amount in (
            ("total", args.budget_total),
            ("daily", args.budget_daily),
            ("monthly", args.budget_monthly),
        )
        if amount is not None
    }
    if budget:
        fields["budget"] = budget
    if args.capture:
        fields["capture"] = True
    if args.meta:
        fields["metadata"] = dict(args.meta)
    return fields


def keys_create(args: argparse.Namespace) -> int:
    """Make a key, store its digest, and print the key (once) and its id."""
    fields = _policy_fields(args)
    try:
        issued = _run(
            _db(args), lambda store: issue_key(store, name=args.name, prefix=args.prefix, **fields)
        )
    except KeyExists as exc:
        print(f"asgi-llmguard keys: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(orjson.dumps({"key_id": issued.key_id, "key": issued.key}).decode())
    else:
        print(f"key_id: {issued.key_id}")
        print(f"key:    {issued.key}")
        print(
            "Give this key to its owner now: it is shown once, and only its SHA-256 is stored.",
            file=sys.stderr,
        )
    return 0


def _time(value: float | None) -> str:
    if value is None:
        return "-"
    return datetime.datetime.fromtimestamp(value, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _summary(record: KeyRecord) -> str:
    p = record.policy
    parts = []
    if p.models is not None:
        parts.append("models=" + ",".join(p.models))
    if p.endpoints is not None:
        parts.append("endpoints=" + ",".join(sorted(p.endpoints)))
    if p.providers is not None:
        parts.append("providers=" + ",".join(sorted(p.providers)))
    if p.tool_types is not None:
        parts.append("tool_types=" + ",".join(sorted(p.tool_types)))
    if p.mcp_servers is not None:
        parts.append("mcp_servers=" + ",".join(p.mcp_servers))
    parts.extend(f"{r.kind}={r.limit}" for r in p.rate_limits)
    if p.max_concurrency is not None:
        parts.append(f"concurrency={p.max_concurrency}")
    if p.budget is not None:
        parts.extend(
            f"budget.{period}={amount:g}"
            for period, amount in msgspec.structs.asdict(p.budget).items()
            if amount is not None
        )
    if p.metadata:
        parts.extend(f"{k}={v}" for k, v in sorted(p.metadata.items()))
    return " ".join(parts)


def keys_list(args: argparse.Namespace) -> int:
    """Print every key's id, name, creation and revocation time; never a key or a digest."""
    records = _run(_db(args), lambda store: store.list())
    if args.active:
        records = [r for r in records if not r.revoked]
    if args.json:
        rows = [
            {
                "key_id": r.key_id,
                "name": r.name,
                "created_at": r.created_at,
                "revoked_at": r.revoked_at,
                "policy": r.policy,
            }
            for r in records
        ]
        print(orjson.dumps(rows, default=_to_builtins).decode())
        return 0
    header = ("ID", "NAME", "CREATED", "REVOKED", "POLICY")
    table = [header] + [
        (r.key_id, r.name or "-", _time(r.created_at), _time(r.revoked_at), _summary(r))
        for r in records
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    for row in table:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]).rstrip())
    return 0


def _to_builtins(value: object) -> object:
    return msgspec.to_builtins(value)


def keys_revoke(args: argparse.Namespace) -> int:
    """Revoke the active key with this id."""
    if _run(_db(args), lambda store: store.revoke(args.key_id)):
        print(f"revoked {args.key_id}")
        return 0
    print(f"asgi-llmguard keys: no active key with id {args.key_id!r}", file=sys.stderr)
    return 1


def add_keys_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``keys create|list|revoke`` to an argparse sub-parsers object; returns the ``keys``
    parser. Each sub-command sets ``func`` (``args.func(args)`` runs it and returns the status).
    """
    keys: argparse.ArgumentParser = subparsers.add_parser(
        "keys",
        help="create, list and revoke virtual keys",
        description=(
            "Manage virtual keys in a SQLite or PostgreSQL store. A new key is printed once; "
            "only its SHA-256 is stored, and list never prints a key."
        ),
    )
    db = argparse.ArgumentParser(add_help=False)
    db.add_argument(
        "--db",
        help=f"key store URL (default: ${ENV_KEYS_DB}, else {DEFAULT_DB})",
    )
    sub = keys.add_subparsers(dest="keys_command", required=True)

    create = sub.add_parser("create", parents=[db], help="make a key and print it once")
    create.add_argument("--name", help="the key's id in logs and records (default: a hash prefix)")
    create.add_argument("--prefix", default=DEFAULT_PREFIX, help="key prefix (%(default)s)")
    create.add_argument(
        "--model", action="append", help="allowed model, exact or glob (repeat, or a,b)"
    )
    create.add_argument(
        "--endpoint", action="append", help="allowed operation, e.g. chat.completions (repeat)"
    )
    create.add_argument("--provider", action="append", help=f"allowed API: {', '.join(PROVIDERS)}")
    create.add_argument(
        "--tool-type", action="append", help="allowed tool type, e.g. function (repeat)"
    )
    create.add_argument(
        "--mcp-server",
        action="append",
        metavar="URL",
        help="allowed remote MCP server URL (repeat); without it any server the tool types allow",
    )
    create.add_argument(
        "--no-background", action="store_true", help="refuse Responses `background: true`"
    )
    create.add_argument("--rpm", type=_positive, help="requests per minute")
    create.add_argument("--rpd", type=_positive, help="requests per day")
    create.add_argument("--tpm", type=_positive, help="LLM tokens per minute")
    create.add_argument("--tpd", type=_positive, help="LLM tokens per day")
    create.add_argument("--concurrency", type=_positive, help="requests in flight at once")
    create.add_argument("--max-body-bytes", type=_positive, help="request-body limit")
    create.add_argument("--budget-total", type=_dollars, metavar="USD")
    create.add_argument("--budget-daily", type=_dollars, metavar="USD")
    create.add_argument("--budget-monthly", type=_dollars, metavar="USD")
    create.add_argument("--capture", action="store_true", help="capture request/response bodies")
    create.add_argument(
        "--meta", action="append", type=_meta, metavar="NAME=VALUE", help="label (repeat)"
    )
    create.add_argument("--json", action="store_true", help="print {key_id, key} as JSON")
    create.set_defaults(func=keys_create)

    listing = sub.add_parser("list", parents=[db], help="list keys (never the keys themselves)")
    listing.add_argument("--active", action="store_true", help="leave out revoked keys")
    listing.add_argument("--json", action="store_true", help="JSON output")
    listing.set_defaults(func=keys_list)

    revoke = sub.add_parser("revoke", parents=[db], help="revoke a key by its id")
    revoke.add_argument("key_id", metavar="ID")
    revoke.set_defaults(func=keys_revoke)
    return keys
