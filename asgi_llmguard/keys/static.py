"""`StaticKeyStore`: a fixed set of keys from keyword arguments or the config file.

Built once into a dict from digest to policy; a lookup is one dict access and one constant-time
comparison. The config file names each key's environment variable (or gives its digest); the CLI
reads the variable and passes the key here, so this module never reads the environment.
"""

from __future__ import annotations

from collections.abc import Iterable

from asgi_llmguard.errors import ConfigurationError
from asgi_llmguard.keys.base import normalize_policy
from asgi_llmguard.keys.hashing import hash_key, hashes_match, is_key_hash
from asgi_llmguard.lifecycle import Resource
from asgi_llmguard.policy import KeyPolicy


class StaticKey:
    """One configured key: its policy and either the key itself or its digest (`hash_key`).

    ``StaticKey(policy=KeyPolicy(key_id="team-a", models=("gpt-4o*",)), key=os.environ[...])``
    or ``StaticKey(policy=..., key_hash="<64 hex digits>")``. Only the digest is kept.
    """

    __slots__ = ("key_hash", "policy")

    def __init__(
        self, policy: KeyPolicy, *, key: str | None = None, key_hash: str | None = None
    ) -> None:
        if (key is None) == (key_hash is None):
            raise ConfigurationError(f"key {policy.key_id!r}: give exactly one of key or key_hash")
        if key is not None:
            if not key or not key.isascii() or not key.isprintable() or " " in key:
                raise ConfigurationError(
                    f"key {policy.key_id!r}: a key must be non-empty printable ASCII, no spaces"
                )
            key_hash = hash_key(key)
        elif key_hash is not None and not is_key_hash(key_hash):
            raise ConfigurationError(
                f"key {policy.key_id!r}: key_hash must be the 64 lowercase hex digits of the "
                'key\'s SHA-256 (e.g. `printf %s "$KEY" | sha256sum`)'
            )
        assert key_hash is not None
        self.key_hash = key_hash
        self.policy = policy

    def __repr__(self) -> str:
        return f"StaticKey(key_id={self.policy.key_id!r})"


class StaticKeyStore(Resource):
    """A read-only `KeyStore` over a fixed set of `StaticKey` entries.

    Two entries with the same key, or two active entries with the same ``key_id``, are a
    `ConfigurationError`: their usage and limits would silently merge.
    """

    def __init__(self, keys: Iterable[StaticKey]) -> None:
        table: dict[str, tuple[str, KeyPolicy]] = {}
        active_ids: set[str] = set()
        for entry in keys:
            if not isinstance(entry, StaticKey):
                raise ConfigurationError(f"StaticKeyStore takes StaticKey entries, not {entry!r}")
            policy = normalize_policy(entry.policy)
            if entry.key_hash in table:
                other = table[entry.key_hash][1].key_id
                raise ConfigurationError(f"keys {other!r} and {policy.key_id!r} are the same key")
            if not policy.revoked:
                if policy.key_id in active_ids:
                    raise ConfigurationError(f"two active keys have the id {policy.key_id!r}")
                active_ids.add(policy.key_id)
            table[entry.key_hash] = (entry.key_hash, policy)
        self._table = table

    async def lookup(self, key_hash: str) -> KeyPolicy | None:
        entry = self._table.get(key_hash)
        # The dict found the entry by its digest; confirm it in constant time all the same.
        if entry is None or not hashes_match(entry[0], key_hash):
            return None
        return entry[1]

    async def aclose(self) -> None:
        return None

    def policies(self) -> list[KeyPolicy]:
        """Every configured key's policy (for listings; never a key or a digest)."""
        return [policy for _, policy in self._table.values()]

    def __len__(self) -> int:
        return len(self._table)

    def __repr__(self) -> str:
        return f"<StaticKeyStore {len(self._table)} keys>"
