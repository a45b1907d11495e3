"""Virtual keys as the gateway knows them: a SHA-256 digest, never the key itself.

A key is shown once, when it is made; from then on only its digest is stored and compared, and it
is named in logs and records by its `~asgi_llmguard.redact.fingerprint` (the first 12 hex digits of
the same digest) or by the name its operator gave it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

#: The prefix of generated keys: lets secret scanners and people recognise a gateway key.
DEFAULT_PREFIX = "sk-llmg-"
#: Bytes of randomness in a generated key (``secrets.token_urlsafe``: 43 characters).
KEY_ENTROPY_BYTES = 32

_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")
_PREFIX_CHARS = re.compile(r"[A-Za-z0-9._~+/=:-]{0,64}")


def hash_key(key: str | bytes) -> str:
    """The stored form of a key: the lowercase hex SHA-256 of its UTF-8 bytes."""
    data = key.encode() if isinstance(key, str) else key
    return hashlib.sha256(data).hexdigest()


def generate_key(prefix: str = DEFAULT_PREFIX) -> str:
    """A new random key: ``prefix`` followed by 32 random bytes, URL-safe base64 (43 chars)."""
    if not _PREFIX_CHARS.fullmatch(prefix):
        raise ValueError("a key prefix is at most 64 letters, digits or -._~+/=:")
    return prefix + secrets.token_urlsafe(KEY_ENTROPY_BYTES)


def is_key_hash(value: str) -> bool:
    """Whether ``value`` is a digest as `hash_key` writes it (64 lowercase hex digits)."""
    return _HEX_DIGEST.fullmatch(value) is not None


def key_id_for(key_hash: str, name: str | None = None) -> str:
    """The id a key is known by: its operator's ``name`` if it has one, else its fingerprint.

    The fingerprint is the first 12 hex digits of the digest, i.e. exactly
    ``asgi_llmguard.redact.fingerprint(key)``, so it can be computed from the stored hash.
    """
    return name if name else key_hash[:12]


def hashes_match(stored_hash: str, key_hash: str) -> bool:
    """Constant-time comparison of two digests.

    Stores find a row by its digest, then confirm it with this, so that no comparison on the way
    to a decision takes a time that depends on how much of a digest matched, and a store whose
    lookup is looser than equality (a collation, a prefix index) cannot admit the wrong key.
    """
    return hmac.compare_digest(stored_hash, key_hash)
