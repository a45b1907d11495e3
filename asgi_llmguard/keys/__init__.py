"""Virtual keys: hashing, the `KeyStore` protocol and its stores, and a cache for them.

Keys are stored only as SHA-256 digests (`hash_key`). Stores:

- `StaticKeyStore`: a fixed set from keyword arguments or the config file;
- `SQLiteKeyStore`: the embedded default, written by ``asgi-llmguard keys``;
- `PostgresKeyStore`: one store shared by every replica (the ``postgres`` extra);
- `CachedKeyStore`: a bounded TTL cache (hits and misses) in front of any of them.

The auth layer (`asgi_llmguard.middleware.auth.AuthMiddleware`) resolves a caller's key with them.
"""

from asgi_llmguard.keys.base import (
    IssuedKey,
    KeyExists,
    KeyRecord,
    KeyStore,
    KeyStoreClosed,
    WritableKeyStore,
    issue_key,
    make_policy,
)
from asgi_llmguard.keys.cache import CachedKeyStore, CacheInfo
from asgi_llmguard.keys.hashing import (
    DEFAULT_PREFIX,
    generate_key,
    hash_key,
    hashes_match,
    is_key_hash,
    key_id_for,
)
from asgi_llmguard.keys.postgres import PostgresKeyStore
from asgi_llmguard.keys.sqlite import SQLiteKeyStore
from asgi_llmguard.keys.static import StaticKey, StaticKeyStore
from asgi_llmguard.keys.url import store_from_url

__all__ = [
    "DEFAULT_PREFIX",
    "CacheInfo",
    "CachedKeyStore",
    "IssuedKey",
    "KeyExists",
    "KeyRecord",
    "KeyStore",
    "KeyStoreClosed",
    "PostgresKeyStore",
    "SQLiteKeyStore",
    "StaticKey",
    "StaticKeyStore",
    "WritableKeyStore",
    "generate_key",
    "hash_key",
    "hashes_match",
    "is_key_hash",
    "issue_key",
    "key_id_for",
    "make_policy",
    "store_from_url",
]
