"""`CachedKeyStore`: TTLs on an injected clock, the bounds (M1), single-flight, invalidation."""

from __future__ import annotations

import asyncio
import tracemalloc

import pytest

from asgi_llmguard.errors import ConfigurationError
from asgi_llmguard.keys import (
    CachedKeyStore,
    SQLiteKeyStore,
    StaticKey,
    StaticKeyStore,
    hash_key,
    issue_key,
)
from asgi_llmguard.policy import KeyPolicy

pytestmark = pytest.mark.anyio

GOOD = hash_key("sk-good")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Counting:
    """A store that counts its lookups, optionally slow or failing."""

    def __init__(self, delay: float = 0.0) -> None:
        self.inner = StaticKeyStore([StaticKey(KeyPolicy(key_id="good"), key="sk-good")])
        self.lookups: list[str] = []
        self.count = 0
        self.record = True
        self.delay = delay
        self.fail = False
        self.closed = False

    async def lookup(self, key_hash: str) -> KeyPolicy | None:
        self.count += 1
        if self.record:
            self.lookups.append(key_hash)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail:
            raise ConnectionError("database down")
        return await self.inner.lookup(key_hash)

    async def aclose(self) -> None:
        self.closed = True


async def test_hits_expire_after_ttl_and_misses_after_negative_ttl():
    clock, inner = Clock(), Counting()
    cache = CachedKeyStore(inner, ttl=30, negative_ttl=5, clock=clock)
    bad = hash_key("sk-bad")
    for _ in range(3):
        assert (await cache.lookup(GOOD)).key_id == "good"
        assert await cache.lookup(bad) is None
    assert inner.lookups == [GOOD, bad]
    clock.now += 5.1  # the miss expired, the hit did not
    assert await cache.lookup(bad) is None
    assert await cache.lookup(GOOD) is not None
    assert inner.lookups == [GOOD, bad, bad]
    clock.now += 25
    assert await cache.lookup(GOOD) is not None
    assert inner.lookups == [GOOD, bad, bad, GOOD]
    info = cache.cache_info()
    assert (info.hits, info.misses, info.store_lookups) == (5, 4, 4)


async def test_zero_ttls_cache_nothing():
    inner = Counting()
    cache = CachedKeyStore(inner, ttl=0, negative_ttl=0)
    for _ in range(3):
        await cache.lookup(GOOD)
        await cache.lookup(hash_key("x"))
    assert len(inner.lookups) == 6


async def test_least_recently_used_hit_is_evicted_first():
    keys = [f"sk-{i}" for i in range(4)]
    inner = StaticKeyStore([StaticKey(KeyPolicy(key_id=k), key=k) for k in keys])
    cache = CachedKeyStore(inner, max_entries=3)
    for k in keys[:3]:
        await cache.lookup(hash_key(k))
    await cache.lookup(hash_key(keys[0]))  # now the most recently used
    await cache.lookup(hash_key(keys[3]))  # evicts keys[1]
    assert list(cache._found) == [hash_key(k) for k in ("sk-2", "sk-0", "sk-3")]


async def test_a_flood_of_distinct_wrong_keys_stays_bounded_m1():
    inner = Counting()
    inner.record = False
    cache = CachedKeyStore(inner, max_entries=100, max_negative_entries=1000)
    assert await cache.lookup(GOOD) is not None
    for i in range(30_000):
        assert await cache.lookup(hash_key(f"sk-wrong-{i}")) is None
    tracemalloc.start()
    try:
        for i in range(30_000, 40_000):
            assert await cache.lookup(hash_key(f"sk-wrong-{i}")) is None
        after_40k, _ = tracemalloc.get_traced_memory()
        for i in range(40_000, 50_000):
            assert await cache.lookup(hash_key(f"sk-wrong-{i}")) is None
        after_50k, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    info = cache.cache_info()
    assert info.negative_entries == 1000
    assert info.entries == 1
    assert not cache._inflight
    # Memory plateaus: once the bound is reached, 10k more wrong keys add (next to) nothing.
    assert after_50k - after_40k < 16 * 1024
    # The valid key kept its place: the misses have their own map.
    assert inner.count == 50_001
    assert await cache.lookup(GOOD) is not None
    assert inner.count == 50_001
    # A wrong key repeated is one store lookup per negative_ttl, not one per request.
    for _ in range(100):
        await cache.lookup(hash_key("sk-wrong-49999"))
    assert inner.count == 50_001


async def test_concurrent_lookups_of_one_digest_share_one_store_query():
    inner = Counting(delay=0.05)
    cache = CachedKeyStore(inner)
    results = await asyncio.gather(*(cache.lookup(GOOD) for _ in range(50)))
    assert {p.key_id for p in results} == {"good"}
    assert inner.lookups == [GOOD]


async def test_a_cancelled_follower_does_not_cancel_the_shared_query():
    inner = Counting(delay=0.05)
    cache = CachedKeyStore(inner)
    leader = asyncio.create_task(cache.lookup(GOOD))
    await asyncio.sleep(0.01)
    followers = [asyncio.create_task(cache.lookup(GOOD)) for _ in range(3)]
    await asyncio.sleep(0.01)
    followers[0].cancel()
    assert (await leader).key_id == "good"
    assert [(await f).key_id for f in followers[1:]] == ["good", "good"]
    assert followers[0].cancelled()
    assert inner.lookups == [GOOD]


async def test_a_cancelled_leader_leaves_its_followers_to_ask_again():
    inner = Counting(delay=0.05)
    cache = CachedKeyStore(inner)
    leader = asyncio.create_task(cache.lookup(GOOD))
    await asyncio.sleep(0.01)
    followers = [asyncio.create_task(cache.lookup(GOOD)) for _ in range(3)]
    await asyncio.sleep(0.01)
    leader.cancel()
    assert [(await f).key_id for f in followers] == ["good"] * 3
    assert leader.cancelled()
    assert inner.lookups == [GOOD, GOOD]  # the cancelled query, and one new one for all three
    assert not cache._inflight


async def test_followers_get_the_leaders_error():
    inner = Counting(delay=0.02)
    inner.fail = True
    cache = CachedKeyStore(inner)
    results = await asyncio.gather(*(cache.lookup(GOOD) for _ in range(3)), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    assert inner.count == 1


async def test_store_errors_are_not_cached():
    inner = Counting()
    cache = CachedKeyStore(inner)
    inner.fail = True
    for _ in range(2):
        with pytest.raises(ConnectionError):
            await cache.lookup(GOOD)
    inner.fail = False
    assert await cache.lookup(GOOD) is not None
    assert len(inner.lookups) == 3


async def test_invalidate_after_a_revocation_elsewhere_refuses_the_next_lookup(tmp_path):
    sqlite = SQLiteKeyStore(tmp_path / "k.sqlite3")
    cache = CachedKeyStore(sqlite)
    issued = await issue_key(sqlite, name="team-a")
    digest = hash_key(issued.key)
    assert not (await cache.lookup(digest)).revoked
    # Revoked by another process (the CLI): the cache still has the old answer ...
    other = SQLiteKeyStore(tmp_path / "k.sqlite3")
    assert await other.revoke("team-a")
    await other.aclose()
    assert not (await cache.lookup(digest)).revoked
    # ... until it is invalidated.
    cache.invalidate(digest)
    assert (await cache.lookup(digest)).revoked
    await cache.aclose()


async def test_revoking_through_the_cache_takes_effect_at_once(tmp_path):
    cache = CachedKeyStore(SQLiteKeyStore(tmp_path / "k.sqlite3"), ttl=3600)
    issued = await issue_key(cache, name="team-a")
    kept = await issue_key(cache, name="team-b")
    assert not (await cache.lookup(hash_key(issued.key))).revoked
    assert not (await cache.lookup(hash_key(kept.key))).revoked
    assert await cache.revoke("team-a")
    assert (await cache.lookup(hash_key(issued.key))).revoked
    assert cache.cache_info().entries == 2  # team-b stayed cached; team-a cached again, revoked
    assert [r.key_id for r in await cache.list()] == ["team-a", "team-b"]
    await cache.aclose()


async def test_creating_a_key_forgets_a_cached_miss_for_it(tmp_path):
    cache = CachedKeyStore(SQLiteKeyStore(tmp_path / "k.sqlite3"), negative_ttl=3600)
    policy = KeyPolicy(key_id="late")
    digest = hash_key("sk-late")
    assert await cache.lookup(digest) is None
    await cache.create(policy, digest)
    assert (await cache.lookup(digest)).key_id == "late"
    await cache.aclose()


async def test_an_invalidation_during_a_lookup_keeps_its_answer_out_of_the_cache():
    inner = Counting(delay=0.05)
    cache = CachedKeyStore(inner)
    pending = asyncio.create_task(cache.lookup(GOOD))
    await asyncio.sleep(0.01)
    cache.invalidate()
    assert (await pending).key_id == "good"  # answered, but possibly from before a revocation
    assert cache.cache_info().entries == 0
    await cache.lookup(GOOD)
    assert inner.lookups == [GOOD, GOOD]


async def test_management_needs_a_writable_store_and_aclose_closes_it():
    inner = Counting()
    cache = CachedKeyStore(inner)
    with pytest.raises(TypeError, match="read-only"):
        await cache.revoke("good")
    await cache.aclose()
    assert inner.closed


@pytest.mark.parametrize(
    "kwargs", [{"ttl": -1}, {"negative_ttl": -1}, {"max_entries": 0}, {"max_negative_entries": 0}]
)
def test_bad_cache_settings(kwargs):
    with pytest.raises(ConfigurationError):
        CachedKeyStore(Counting(), **kwargs)
