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
from collections.abc import Callable, Iterator

import pytest

from asgi_llmguard.errors import ConfigurationError
from asgi_llmguard.forward.cooldowns import (
    CooldownPolicy,
    MemoryCooldowns,
    classify_failure,
    retry_after_hint,
)
from asgi_llmguard.forward.shared_cooldowns import RedisCooldowns
from asgi_llmguard.providers import provider_for
from tests.conftest import require_service


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


NOW = 1_000_000.0
# The reset headers of OpenAI's and Anthropic's wires, as their adapters declare them.
RESETS = {**provider_for("openai").reset_headers, **provider_for("anthropic").reset_headers}


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
        ([(b"retry-after", email.utils.formatdate(NOW - 30, usegmt=True).encode())], 0.0),
        ([(b"x-ratelimit-reset-requests", b"0.5")], 0.5),
        ([(b"anthropic-ratelimit-requests-reset", b"1970-01-12T14:46:50+01:00")], 10.0),
        (
            [
                (b"anthropic-ratelimit-input-tokens-reset", b"1970-01-12T13:47:00Z"),
                (b"anthropic-ratelimit-output-tokens-reset", b"1970-01-12T13:48:00Z"),
                (b"x-unrelated", b"99999"),
            ],
            80.0,
        ),
    ],
)
def test_provider_hints_are_read(headers: list[tuple[bytes, bytes]], expected: float) -> None:
    assert retry_after_hint(headers, NOW, RESETS) == pytest.approx(expected)


@pytest.mark.parametrize(
    "value",
    [
        b"soon",
        b"",
        b"nan",
        b"1e400x",
        b"\xff\xfe",
        b"6m0",
        b"m",
        b"Tue, 99 Foo 2026",
        b"1970-01-12T13:47:00",  # no offset: not RFC 3339
        b"9" * 400,
    ],
)
def test_garbage_hints_are_ignored(value: bytes) -> None:
    names = (b"retry-after", b"retry-after-ms", b"x-ratelimit-reset-tokens")
    for name in (*names, b"anthropic-ratelimit-requests-reset"):
        hint = retry_after_hint([(name, value)], NOW, RESETS)
        assert hint is None or (value == b"9" * 400 and hint == 86_400.0)
    # A garbage header next to a good one does not hide it.
    assert retry_after_hint([(b"retry-after", value), (b"retry-after-ms", b"1500")], NOW) in (
        1.5,
        86_400.0,
    )


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
    assert (c.until - clock.now, c.reason, c.failures) == (42, "rate_limited", 1)
    c = await store.record_failure("b", "m", status=500)
    assert c is not None
    assert (c.until - clock.now, c.reason) == (5, "server_error")
    c = await store.record_failure("b2", "m", status=503, retry_after=20)
    assert c is not None
    assert (c.until - clock.now, c.reason) == (20, "server_error")  # a 503's Retry-After
    for kind in ("connect", "timeout", "broken"):
        c = await store.record_failure(f"c-{kind}", "m", status=None, kind=kind)
        assert c is not None
        assert (c.until - clock.now, c.reason) == (3, "timeout")
    c = await store.record_failure("d", "m", status=401, retry_after=5)
    assert c is not None
    assert (c.until - clock.now, c.reason, c.model) == (3600, "auth", "")
    assert await store.record_failure("e", "m", status=400) is None
    assert await store.record_failure("e", "m", status=None, kind="cancelled") is None
    assert store.cooling_until("e", "m") is None
    # An auth failure cools the whole credential, every model.
    assert store.cooling_until("d", "other-model") == clock.now + 3600
    assert store.cooling_until("a", "other-model") is None
    assert store.cooling_until("a", "m") == clock.now + 42
    clock.now += 42
    assert store.cooling_until("a", "m") is None  # expired counts as not cooling


async def test_a_credential_wide_entry_covers_every_model_and_the_later_end_wins() -> None:
    clock = Clock()
    store = MemoryCooldowns(clock=clock)
    await store.record_failure("a", "m", status=429, retry_after=10)
    await store.record_failure("a", "", status=500)  # credential-wide: 5 s
    assert store.cooling_until("a", "m") == clock.now + 10
    assert store.cooling_until("a", "other") == clock.now + 5
    assert store.cooling_until("a", "") == clock.now + 5
    assert store.cooling_until("b", "m") is None
    clock.now += 6
    assert store.cooling_until("a", "other") is None
    assert store.cooling_until("a", "m") == clock.now + 4


async def test_concurrent_failures_inside_a_window_escalate_once() -> None:
    clock = Clock()
    store = MemoryCooldowns(CooldownPolicy(base=1, cap=60), clock=clock)
    started = clock.now - 0.5  # all ten attempts began before the first failure was seen
    results = await asyncio.gather(
        *(store.record_failure("a", "m", status=429, started=started) for _ in range(10))
    )
    assert [c.failures for c in results if c is not None] == [1] * 10
    assert len({c.until for c in results if c is not None}) == 1  # not extended by each
    clock.now += 1.2  # expired
    late = await store.record_failure("a", "m", status=429, started=started)
    assert late is not None
    assert late.failures == 1  # began before the cooldown was set: not a new failure
    clock.now = late.until + 0.1
    fresh = await store.record_failure("a", "m", status=429, started=clock.now - 0.01)
    assert fresh is not None
    assert fresh.failures == 2
    assert 1.8 <= fresh.until - clock.now <= 2.2


async def test_a_failure_while_cooling_extends_only_for_a_later_hint() -> None:
    clock = Clock()
    store = MemoryCooldowns(CooldownPolicy(base=10, cap=60), clock=clock)
    first = await store.record_failure("a", "m", status=429)
    assert first is not None
    clock.now += 1
    same = await store.record_failure("a", "m", status=500)
    assert same is not None
    assert (same.until, same.reason, same.failures) == (first.until, "rate_limited", 1)
    shorter = await store.record_failure("a", "m", status=429, retry_after=2)
    assert shorter is not None
    assert shorter.until == first.until
    longer = await store.record_failure("a", "m", status=429, retry_after=30)
    assert longer is not None
    assert (longer.until, longer.failures) == (clock.now + 30, 1)


async def test_success_resets_the_escalation_but_not_a_running_cooldown() -> None:
    clock = Clock()
    store = MemoryCooldowns(CooldownPolicy(base=1, cap=60), clock=clock)
    first = await store.record_failure("a", "m", status=429)
    assert first is not None
    await store.record_success("a", "m")  # an attempt that began before the cooldown
    assert store.cooling_until("a", "m") == first.until
    clock.now = first.until + 0.1
    await store.record_success("a", "m")
    assert len(store) == 0
    again = await store.record_failure("a", "m", status=429)
    assert again is not None
    assert again.failures == 1
    await store.record_success("unknown", "m")  # a no-op
    assert len(store) == 1


async def test_the_escalation_is_forgotten_after_a_quiet_period() -> None:
    clock = Clock()
    store = MemoryCooldowns(CooldownPolicy(base=4, cap=100), clock=clock)
    c = await store.record_failure("a", "m", status=429)
    assert c is not None
    clock.now = c.until + 1  # within the memory (as long as the cooldown lasted)
    c = await store.record_failure("a", "m", status=429)
    assert c is not None
    assert c.failures == 2
    length = c.until - clock.now
    clock.now = c.until + length + 0.01  # quiet for as long as that cooldown lasted
    c = await store.record_failure("a", "m", status=429)
    assert c is not None
    assert c.failures == 1


async def test_the_map_is_bounded_and_expired_entries_are_pruned() -> None:
    clock = Clock()
    store = MemoryCooldowns(CooldownPolicy(base=1, cap=2, max_entries=500), clock=clock)
    for i in range(100_000):
        await store.record_failure("a", f"model-{i}", status=429, retry_after=i / 1000)
        assert len(store) <= 500
    # The entries kept are the latest-ending ones, still cooling.
    assert store.cooling_until("a", "model-99999") is not None
    assert store.cooling_until("a", "model-0") is None
    clock.now += 200
    assert store.snapshot() == []
    assert len(store) == 0


async def test_forgotten_entries_are_pruned_without_a_snapshot() -> None:
    clock = Clock()
    store = MemoryCooldowns(CooldownPolicy(base=1, cap=2), clock=clock)
    for i in range(1000):
        await store.record_failure("a", f"old-{i}", status=500)
    clock.now += 100
    for i in range(1100):  # recording goes on for other pairs: the old ones go
        await store.record_failure("b", f"new-{i}", status=500)
    assert len(store) < 2000


async def test_snapshot_and_reset() -> None:
    clock = Clock()
    store = MemoryCooldowns(clock=clock)
    await store.record_failure("a", "m1", status=429, retry_after=30)
    await store.record_failure("a", "m2", status=500)
    await store.record_failure("b", "m1", status=429, retry_after=10)
    await store.record_failure("c", "m1", status=429, retry_after=10)
    pairs = [(c.credential_id, c.model) for c in store.snapshot()]
    assert (pairs[0], pairs[-1], len(pairs)) == (("a", "m2"), ("a", "m1"), 4)
    assert await store.reset(credential_id="c", model="m1") == 1
    assert await store.reset(model="m1") == 2
    assert await store.reset(credential_id="a") == 1
    assert await store.reset() == 0
    assert store.snapshot() == []
    assert len(store) == 0


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


async def eventually(check: Callable[[], bool], seconds: float = 5.0) -> None:
    """Wait for a background refresh to show its effect (bounded; not a timing assertion)."""
    for _ in range(int(seconds / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    assert check()


URL = "redis://127.0.0.1:6379/0"


async def test_replicas_share_cooldowns_through_redis(prefix: str) -> None:
    clock = Clock(time.time())
    one = RedisCooldowns(URL, prefix=prefix, refresh=0.02, clock=clock)
    two = RedisCooldowns.from_url(URL, prefix=prefix, refresh=0.02, clock=clock)
    try:
        assert two.cooling_until("a", "m") is None  # starts the refresher
        c = await one.record_failure("a", "m", status=429, retry_after=30)
        assert c is not None
        await eventually(lambda: two.cooling_until("a", "m") is not None)
        assert two.cooling_until("a", "m") == pytest.approx(c.until, abs=1e-5)
        assert [(x.credential_id, x.model) for x in two.snapshot()] == [("a", "m")]

        # An auth failure on one replica rests the whole credential on the other.
        await one.record_failure("k", "m", status=401)
        await eventually(lambda: two.cooling_until("k", "any-model") is not None)

        # An operator's reset on one replica clears it for the other.
        assert await two.reset(credential_id="a") == 1
        assert two.cooling_until("a", "m") is None
        await eventually(lambda: one.cooling_until("a", "m") is None)
        assert await one.reset() == 1  # "k"
        await eventually(lambda: len(two) == 0)
    finally:
        await one.aclose()
        await two.aclose()


async def test_replicas_escalate_once_and_share_the_level(prefix: str) -> None:
    clock = Clock(time.time())
    policy = CooldownPolicy(base=10, cap=100)
    one = RedisCooldowns(URL, policy, prefix=prefix, refresh=0.02, clock=clock)
    two = RedisCooldowns(URL, policy, prefix=prefix, refresh=0.02, clock=clock)
    try:
        started = clock.now - 1
        results = await asyncio.gather(
            *(r.record_failure("a", "m", status=429, started=started) for r in (one, two) * 5)
        )
        assert [x.failures for x in results if x is not None] == [1] * 10
        assert len({x.until for x in results if x is not None}) == 1
        # After it expired, a failure on the other replica escalates from the shared level.
        clock.now = results[0].until + 1  # type: ignore[union-attr]
        c = await two.record_failure("a", "m", status=429, started=clock.now - 0.1)
        assert c is not None
        assert c.failures == 2
        assert 18 <= c.until - clock.now <= 22
        until = c.until
        await eventually(lambda: one.cooling_until("a", "m") == until)
        # A success forgets the level on every replica.
        clock.now = c.until + 1
        await one.record_success("a", "m")
        c = await two.record_failure("a", "m", status=429, started=clock.now - 0.1)
        assert c is not None
        assert c.failures == 1
    finally:
        await one.aclose()
        await two.aclose()


async def test_redis_prunes_forgotten_entries(prefix: str) -> None:
    import redis.asyncio as aioredis

    clock = Clock(time.time())
    client = aioredis.Redis()
    store = RedisCooldowns(client, CooldownPolicy(cap=2), prefix=prefix, refresh=0.02, clock=clock)
    try:
        for i in range(50):
            await store.record_failure("a", f"m{i}", status=500)
        assert await client.hlen(f"{prefix}active") == 50
        assert await client.ttl(f"{prefix}active") > 0  # the hash cannot outlive its entries
        clock.now += 100
        store.cooling_until("a", "m0")  # starts the refresher
        await eventually(lambda: len(store) == 0)
        assert store.snapshot() == []
        for _ in range(250):
            if await client.hlen(f"{prefix}active") == 0:
                break
            await asyncio.sleep(0.02)
        assert await client.hlen(f"{prefix}active") == 0
    finally:
        await store.aclose()
        await client.aclose()  # the caller's client: the store does not close it


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
    import redis.asyncio as aioredis

    port = _free_port()
    proc = _start_redis(port)
    url = f"redis://:s3cret-password@127.0.0.1:{port}/0"
    store = RedisCooldowns(url, refresh=0.02, timeout=0.2)
    other = RedisCooldowns(url, refresh=0.02, timeout=0.2)
    client = aioredis.Redis(port=port, password="s3cret-password")
    await client.config_set("requirepass", "s3cret-password")
    key = "llmguard:cooldown:active"
    try:
        await store.record_failure("a", "m", status=429, retry_after=30)
        proc.kill()  # SIGKILL
        proc.wait()
        with caplog.at_level(logging.WARNING, logger="asgi_llmguard.forward"):
            for i in range(5):
                c = await store.record_failure("b", f"m{i}", status=500)  # must not raise
                assert c is not None
            await store.record_success("zz", "m")
            assert await store.reset(credential_id="nobody") == 0
            assert store.cooling_until("b", "m0") is not None  # local state still works
            assert store.cooling_until("a", "m") is not None  # the mirror is kept
            assert store.cooling_until("c", "m") is None
            await asyncio.sleep(0.1)  # several refreshes fail meanwhile
            assert store.cooling_until("a", "m") is not None
        outage = [r for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(outage) == 1  # one line per outage, not per call
        assert "s3cret" not in caplog.text
        assert f"127.0.0.1:{port}" in outage[0].getMessage()

        caplog.set_level(logging.WARNING, logger="asgi_llmguard.forward")
        proc = _start_redis(port)
        await client.config_set("requirepass", "s3cret-password")
        # Sharing resumes: what was set during the outage reaches Redis, and so do new failures.
        for _ in range(250):
            if await client.hexists(key, "b\x1fm4"):
                break
            await asyncio.sleep(0.02)
        assert await client.hexists(key, "b\x1fm4")
        await eventually(lambda: any("reachable again" in r.getMessage() for r in caplog.records))
        c = await store.record_failure("c", "m", status=429, retry_after=30)
        assert c is not None
        assert await client.hexists(key, "c\x1fm")
        await eventually(lambda: other.cooling_until("b", "m4") is not None)
        await eventually(lambda: other.cooling_until("c", "m") is not None)
    finally:
        await store.aclose()
        await other.aclose()
        await client.aclose()
        proc.kill()
        proc.wait()


def test_a_provider_reads_only_its_own_reset_headers() -> None:
    anthropic_reset = [(b"anthropic-ratelimit-tokens-reset", b"1970-01-12T13:47:00Z")]
    openai_reset = [(b"x-ratelimit-reset-requests", b"6m0s")]
    anthropic = provider_for("anthropic").reset_headers
    assert retry_after_hint(anthropic_reset, NOW, anthropic) == pytest.approx(20.0)
    assert retry_after_hint(openai_reset, NOW, anthropic) is None
    assert retry_after_hint(openai_reset, NOW, provider_for("azure").reset_headers) == 360.0
    assert retry_after_hint(anthropic_reset + openai_reset, NOW, {}) is None
