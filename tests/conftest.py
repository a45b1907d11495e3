"""Shared fixtures: real servers on loopback ports, and the rule for external services.

Tests that need Redis or PostgreSQL skip with a clear reason when the service is unreachable,
except when the ``CI`` environment variable is set: then they fail, so CI cannot pass by skipping.
"""

from __future__ import annotations

import os
import socket

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
