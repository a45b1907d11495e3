"""A real gateway with the admin API: uvicorn, the fake upstream, a SQLite key store and ledger.

Two keys are issued into the key store (``team-a``: a budget and 3 requests per minute;
``team-b``: unlimited); the admin API works on the stack's own stores. The forwarder's cooldown
and breaker objects are stand-ins implementing the interface the admin API codes against.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from asgi_llmguard import (
    CachedKeyStore,
    MemoryBudgetStore,
    SQLiteKeyStore,
    SQLiteSink,
    Upstream,
    UsagePipeline,
    build_stack,
)
from asgi_llmguard.keys import issue_key
from asgi_llmguard.testing import FakeProvider, serve

ADMIN_KEY = "adm-test-0123456789-abcdefghijklmnop"
UPSTREAM_KEY = "sk-upstream-admin-tests"


@dataclass(frozen=True)
class Cooldown:
    credential_id: str
    model: str | None
    until: float
    reason: str
    failures: int


class StandInCooldowns:
    """The forwarder's cooldown registry as the admin API expects it."""

    def __init__(self) -> None:
        self.items: list[Cooldown] = []

    def snapshot(self) -> list[Cooldown]:
        return list(self.items)

    async def reset(self, credential_id: str | None = None, model: str | None = None) -> int:
        keep = [
            c
            for c in self.items
            if (credential_id is not None and c.credential_id != credential_id)
            or (model is not None and c.model != model)
        ]
        cleared = len(self.items) - len(keep)
        self.items = keep
        return cleared


class StandInBreaker:
    def __init__(self) -> None:
        self.states: dict[str, str] = {}

    def snapshot(self) -> dict[str, str]:
        return dict(self.states)

    def reset(self, upstream: str | None = None) -> int:
        names = [n for n in self.states if upstream is None or n == upstream]
        for name in names:
            self.states[name] = "closed"
        return len(names)


@dataclass
class StandInForwarder:
    cooldowns: StandInCooldowns = field(default_factory=StandInCooldowns)
    breaker: StandInBreaker = field(default_factory=StandInBreaker)


@dataclass
class Running:
    url: str
    admin: str
    keys: dict[str, str]
    ledger: Path
    forwarder: StandInForwarder
    reloads: list[float]

    def client(self, key: str | None = ADMIN_KEY) -> httpx.Client:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.admin, headers=headers, timeout=10, trust_env=False)

    def ledger_rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.ledger) as db:
            return db.execute(sql, params).fetchall()

    def wait_for_ledger(self, count: int) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.ledger.exists():
                try:
                    if self.ledger_rows("SELECT count(*) FROM usage_events")[0][0] >= count:
                        return
                except sqlite3.OperationalError:
                    pass  # the table is created with the first batch
            time.sleep(0.05)
        raise AssertionError(f"the ledger did not reach {count} rows")


async def _issue(store: SQLiteKeyStore) -> dict[str, str]:
    a = await issue_key(
        store,
        name="team-a",
        budget={"total": 0.00004},
        rate_limits=[{"limit": "3/minute"}],
    )
    b = await issue_key(store, name="team-b")
    return {"team-a": a.key, "team-b": b.key}


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Running]:
    with running_gateway(tmp_path) as running:
        yield running


@pytest.fixture(scope="module")
def shared_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """One gateway for tests that only read or are refused (the many 401 cases)."""
    with running_gateway(tmp_path_factory.mktemp("admin")) as running:
        yield running


@contextlib.contextmanager
def running_gateway(tmp_path: Path) -> Iterator[Running]:
    db = tmp_path / "keys.sqlite3"
    seed = SQLiteKeyStore(db)
    keys = asyncio.run(_issue_and_close(seed))
    ledger = tmp_path / "ledger.sqlite3"
    pipeline = UsagePipeline(
        [SQLiteSink(str(ledger))], spill_path=str(tmp_path / "spill"), flush_interval=0.05
    )
    forwarder = StandInForwarder()
    reloads: list[float] = []

    async def reload() -> dict[str, str]:
        reloads.append(time.time())
        return {"status": "reloaded"}

    with serve(FakeProvider(api_key=UPSTREAM_KEY)) as upstream:
        app = build_stack(
            upstreams=[Upstream("openai", f"{upstream.url}/v1", api_key=UPSTREAM_KEY, name="oa")],
            keys=CachedKeyStore(SQLiteKeyStore(db)),
            usage={"budgets": MemoryBudgetStore()},
            pipeline=pipeline,
            admin={
                "key": ADMIN_KEY,
                "ledger": f"sqlite:///{ledger}",
                "forwarder": forwarder,
                "reload": reload,
            },
        )
        with serve(app) as server:
            yield Running(server.url, f"{server.url}/admin", keys, ledger, forwarder, reloads)


async def _issue_and_close(store: SQLiteKeyStore) -> dict[str, str]:
    try:
        return await _issue(store)
    finally:
        await store.aclose()
