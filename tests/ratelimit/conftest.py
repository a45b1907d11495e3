from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator

import pytest

from tests.conftest import require_service

from ._apps import RedisServer

SHARED_REDIS = "redis://127.0.0.1:6379/0"


@pytest.fixture
def shared_redis() -> str:
    """The shared Redis server: tests use unique key prefixes and never flush it."""
    require_service("Redis", "127.0.0.1", 6379)
    return SHARED_REDIS


@pytest.fixture
def prefix() -> str:
    return f"llmguard-test:{uuid.uuid4().hex[:12]}:"


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A private redis-server the test may kill and restart (never the shared one)."""
    if shutil.which("redis-server") is None:
        message = "redis-server is not installed"
        if os.environ.get("CI"):
            pytest.fail(f"{message}, and CI is set: tests must not skip it", pytrace=False)
        pytest.skip(message)
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.kill()
