"""`CachedKeyStore`: a bounded TTL cache in front of any `KeyStore`.

Hits and misses are cached in two separate LRU maps, each with its own bound and TTL, so a flood
of wrong keys (every one a miss, every one distinct) can neither grow memory without bound nor
push the valid keys out of the cache, and a repeated wrong key costs one database query per
``negative_ttl``. Concurrent lookups of the same digest share one query to the store.

A key revoked through this object is dropped from the cache at once. A key revoked elsewhere
(the CLI, another replica) stops working when its entry expires (``ttl``), or at once after
`CachedKeyStore.invalidate`.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import NamedTuple

from asgi_llmguard.errors import ConfigurationError
from asgi_llmguard.keys.base import KeyRecord, KeyStore, WritableKeyStore
from asgi_llmguard.lifecycle import Resource
from asgi_llmguard.policy import KeyPolicy
from asgi_llmguard.types import Clock


class CacheInfo(NamedTuple):
    hits: int
    misses: int
    #: Lookups that went to the underlying store.
    store_lookups: int
    entries: int
    negative_entries: int


class CachedKeyStore(Resource):
    """Cache ``store``'s answers: policies for ``ttl`` seconds, unknown digests for
    ``negative_ttl`` seconds; at most ``max_entries`` of each (``max_negative_entries``, default
    the same), least recently used evicted first. ``clock`` is injectable for tests.

    Errors of the store are not cached: the next lookup asks again.
    """

    def __init__(
        self,
        store: KeyStore,
        *,
        ttl: float = 30.0,
        max_entries: int = 10_000,
        negative_ttl: float = 5.0,
        max_negative_entries: int | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        if ttl < 0 or negative_ttl < 0:
            raise ConfigurationError("CachedKeyStore: ttl and negative_ttl must be >= 0")
        if max_entries < 1 or (max_negative_entries is not None and max_negative_entries < 1):
            raise ConfigurationError("CachedKeyStore: the maximum numbers of entries must be >= 1")
        self.store = store
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._max = max_entries
        self._max_negative = max_negative_entries or max_entries
        self._clock = clock
        self._found: OrderedDict[str, tuple[float, KeyPolicy]] = OrderedDict()
        self._missing: OrderedDict[str, float] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[KeyPolicy | None]] = {}
        # Bumped by every invalidation: a lookup that started before it must not fill the cache
        # with what may be the pre-revocation answer.
        self._generation = 0
        self._hits = self._misses = self._store_lookups = 0

    async def lookup(self, key_hash: str) -> KeyPolicy | None:
        now = self._clock()
        found = self._found.get(key_hash)
        if found is not None:
            if found[0] > now:
                self._found.move_to_end(key_hash)
                self._hits += 1
                return found[1]
            del self._found[key_hash]
        else:
            expires = self._missing.get(key_hash)
            if expires is not None:
                if expires > now:
                    self._missing.move_to_end(key_hash)
                    self._hits += 1
                    return None
                del self._missing[key_hash]
        self._misses += 1
        loop = asyncio.get_running_loop()
        pending = self._inflight.get(key_hash)
        if pending is not None and pending.get_loop() is loop:
            return await self._follow(pending, key_hash)
        return await self._lead(key_hash, loop)

    async def _lead(self, key_hash: str, loop: asyncio.AbstractEventLoop) -> KeyPolicy | None:
        """Ask the store, in the caller's own task; concurrent lookups of the same digest wait
        for this one's answer (a future, not a task per miss: a miss costs no loop round trip)."""
        answer: asyncio.Future[KeyPolicy | None] = loop.create_future()
        self._inflight[key_hash] = answer
        generation = self._generation
        self._store_lookups += 1
        try:
            policy = await self.store.lookup(key_hash)
        except BaseException as exc:
            if self._inflight.get(key_hash) is answer:
                del self._inflight[key_hash]
            if isinstance(exc, asyncio.CancelledError):
                answer.cancel()  # the followers ask again themselves
            else:
                answer.set_exception(exc)
                answer.exception()  # marked retrieved: the followers raise it, if there are any
            raise
        if self._inflight.get(key_hash) is answer:
            del self._inflight[key_hash]
        answer.set_result(policy)
        if generation == self._generation:
            self._remember(key_hash, policy)
        return policy

    async def _follow(
        self, answer: asyncio.Future[KeyPolicy | None], key_hash: str
    ) -> KeyPolicy | None:
        try:
            # Shielded: a follower that is cancelled does not cancel the answer others await.
            return await asyncio.shield(answer)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if answer.cancelled() and task is not None and task.cancelling() == 0:
                return await self.lookup(key_hash)  # the leader was cancelled, not this caller
            raise

    def _remember(self, key_hash: str, policy: KeyPolicy | None) -> None:
        now = self._clock()
        if policy is not None:
            if self._ttl > 0:
                self._found[key_hash] = (now + self._ttl, policy)
                self._found.move_to_end(key_hash)
                while len(self._found) > self._max:
                    self._found.popitem(last=False)
        elif self._negative_ttl > 0:
            self._missing[key_hash] = now + self._negative_ttl
            self._missing.move_to_end(key_hash)
            while len(self._missing) > self._max_negative:
                self._missing.popitem(last=False)

    def invalidate(self, key_hash: str | None = None) -> None:
        """Forget what is cached about one digest, or about every digest."""
        self._generation += 1
        if key_hash is None:
            self._found.clear()
            self._missing.clear()
            self._inflight.clear()
        else:
            self._found.pop(key_hash, None)
            self._missing.pop(key_hash, None)
            self._inflight.pop(key_hash, None)

    def invalidate_key_id(self, key_id: str) -> None:
        """Forget the cached policies of the keys with this id."""
        self._generation += 1
        for key_hash, (_, policy) in list(self._found.items()):
            if policy.key_id == key_id:
                self._found.pop(key_hash, None)
        self._inflight.clear()

    def cache_info(self) -> CacheInfo:
        return CacheInfo(
            self._hits, self._misses, self._store_lookups, len(self._found), len(self._missing)
        )

    # -- management, through to the store -------------------------------------------------------

    def _writable(self) -> WritableKeyStore:
        store = self.store
        if not isinstance(store, WritableKeyStore):
            raise TypeError(f"{store!r} is read-only")
        return store

    async def create(self, policy: KeyPolicy, key_hash: str) -> KeyRecord:
        record = await self._writable().create(policy, key_hash)
        self.invalidate(key_hash)  # a cached miss for it would refuse the new key for a while
        return record

    async def list(self) -> Sequence[KeyRecord]:
        return await self._writable().list()

    async def revoke(self, key_id: str) -> bool:
        revoked = await self._writable().revoke(key_id)
        self.invalidate_key_id(key_id)
        return revoked

    async def aclose(self) -> None:
        self.invalidate()
        await self.store.aclose()

    def __repr__(self) -> str:
        return f"<CachedKeyStore {self.store!r} ttl={self._ttl} max_entries={self._max}>"
