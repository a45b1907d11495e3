"""Shared fixtures: real servers on loopback ports, and the rule for external services.

Tests that need Redis or PostgreSQL skip with a clear reason when the service is unreachable,
except when the ``CI`` environment variable is set: then they fail, so CI cannot pass by skipping.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from collections.abc import Iterator

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def service_reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    """Skip (or, under CI, fail) when a service the test needs is not listening."""
    if service_reachable(host, port):
        return
    message = f"{name} is not reachable at {host}:{port}"
    if os.environ.get("CI"):
        pytest.fail(f"{message}, and CI is set: tests must not skip it", pytrace=False)
    pytest.skip(message)


# ------------------------------------------------------------------ no secret in any log line
#
# Every log record the suite produces (the gateway's at DEBUG) is kept and, at the end of the
# session, searched for the keys the tests use: upstream credentials ("sk-upstream-..."), callers'
# virtual keys ("sk-llmg-...") and the literal client keys of the header tests. A key may appear
# only as its hash prefix.

_SECRET = re.compile(
    rb"sk-upstream-[A-Za-z0-9_-]{4,}|sk-llmg-[A-Za-z0-9_-]{16,}|client-secret-key|sk-from-env-123"
)


class _KeepAll(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.leaks: list[str] = []
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        try:
            text = self.format(record)
        except Exception:  # a record that cannot be formatted is not our concern here
            return
        if _SECRET.search(text.encode("utf-8", "replace")):
            self.leaks.append(f"{record.name}: {text[:300]}")


@pytest.fixture(scope="session", autouse=True)
def _no_secret_in_any_log_line() -> Iterator[None]:
    handler = _KeepAll()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    gateway = logging.getLogger("asgi_llmguard")
    previous = gateway.level
    gateway.setLevel(logging.DEBUG)
    root.addHandler(handler)
    yield
    root.removeHandler(handler)
    gateway.setLevel(previous)
    assert not handler.leaks, f"secrets in log lines: {handler.leaks[:5]}"
