"""``asgi-llmguard keys create|list|revoke`` through a throwaway argparse parser."""

from __future__ import annotations

import argparse
import asyncio
import uuid

import orjson
import pytest

from asgi_llmguard.errors import ConfigurationError
from asgi_llmguard.keys import PostgresKeyStore, SQLiteKeyStore, hash_key, store_from_url
from asgi_llmguard.keys.cli import ENV_KEYS_DB, add_keys_parser
from asgi_llmguard.policy import Budget, RateLimit
from tests.conftest import require_service

PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="asgi-llmguard")
    add_keys_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["keys", *argv])
    return int(args.func(args))


def lookup(db: str, key: str):
    async def go():
        store = store_from_url(db)
        try:
            return await store.lookup(hash_key(key))
        finally:
            await store.aclose()

    return asyncio.run(go())


@pytest.fixture
def db(tmp_path) -> str:
    return f"sqlite:///{tmp_path}/keys.sqlite3"


def test_create_prints_the_key_once_and_stores_only_its_hash(db, tmp_path, capsys):
    code = run(
        "create",
        "--db",
        db,
        "--name",
        "team-a",
        "--model",
        "gpt-4o*,o3",
        "--model",
        "claude-sonnet-*",
        "--endpoint",
        "chat.completions",
        "--provider",
        "openai",
        "--tool-type",
        "function",
        "--no-background",
        "--rpm",
        "60",
        "--tpm",
        "100000",
        "--concurrency",
        "4",
        "--budget-monthly",
        "25.5",
        "--capture",
        "--meta",
        "team=a",
        "--meta",
        "env=prod",
    )
    assert code == 0
    out, err = capsys.readouterr()
    key = next(line.split()[-1] for line in out.splitlines() if line.startswith("key:"))
    assert key.startswith("sk-llmg-")
    assert (out + err).count(key) == 1
    assert "key_id: team-a" in out
    assert "shown once" in err

    policy = lookup(db, key)
    assert policy is not None
    assert policy.key_id == "team-a"
    assert policy.models == ("gpt-4o*", "o3", "claude-sonnet-*")
    assert policy.endpoints == frozenset({"chat.completions"})
    assert policy.providers == frozenset({"openai"})
    assert policy.tool_types == frozenset({"function"})
    assert policy.allow_background is False
    assert policy.rate_limits == (
        RateLimit("60/minute", kind="requests"),
        RateLimit("100000/minute", kind="tokens"),
    )
    assert policy.max_concurrency == 4
    assert policy.budget == Budget(monthly=25.5)
    assert policy.capture is True
    assert policy.metadata == {"team": "a", "env": "prod"}
    stored = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert key.encode() not in stored
    assert hash_key(key).encode() in stored


def test_list_never_prints_a_key_or_a_full_hash_and_revoke_works(db, capsys):
    assert run("create", "--db", db, "--name", "alpha", "--rpm", "10") == 0
    assert run("create", "--db", db, "--json") == 0
    out = capsys.readouterr().out
    alpha_key = next(line.split()[-1] for line in out.splitlines() if line.startswith("key:"))
    anonymous = orjson.loads(out.splitlines()[-1])
    assert run("revoke", "--db", db, "alpha") == 0
    assert "revoked alpha" in capsys.readouterr().out

    assert run("list", "--db", db) == 0
    listing = capsys.readouterr().out
    lines = listing.splitlines()
    assert lines[0].split() == ["ID", "NAME", "CREATED", "REVOKED", "POLICY"]
    alpha = next(line for line in lines if line.startswith("alpha"))
    assert "requests=10/minute" in alpha
    assert alpha.split()[3].endswith("Z")  # revoked at
    anonymous_line = next(line for line in lines if line.startswith(anonymous["key_id"]))
    assert anonymous_line.split()[1:4:2] == ["-", "-"]  # no name, not revoked
    for secret in (alpha_key, anonymous["key"], hash_key(alpha_key), hash_key(anonymous["key"])):
        assert secret not in listing

    assert run("list", "--db", db, "--active", "--json") == 0
    rows = orjson.loads(capsys.readouterr().out)
    assert [r["key_id"] for r in rows] == [anonymous["key_id"]]
    assert anonymous["key"] not in str(rows)

    assert lookup(db, alpha_key).revoked
    assert not lookup(db, anonymous["key"]).revoked


def test_revoking_an_unknown_id_and_reusing_an_active_name_fail(db, capsys):
    assert run("revoke", "--db", db, "nope") == 1
    assert "no active key" in capsys.readouterr().err
    assert run("create", "--db", db, "--name", "dup") == 0
    assert run("create", "--db", db, "--name", "dup") == 1
    assert "already exists" in capsys.readouterr().err


def test_the_default_store_comes_from_the_environment_then_the_cwd(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run("create", "--name", "here") == 0
    assert (tmp_path / "llmguard.sqlite3").exists()
    monkeypatch.setenv(ENV_KEYS_DB, f"sqlite:///{tmp_path}/from-env.sqlite3")
    assert run("create", "--name", "there") == 0
    assert (tmp_path / "from-env.sqlite3").exists()
    capsys.readouterr()
    assert run("list") == 0
    assert "there" in capsys.readouterr().out


def test_mcp_server_allow_lists_are_stored_listed_and_checked(db, capsys):
    servers = ("https://mcp.example.com/", "https://tools.example/sse?team=a,b")
    code = run(
        "create", "--db", db, "--name", "mcp", "--tool-type", "function,mcp",
        "--mcp-server", servers[0], "--mcp-server", servers[1],
    )  # fmt: skip
    assert code == 0
    key = next(line.split()[-1] for line in capsys.readouterr().out.splitlines() if "key:" in line)
    policy = lookup(db, key)
    assert policy is not None
    assert policy.mcp_servers == servers  # a comma inside a URL does not split it
    assert run("list", "--db", db) == 0
    assert "mcp_servers=" + ",".join(servers) in capsys.readouterr().out
    with pytest.raises(ConfigurationError, match="not an http"):
        run("create", "--db", db, "--mcp-server", "ftp://files.example/")


def test_bad_arguments_are_refused(db):
    with pytest.raises(SystemExit):
        run("create", "--db", db, "--rpm", "0")
    with pytest.raises(SystemExit):
        run("create", "--db", db, "--meta", "novalue")
    with pytest.raises(ConfigurationError, match="provider"):
        run("create", "--db", db, "--provider", "no-such-api")
    with pytest.raises(ConfigurationError):
        run("list", "--db", "redis://localhost")


@pytest.mark.parametrize(
    ("url", "kind", "target"),
    [
        ("sqlite:///keys.sqlite3", SQLiteKeyStore, "keys.sqlite3"),
        ("sqlite:////var/lib/keys.sqlite3", SQLiteKeyStore, "/var/lib/keys.sqlite3"),
        (
            "postgresql://u:pw@h:5432/db?schema=gw",
            PostgresKeyStore,
            "postgres:postgresql://h:5432/db#gw",
        ),
        ("postgres://h/db", PostgresKeyStore, "postgres:postgres://h/db#public"),
    ],
)
def test_store_urls(url, kind, target):
    store = store_from_url(url)
    assert isinstance(store, kind)
    assert (store.path if isinstance(store, SQLiteKeyStore) else store.name) == target


def test_the_cli_on_postgres(capsys):
    require_service("PostgreSQL", "127.0.0.1", 5432)
    schema = f"llmguard_cli_{uuid.uuid4().hex[:12]}"
    db = f"{PG_DSN}?schema={schema}"
    try:
        assert run("create", "--db", db, "--name", "pg", "--json") == 0
        key = orjson.loads(capsys.readouterr().out)["key"]
        assert lookup(db, key).key_id == "pg"
        assert run("revoke", "--db", db, "pg") == 0
        assert lookup(db, key).revoked
    finally:
        import asyncpg

        async def drop() -> None:
            conn = await asyncpg.connect(PG_DSN)
            try:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            finally:
                await conn.close()

        asyncio.run(drop())
