"""Real client programs (Node SDKs, CLIs) against a served gateway in front of the fake provider.

The programs live in ``tests/clients/node`` (``npm ci --prefix tests/clients/node`` installs the
pinned versions). Without node or the packages the tests skip, except under ``CI``: then they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from asgi_llmguard import (
    KeyPolicy,
    SQLiteSink,
    StaticKey,
    StaticKeyStore,
    Upstream,
    UsagePipeline,
    build_stack,
    hash_key,
)
from asgi_llmguard.testing import FakeProvider, RunningServer, serve

NODE_DIR = Path(__file__).parent / "node"
CALLER_KEY = "sk-llmg-clients-0123456789abcdefghijklmnopqrstuvwxyz"
UPSTREAM_KEY = "sk-upstream-clients-secret"


def _missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason}, and CI is set: tests must not skip it", pytrace=False)
    pytest.skip(reason)


def require_node_package(package: str) -> str:
    """The path of ``node``; skip (fail under CI) when node or ``package`` is not installed."""
    node = shutil.which("node")
    if node is None:
        _missing("node is not installed")
    if not (NODE_DIR / "node_modules" / package / "package.json").exists():
        _missing(f"{package} is not installed: run npm ci --prefix tests/clients/node")
    assert node is not None
    return node


def run_node(script: str, env: dict[str, str], timeout: float = 30) -> dict[str, Any]:
    """Run ``tests/clients/node/<script>`` and parse the JSON object it prints last."""
    done = subprocess.run(
        ["node", script],
        cwd=NODE_DIR,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"{script} failed:\n{done.stdout}\n{done.stderr}"
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@dataclass
class Gateway:
    server: RunningServer
    fake: FakeProvider
    ledger: Path

    @property
    def url(self) -> str:
        return self.server.url

    def rows(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """The ledger's rows once ``count`` are written (oldest first)."""
        deadline = time.monotonic() + timeout
        rows: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            rows = self._read()
            if len(rows) >= count:
                break
            time.sleep(0.05)
        assert len(rows) == count, rows
        return rows

    def _read(self) -> list[dict[str, Any]]:
        if not self.ledger.exists():
            return []
        with sqlite3.connect(self.ledger) as db:
            db.row_factory = sqlite3.Row
            if not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'usage_events'").fetchone():
                return []
            return [dict(r) for r in db.execute("SELECT * FROM usage_events ORDER BY started_at")]


@pytest.fixture
def gateway(tmp_path):
    fake = FakeProvider(api_key=UPSTREAM_KEY)
    keys = StaticKeyStore([StaticKey(KeyPolicy(key_id="clients"), key_hash=hash_key(CALLER_KEY))])
    ledger = tmp_path / "ledger.sqlite3"
    pipeline = UsagePipeline(
        [SQLiteSink(str(ledger))], spill_path=str(tmp_path / "spill"), flush_interval=0.05
    )
    with serve(fake) as upstream:
        app = build_stack(
            upstreams=[
                Upstream("openai", f"{upstream.url}/v1", api_key=UPSTREAM_KEY, name="oa"),
                Upstream("anthropic", upstream.url, api_key=UPSTREAM_KEY, name="an"),
            ],
            keys=keys,
            pipeline=pipeline,
        )
        with serve(app) as server:
            yield Gateway(server, fake, ledger)
