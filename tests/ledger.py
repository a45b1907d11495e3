"""Reading the SQLite usage ledger a served gateway writes, for the tests."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any


def ledger_rows(ledger: Path, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    """The ledger's rows, oldest first, once there are ``count`` of them (the pipeline writes in
    the background); fails when there are more, or fewer after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        found: list[dict[str, Any]] = []
        if ledger.exists():
            with sqlite3.connect(ledger) as db:
                db.row_factory = sqlite3.Row
                if db.execute("SELECT 1 FROM sqlite_master WHERE name='usage_events'").fetchone():
                    found = [
                        dict(r)
                        for r in db.execute("SELECT * FROM usage_events ORDER BY started_at")
                    ]
        if len(found) >= count or time.monotonic() > deadline:
            assert len(found) == count, found
            return found
        time.sleep(0.05)
