"""The writable stores against real databases: a SQLite file, and the PostgreSQL server.

Every contract test runs on both; each PostgreSQL test creates and drops its own schema.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import uuid
from collections.abc import AsyncIterator

import msgspec
import pytest

from asgi_llmguard.errors import ConfigurationError
from asgi_llmguard.keys import (
    KeyExists,
    KeyStore,
    KeyStoreClosed,
    PostgresKeyStore,
    SQLiteKeyStore,
    WritableKeyStore,
    hash_key,
    hashing,
    issue_key,
    make_policy,
)
from asgi_llmguard.policy import RateLimit
from asgi_llmguard.redact import fingerprint
from tests.conftest import require_service

PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"

# Marked here, at collection: the anyio marker that tests/conftest.py adds afterwards makes
# anyio's plugin rebuild async tests without their parameters.
pytestmark = pytest.mark.anyio


async def _drop_schema(schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_DSN)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture
async def pg_schema() -> AsyncIterator[str]:
    require_service("PostgreSQL", "127.0.0.1", 5432)
    schema = f"llmguard_keys_{uuid.uuid4().hex[:12]}"
    yield schema
    await _drop_schema(schema)


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request, tmp_path) -> AsyncIterator[WritableKeyStore]:
    if request.param == "sqlite":
        made: WritableKeyStore = SQLiteKeyStore(tmp_path / "keys.sqlite3")
        yield made
        await made.aclose()
        return
    require_service("PostgreSQL", "127.0.0.1", 5432)
    schema = f"llmguard_keys_{uuid.uuid4().hex[:12]}"
    made = PostgresKeyStore(PG_DSN, schema=schema)
    try:
        yield made
    finally:
        await made.aclose()
        await _drop_schema(schema)


async def test_create_lookup_list_revoke(store):
    assert isinstance(store, WritableKeyStore)
    assert isinstance(store, KeyStore)
    assert await store.list() == []
    assert await store.lookup(hash_key("nothing")) is None  # the table is made on first use
    team = await issue_key(
        store,
        name="team-a",
        models=["gpt-4o*"],
        rate_limits=[{"limit": "60/minute"}],
        metadata={"team": "a"},
    )
    anonymous = await issue_key(store)
    assert anonymous.key_id == fingerprint(anonymous.key)

    policy = await store.lookup(hash_key(team.key))
    assert policy is not None
    assert policy == team.record.policy
    assert policy.key_id == "team-a"
    assert policy.models == ("gpt-4o*",)
    assert policy.rate_limits == (RateLimit("60/minute"),)
    assert policy.metadata == {"team": "a"}
    assert not policy.revoked
    assert await store.lookup(hash_key(team.key + "x")) is None

    records = await store.list()
    assert [r.key_id for r in records] == ["team-a", anonymous.key_id]
    assert records[0].name == "team-a"
    assert records[0].created_at == pytest.approx(team.record.created_at, abs=1)
    assert not records[0].revoked
    assert team.key not in repr(records)
    assert hash_key(team.key) not in repr(records)

    assert await store.revoke("team-a") is True
    assert await store.revoke("team-a") is False  # no active key with that id any more
    assert await store.revoke("never-was") is False
    revoked = await store.lookup(hash_key(team.key))
    assert revoked is not None
    assert revoked.revoked
    listed = {r.key_id: r for r in await store.list()}
    assert listed["team-a"].revoked
    assert listed["team-a"].revoked_at is not None
    assert not listed[anonymous.key_id].revoked


async def test_duplicates_are_refused_and_a_revoked_name_can_be_reused(store):
    first = await issue_key(store, name="rotating")
    with pytest.raises(KeyExists, match="rotating"):
        await issue_key(store, name="rotating")
    policy = make_policy(hash_key(first.key), name="other")
    with pytest.raises(KeyExists, match="already stored"):
        await store.create(policy, hash_key(first.key))
    with pytest.raises(ValueError, match="digest"):
        await store.create(policy, first.key)  # a key where its digest belongs
    assert await store.revoke("rotating")
    second = await issue_key(store, name="rotating")
    current = await store.lookup(hash_key(second.key))
    old = await store.lookup(hash_key(first.key))
    assert current is not None
    assert not current.revoked
    assert old is not None
    assert old.revoked


async def test_every_lookup_confirms_the_digest_in_constant_time(store, monkeypatch):
    issued = await issue_key(store)
    calls: list[tuple[str, str, str]] = []
    real = hashing.hmac.compare_digest

    def spy(a, b):
        calls.append((a, b, threading.current_thread().name))
        return real(a, b)

    monkeypatch.setattr(hashing.hmac, "compare_digest", spy)
    assert await store.lookup(hash_key(issued.key)) is not None
    assert [(a, b) for a, b, _ in calls] == [(hash_key(issued.key), hash_key(issued.key))]
    if isinstance(store, SQLiteKeyStore):  # and off the event loop
        assert calls[0][2].startswith("llmguard-keys-sqlite")


async def test_concurrent_lookups_and_creates(store):
    issued = [await issue_key(store, name=f"k{i}") for i in range(5)]
    results = await asyncio.gather(
        *(store.lookup(hash_key(k.key)) for k in issued * 20),
        *(issue_key(store, name=f"n{i}") for i in range(10)),
    )
    assert [p.key_id for p in results[:100]] == [k.key_id for k in issued * 20]
    assert len(await store.list()) == 15


async def test_closed_store_refuses_work(store):
    await store.lookup(hash_key("x"))
    await store.aclose()
    with pytest.raises(KeyStoreClosed):
        await store.lookup(hash_key("x"))
    await store.aclose()  # twice is fine


async def test_sqlite_file_holds_digests_only_in_wal_mode(tmp_path):
    path = tmp_path / "keys.sqlite3"
    store = SQLiteKeyStore(path)
    issued = await issue_key(store, name="team-a")
    await store.aclose()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        rows = conn.execute("SELECT key_hash, key_id, policy FROM virtual_keys").fetchall()
    assert rows[0][:2] == (hash_key(issued.key), "team-a")
    assert msgspec.json.decode(rows[0][2])["key_id"] == "team-a"
    data = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert issued.key.encode() not in data
    # A second store on the same file (another process, the CLI) sees the first one's keys.
    other = SQLiteKeyStore(path)
    assert await other.revoke("team-a")
    reopened = SQLiteKeyStore(path)
    found = await reopened.lookup(hash_key(issued.key))
    assert found is not None
    assert found.revoked
    await other.aclose()
    await reopened.aclose()


async def test_postgres_replicas_creating_the_table_together(pg_schema):
    stores = [PostgresKeyStore(PG_DSN, schema=pg_schema) for _ in range(4)]
    try:
        issued = await asyncio.gather(*(issue_key(s, name=f"r{i}") for i, s in enumerate(stores)))
        for s in stores:
            assert len(await s.list()) == 4
            assert await s.lookup(hash_key(issued[0].key)) is not None
    finally:
        for s in stores:
            await s.aclose()


def test_postgres_store_checks_the_schema_and_hides_the_password():
    with pytest.raises(ConfigurationError):
        PostgresKeyStore(PG_DSN, schema='x"; DROP TABLE y; --')
    store = PostgresKeyStore("postgresql://admin:hunter2@db.internal:5433/keys", schema="gw")
    assert repr(store) == "<PostgresKeyStore postgres:postgresql://db.internal:5433/keys#gw>"
