"""Cooldowns per (credential, model): durations, provider hints, escalation, bounds, Redis sharing.

Memory tests use an injected clock (no sleeps). Redis tests use the shared server with a unique
prefix, and a private ``redis-server`` for the outage case.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest

from asgi_llmguard.errors import ConfigurationError
from asgi_llmguard.forward.cooldowns import (
    CooldownPolicy,
    MemoryCooldowns,
    RedisCooldowns,
    classify_failure,
    retry_after_hint,
)
from tests.conftest import require_service


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


NOW = 1_000_000.0


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([(b"retry-after", b"7")], 7.0),
        ([(b"retry-after", b"1.5")], 1.5),
        ([(b"retry-after-ms", b"250")], 0.25),
        ([(b"retry-after", email.utils.formatdate(NOW + 30, usegmt=True).encode())], 30.0),
        ([(b"x-ratelimit-reset-requests", b"6m0s")], 360.0),
        ([(b"x-ratelimit-reset-tokens", b"20ms")], 0.02),
        ([(b"x-ratelimit-reset-tokens", b"1h2m3.5s")], 3723.5),
        ([(b"anthropic-ratelimit-tokens-reset", b"1970-01-12T13:47:00Z")], 20.0),
        ([(b"retry-after", b"3"), (b"x-ratelimit-reset-requests", b"10s")], 10.0),
        ([(b"retry-after", b"999999999")], 86_400.0),
        ([(b"retry-after", b"-5")], 0.0),
    ],
)
def test_provider_hints_are_read(headers: list[tuple[bytes, bytes]], expected: float) -> None:
    assert retry_after_hint(headers, NOW) == pytest.approx(expected)


@pytest.mark.parametrize(
    "value",
    [b"soon", b"", b"nan", b"1e400x", b"\xff\xfe", b"6m0", b"m", b"Tue, 99 Foo 2026"],
)
def test_garbage_hints_are_ignored(value: bytes) -> None:
    for name in (b"retry-after", b"retry-after-ms", b"x-ratelimit-reset-tokens"):
        assert retry_after_hint([(name, value)], NOW) in (None, 0.0)
    assert retry_after_hint([(b"anthropic-ratelimit-requests-reset", value)], NOW) is None


def test_failures_are_classified() -> None:
    assert classify_failure(429, None) == "rate_limited"
    assert [classify_failure(s, None) for s in (401, 402, 403)] == ["auth"] * 3
    assert classify_failure(503, None) == "server_error"
    assert classify_failure(None, "connect") == "timeout"
    assert classify_failure(0, "timeout") == "timeout"
    assert classify_failure(400, None) is None
    assert classify_failure(404, None) is None
    assert classify_failure(200, None) is None


def test_policy_is_validated() -> None:
    with pytest.raises(ConfigurationError):
        CooldownPolicy(base=0)
    with pytest.raises(ConfigurationError):
        CooldownPolicy(base=10, cap=5)


async def test_429_without_hint_backs_off_exponentially_up_to_the_cap() -> None:
    clock = Clock()
    store = MemoryCooldowns(CooldownPolicy(base=1, cap=8), clock=clock)
    lengths = []
    for _ in range(6):
        cooldown = await store.record_failure("a", "m", status=429)
        assert cooldown is not None
        lengths.append(cooldown.until - clock.now)
        clock.now = cooldown.until + 0.01  # the next failure comes after it expired
    for length, expected in zip(lengths, [1, 2, 4, 8, 8, 8], strict=True):
        assert expected * 0.9 <= length <= expected * 1.1


async def test_hints_and_reasons_set_the_duration() -> None:
    clock = Clock()
    policy = CooldownPolicy(auth=3600, server_error=5, timeout=3)
    store = MemoryCooldowns(policy, clock=clock)
    c = await store.record_failure("a", "m", status=429, retry_after=42)
    assert c is not None
    assert c.until - clock.now == 42
    assert c.reason == "rate_limited"
    c = await store.record_failure("b", "m", status=500)
    assert c is not None
    assert (c.until - clock.now, c.reason) == (5, "server_error")
    c = await store.record_failure("c", "m", status=None, kind="connect")
    assert c is not None
    assert (c.until - clock.now, c.reason) == (3, "timeout")
    c = await store.record_failure("d", "m", status=401)
    assert c is not None
    assert (c.until - clock.now, c.reason, c.model) == (3600, "auth", "")
    assert await store.record_failure("e", "m", status=400) is None
    # An auth failure cools the whole credential, every model.
    assert store.cooling_until("d", "other-model") == clock.now + 3600
    assert store.cooling_until("a", "other-model") is None
    assert store.cooling_until("a", "m") == clock.now + 42
    clock.now += 43
    assert store.cooling_until("a", "m") is None


async def test_concurrent_failures_inside_a_window_escalate_once() -> None:
    clock = Clock()
    store = MemoryCooldowns(CooldownPolicy(base=1, cap=60), clock=clock)
    started = clock.now - 0.5  # all ten attempts began before the first failure was seen
    results = await asyncio.gather(
        *(store.record_failure("a", "m", status=429, started=started) for _ in range(10))
    )
    assert {c.failures for c in results if c is not None} == {1}
    clock.now += 1.2  # expired
    late = await store.record_failure("a", "m", status=429, started=started)
    assert late is not None
    assert late.failures == 1  # began before the cooldown was set: not a new failure
    clock.now = late.until + 0.1
    fresh = await store.record_failure("a", "m", status=429, started=clock.now - 0.01)
    assert fresh is not None
    assert fresh.failures == 2


async def test_success_resets_the_escalation() -> None:
    clock = Clock()
    store = MemoryCooldowns(CooldownPolicy(base=1, cap=60), clock=clock)
    first = await store.record_failure("a", "m", status=429)
    assert first is not None
    clock.now = first.until + 0.1
    await store.record_success("a", "m")
    again = await store.record_failure("a", "m", status=429)
    assert again is not None
    assert again.failures == 1


async def test_the_map_is_bounded_and_expired_entries_are_pruned() -> None:
    clock = Clock()
    store = MemoryCooldowns(CooldownPolicy(base=1, cap=2, max_entries=500), clock=clock)
    for i in range(100_000):
        await store.record_failure("a", f"model-{i}", status=429)
        assert len(store) <= 500
    clock.now += 10
    assert store.snapshot() == []
    assert len(store) == 0


async def test_snapshot_and_reset() -> None:
    clock = Clock()
    store = MemoryCooldowns(clock=clock)
    await store.record_failure("a", "m1", status=429, retry_after=30)
    await store.record_failure("a", "m2", status=500)
    await store.record_failure("b", "m1", status=429, retry_after=10)
    assert [(c.credential_id, c.model) for c in store.snapshot()] == [
        ("a", "m2"),
        ("b", "m1"),
        ("a", "m1"),
    ]
    assert await store.reset(model="m1") == 2
    assert await store.reset(credential_id="a") == 1
    assert store.snapshot() == []


# ---------------------------------------------------------------------------- Redis


@pytest.fixture
def prefix() -> Iterator[str]:
    require_service("redis", "127.0.0.1", 6379)
    name = f"llmguard-test:{uuid.uuid4().hex}:"
    yield name
    import redis

    client = redis.Redis()
    for key in client.scan_iter(f"{name}*"):
        client.delete(key)
    client.close()


async def test_replicas_share_cooldowns_through_redis(prefix: str) -> None:
    one = RedisCooldowns("redis://127.0.0.1:6379/0", prefix=prefix, refresh=0.05)
    two = RedisCooldowns("redis://127.0.0.1:6379/0", prefix=prefix, refresh=0.05)
    try:
        assert two.cooling_until("a", "m") is None  # starts the refresher
        c = await one.record_failure("a", "m", status=429, retry_after=30)
        assert c is not None
        for _ in range(100):
            if two.cooling_until("a", "m") is not None:
                break
            await asyncio.sleep(0.02)
        until = two.cooling_until("a", "m")
        assert until is not None
        assert abs(until - c.until) < 0.01

        # failures on both replicas at once escalate once
        results = await asyncio.gather(
            *(r.record_failure("a", "m2", status=429) for r in (one, two, one, two))
        )
        assert {x.failures for x in results if x is not None} == {1}

        # an operator's reset on one replica clears it for the other
        assert await one.reset(credential_id="a") >= 2
        for _ in range(100):
            if two.cooling_until("a", "m") is None:
                break
            await asyncio.sleep(0.02)
        assert two.cooling_until("a", "m") is None
    finally:
        await one.aclose()
        await two.aclose()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_redis(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.02)
    proc.kill()
    raise RuntimeError("redis-server did not start")


async def test_redis_outage_falls_back_to_local_state(caplog: pytest.LogCaptureFixture) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    port = _free_port()
    proc = _start_redis(port)
    store = RedisCooldowns(f"redis://:s3cret@127.0.0.1:{port}/0", refresh=0.05)
    try:
        await store.record_failure("a", "m", status=429, retry_after=30)
        proc.kill()
        proc.wait()
        with caplog.at_level(logging.WARNING, logger="asgi_llmguard.forward"):
            c = await store.record_failure("b", "m", status=500)  # must not raise
            assert c is not None
            assert store.cooling_until("b", "m") is not None  # local state still works
            assert store.cooling_until("a", "m") is not None
            await asyncio.sleep(0.2)
        outage = [r for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(outage) == 1  # one line per outage, not per call
        assert "s3cret" not in caplog.text
        proc = _start_redis(port)
        await store.record_failure("c", "m", status=429, retry_after=30)
        import redis.asyncio as aioredis

        client = aioredis.Redis(port=port)
        fields = await client.hkeys("llmguard:cooldown:active")
        await client.aclose()
        assert b"c\x1fm" in fields  # sharing resumed
    finally:
        await store.aclose()
        proc.kill()
        proc.wait()
