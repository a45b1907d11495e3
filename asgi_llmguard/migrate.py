"""In-place schema upgrades: add the columns a table's ``CREATE TABLE`` names and it lacks.

A table created by an older version keeps its rows; each column added to the ``CREATE TABLE`` of
a sink since then is added to the existing table when the sink opens it. Only additions are
made: nothing is dropped, renamed or retyped. A ``NOT NULL`` column without a ``DEFAULT`` gets
its type's zero (``0``, ``0.0``, ``''``, ``false``, ``'{}'``) as the default, so rows written
before it existed stay valid.

SQLite: inside ``BEGIN IMMEDIATE`` (one writer at a time, so processes opening the same file
together do not both add a column). PostgreSQL: ``ADD COLUMN IF NOT EXISTS``, run by the caller
inside the transaction that holds its advisory lock.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Sequence

_CREATE = re.compile(
    r"CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?(?P<name>[^\s(]+)\s*\((?P<body>.*?)\n\);",
    re.IGNORECASE | re.DOTALL,
)
_COLUMN = re.compile(r"\s*(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s+(?P<definition>.+?),?\s*$")
_CONSTRAINTS = {"PRIMARY", "UNIQUE", "CONSTRAINT", "CHECK", "FOREIGN", "EXCLUDE"}
_ZEROS = (
    ("INT", "0"),
    ("REAL", "0"),
    ("DOUBLE", "0"),
    ("FLOAT", "0"),
    ("NUMERIC", "0"),
    ("BOOL", "false"),
    ("JSON", "'{}'"),
    ("TIMESTAMP", "'epoch'"),
    ("TEXT", "''"),
)


def column_definitions(ddl: str, table: str) -> dict[str, str]:
    """The columns of ``table`` in a ``CREATE TABLE`` script: name -> the rest of its line.

    Each column definition must be on a line of its own (as in the sinks' schemas).
    """
    for match in _CREATE.finditer(ddl):
        if match["name"].rsplit(".", 1)[-1].strip('"') != table:
            continue
        columns: dict[str, str] = {}
        for line in match["body"].splitlines():
            column = _COLUMN.fullmatch(line)
            if column is None or column["name"].upper() in _CONSTRAINTS:
                continue
            columns[column["name"]] = _addable(column["definition"])
        return columns
    raise ValueError(f"no CREATE TABLE {table} in the schema")


def _addable(definition: str) -> str:
    """The definition, with a default when it is ``NOT NULL`` without one (so it can be added
    to a table that has rows)."""
    upper = definition.upper()
    if "NOT NULL" not in upper or "DEFAULT" in upper:
        return definition
    for marker, zero in _ZEROS:
        if marker in upper:
            return f"{definition} DEFAULT {zero}"
    return definition


def sqlite_add_missing_columns(conn: sqlite3.Connection, table: str, ddl: str) -> list[str]:
    """Add to ``table`` the columns ``ddl`` defines and it lacks; returns their names.

    Nothing is done when the table does not exist yet. Call it before running ``ddl``, so that
    indexes the script creates on new columns find them. ``conn`` must be in autocommit mode
    (``isolation_level=None``) and not in a transaction.
    """
    wanted = column_definitions(ddl, table)
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Constant identifiers from the sink's own schema.
        present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        added = [name for name in wanted if name not in present] if present else []
        for name in added:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {wanted[name]}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return added


def postgres_add_columns(qualified_table: str, ddl: str, present: Sequence[str]) -> str | None:
    """The ``ALTER TABLE`` adding to ``qualified_table`` (``"schema".table``) the columns ``ddl``
    defines and ``present`` lacks, or ``None`` when none is missing."""
    table = qualified_table.rsplit(".", 1)[-1].strip('"')
    wanted = column_definitions(ddl, table)
    have = set(present)
    clauses = [
        f"ADD COLUMN IF NOT EXISTS {name} {definition}"
        for name, definition in wanted.items()
        if name not in have
    ]
    if not clauses:
        return None
    return f"ALTER TABLE {qualified_table} {', '.join(clauses)}"
