"""How secrets are named where they must be named at all: by a short hash prefix."""

from __future__ import annotations

import hashlib


def fingerprint(secret: str | bytes) -> str:
    """A short, stable, non-reversible id for a key: the first 12 hex digits of its SHA-256."""
    data = secret.encode() if isinstance(secret, str) else secret
    return hashlib.sha256(data).hexdigest()[:12]
