"""The `KeyStore` protocol and what every store shares: records, policy encoding, issuing keys.

A store maps the SHA-256 digest of a key (`hash_key`) to its `KeyPolicy`. Read-only stores (the
static keys of a config file) implement `KeyStore`; stores that can be written (SQLite,
PostgreSQL) also implement `WritableKeyStore`, which the ``asgi-llmguard keys`` commands use.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import msgspec

from asgi_llmguard.errors import ConfigurationError
from asgi_llmguard.keys.hashing import DEFAULT_PREFIX, generate_key, hash_key, key_id_for
from asgi_llmguard.policy import KeyPolicy


@runtime_checkable
class KeyStore(Protocol):
    """Where the auth layer resolves a key's digest to its policy.

    ``lookup`` gets the digest (`hash_key`) of the key a caller presented and returns its policy,
    or ``None`` when no key has that digest. A revoked key's policy comes back with
    ``revoked=True`` (the auth layer refuses it like an unknown key, but can log which key it
    was). Implementations must return a policy only for an exact match of the digest, confirmed
    with `hashes_match` (``hmac.compare_digest``). ``aclose`` releases connections and threads.
    """

    async def lookup(self, key_hash: str) -> KeyPolicy | None: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class WritableKeyStore(KeyStore, Protocol):
    """A `KeyStore` that keys can be added to, listed from and revoked in.

    - ``create(policy, key_hash)``: store a new key's digest with its policy; `KeyExists` if the
      digest is already stored or another *active* key has the same ``policy.key_id``.
    - ``list()``: every key's `KeyRecord`, oldest first, revoked ones included; never a key or a
      digest.
    - ``revoke(key_id)``: revoke the active key with this id; ``False`` if there is none.
    """

    async def create(self, policy: KeyPolicy, key_hash: str) -> KeyRecord: ...

    async def list(self) -> Sequence[KeyRecord]: ...

    async def revoke(self, key_id: str) -> bool: ...


class KeyRecord(msgspec.Struct, frozen=True):
    """A stored key as listings show it: its id, name, policy and dates. Never the key or digest.

    ``created_at`` and ``revoked_at`` are Unix times (seconds).
    """

    key_id: str
    name: str | None
    policy: KeyPolicy
    created_at: float
    revoked_at: float | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


class KeyExists(ValueError):
    """A key with this digest, or an active key with this id, is already stored."""


class KeyStoreClosed(RuntimeError):
    """The store was used after ``aclose()``."""


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(KeyPolicy)


def encode_policy(policy: KeyPolicy) -> bytes:
    """The policy as stored: msgspec JSON, defaults omitted, ``revoked`` left to the row."""
    if policy.revoked:
        policy = msgspec.structs.replace(policy, revoked=False)
    return _encoder.encode(policy)


def decode_policy(data: bytes | str, *, revoked: bool) -> KeyPolicy:
    policy = _decoder.decode(data)
    return msgspec.structs.replace(policy, revoked=True) if revoked else policy


def make_policy(key_hash: str, *, name: str | None = None, **fields: Any) -> KeyPolicy:
    """A validated `KeyPolicy` for the key with this digest.

    ``fields`` are `KeyPolicy` fields as plain values (lists for sets, dicts for rate limits and
    budgets), as a config file or a command line gives them; they are checked and converted by
    msgspec. ``key_id`` is ``name`` if given, else the key's fingerprint.

    Raises `ConfigurationError` naming the field that is wrong.
    """
    if "key_id" in fields or "revoked" in fields:
        raise ConfigurationError("key_id and revoked are set by the key store, not by a policy")
    data = {"key_id": key_id_for(key_hash, name), "name": name, **fields}
    try:
        return msgspec.convert(data, KeyPolicy)
    except msgspec.ValidationError as exc:
        raise ConfigurationError(f"invalid key policy: {exc}") from None


def normalize_policy(policy: KeyPolicy) -> KeyPolicy:
    """The policy checked and with canonical types (tuples, frozensets), as a store returns it.

    `KeyPolicy(...)` does not check its arguments (msgspec checks on decode), so a policy written
    in Python may hold lists where sets belong; a round trip through msgspec fixes and checks it.
    """
    try:
        return msgspec.convert(msgspec.to_builtins(policy), KeyPolicy)
    except msgspec.ValidationError as exc:
        raise ConfigurationError(f"invalid key policy {policy.key_id!r}: {exc}") from None


@dataclass(frozen=True)
class IssuedKey:
    """A key just made by `issue_key`: the only time the key itself exists in the gateway."""

    key: str = field(repr=False)
    record: KeyRecord

    @property
    def key_id(self) -> str:
        return self.record.key_id


async def issue_key(
    store: WritableKeyStore,
    *,
    name: str | None = None,
    prefix: str = DEFAULT_PREFIX,
    **fields: Any,
) -> IssuedKey:
    """Generate a key, store its digest with a policy made from ``fields`` (see `make_policy`),
    and return it: show ``.key`` to its owner once; it cannot be recovered afterwards."""
    key = generate_key(prefix)
    key_hash = hash_key(key)
    policy = make_policy(key_hash, name=name, **fields)
    record = await store.create(policy, key_hash)
    return IssuedKey(key, record)


def now() -> float:
    return time.time()
