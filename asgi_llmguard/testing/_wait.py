"""Polling helpers for tests: wait for a condition instead of sleeping blindly."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def wait_for(
    predicate: Callable[[], object],
    timeout: float = 1.0,  # noqa: ASYNC109 - a polling deadline, not a cancellation scope
    *,
    interval: float = 0.005,
) -> None:
    """Wait in the running event loop until ``predicate()`` is true.

    Polls every ``interval`` seconds, so it works whether the condition changes in this loop or
    in another thread (a server started with :func:`~asgi_llmguard.testing.serve`).

    Raises:
        TimeoutError: ``predicate()`` was still false after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"condition still false after {timeout} s")
        await asyncio.sleep(interval)


def wait_until(
    predicate: Callable[[], object], timeout: float = 1.0, *, interval: float = 0.005
) -> None:
    """Block the calling thread until ``predicate()`` is true; the sync twin of :func:`wait_for`.

    Only useful when the condition is changed by another thread, e.g. a
    :class:`~asgi_llmguard.testing.FakeProvider` running under :func:`~asgi_llmguard.testing.serve`.

    Raises:
        TimeoutError: ``predicate()`` was still false after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"condition still false after {timeout} s")
        time.sleep(interval)
