"""Where usage events are kept: SQLite (the default), PostgreSQL, JSON lines, or your callable.

Every sink follows the `Sink` protocol and is idempotent under ``(request_id, attempt)``. Sinks
are also named by URL (the config file's ``[usage] sinks = [...]``), see `sink_from_url`:

- ``sqlite:///relative/file.sqlite3``, ``sqlite:////absolute/file.sqlite3``
- ``postgresql://user@host:5432/db?schema=llmguard`` (``schema`` defaults to ``public``)
- ``jsonl:///relative/file.jsonl``, ``jsonl:////absolute/file.jsonl``
- a bare path: JSON lines when it ends in ``.jsonl`` or ``.ndjson``, SQLite otherwise.
"""

from __future__ import annotations

from typing import Literal, NamedTuple
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from asgi_llmguard.errors import ConfigurationError
from asgi_llmguard.usage.sinks.base import Sink, sink_name
from asgi_llmguard.usage.sinks.callable import CallableSink
from asgi_llmguard.usage.sinks.jsonl import JSONLSink
from asgi_llmguard.usage.sinks.postgres import PostgresSink
from asgi_llmguard.usage.sinks.sqlite import SQLiteSink

__all__ = [
    "CallableSink",
    "JSONLSink",
    "LedgerURL",
    "PostgresSink",
    "SQLiteSink",
    "Sink",
    "parse_ledger_url",
    "sink_from_url",
    "sink_name",
]


class LedgerURL(NamedTuple):
    """A parsed ledger URL: the kind, the path or DSN, and the PostgreSQL schema."""

    kind: Literal["sqlite", "postgres", "jsonl"]
    target: str
    schema: str = "public"


def parse_ledger_url(url: str) -> LedgerURL:
    """Parse ``sqlite:///...``, ``postgresql://...``, ``jsonl:///...`` or a bare path."""
    url = url.strip()
    if not url:
        raise ConfigurationError("empty usage ledger URL")
    scheme, sep, rest = url.partition("://")
    if not sep:
        lowered = url.lower()
        kind: Literal["sqlite", "jsonl"] = (
            "jsonl" if lowered.endswith((".jsonl", ".ndjson")) else "sqlite"
        )
        return LedgerURL(kind, url)
    scheme = scheme.lower()
    if scheme in ("sqlite", "jsonl"):
        # SQLAlchemy's convention: three slashes then a relative path, four for an absolute one.
        if not rest.startswith("/") or len(rest) < 2:
            raise ConfigurationError(
                f"{scheme} URL must look like {scheme}:///relative/path or "
                f"{scheme}:////absolute/path, got {url!r}"
            )
        return LedgerURL("sqlite" if scheme == "sqlite" else "jsonl", rest[1:])
    if scheme in ("postgresql", "postgres"):
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        schema = "public"
        kept = []
        for name, value in query:
            if name == "schema":
                schema = value
            else:
                kept.append((name, value))
        dsn = urlunsplit(parts._replace(query=urlencode(kept)))
        return LedgerURL("postgres", dsn, schema)
    raise ConfigurationError(
        f"unknown usage ledger URL scheme {scheme!r}: use sqlite://, postgresql:// or jsonl://"
    )


def sink_from_url(url: str) -> Sink:
    """The sink a URL names (see the module docstring for the forms)."""
    parsed = parse_ledger_url(url)
    if parsed.kind == "sqlite":
        return SQLiteSink(parsed.target)
    if parsed.kind == "jsonl":
        return JSONLSink(parsed.target)
    return PostgresSink(parsed.target, schema=parsed.schema)
