"""`store_from_url`: the writable key store a URL names (the CLI's ``--db``, the config file).

- ``sqlite:///relative/keys.sqlite3``, ``sqlite:////absolute/keys.sqlite3`` (SQLAlchemy's
  convention: three slashes then a relative path, four for an absolute one);
- ``postgresql://user@host:5432/db?schema=llmguard`` (``postgres://`` too; ``schema`` defaults
  to ``public``; other query parameters go to asyncpg).
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from asgi_llmguard.errors import ConfigurationError
from asgi_llmguard.keys.base import WritableKeyStore
from asgi_llmguard.keys.postgres import PostgresKeyStore
from asgi_llmguard.keys.sqlite import SQLiteKeyStore


def store_from_url(url: str) -> WritableKeyStore:
    """The store a ``sqlite:///...`` or ``postgresql://...`` URL names (not yet connected)."""
    url = url.strip()
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if sep and scheme == "sqlite":
        if not rest.startswith("/") or len(rest) < 2:
            raise ConfigurationError(
                "a SQLite key store URL looks like sqlite:///relative/path or "
                "sqlite:////absolute/path"
            )
        return SQLiteKeyStore(rest[1:])
    if sep and scheme in ("postgresql", "postgres"):
        parts = urlsplit(url)
        schema = "public"
        kept = []
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            if name == "schema":
                schema = value
            else:
                kept.append((name, value))
        return PostgresKeyStore(urlunsplit(parts._replace(query=urlencode(kept))), schema)
    raise ConfigurationError("a key store URL is sqlite:///path or postgresql://...")
