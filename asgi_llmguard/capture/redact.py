"""Best-effort removal of credentials from captured headers, query strings and bodies.

What is removed, in this order:

1. Headers: the values of the credential headers (``Authorization``, ``Proxy-Authorization``,
   ``x-api-key``, ``api-key``, ``Cookie``, ``Set-Cookie``), of any header named in
   ``redact_headers``, and of any header whose name ends like a secret (``-key``, ``-token``,
   ``-secret``, ``password``...). Names are kept, so a record still shows that one was sent.
2. The exact values of those credential headers (and the token after ``Bearer``/``Basic``),
   wherever they appear in the query string or the bodies: a key echoed in a prompt or an error
   message is removed even under a field name no rule would guess. Also a prefix of one cut off
   by truncation at the end of a body.
3. JSON string fields whose name looks like a secret (``api_key``, ``apiKey``, ``x-api-key``,
   ``client_secret``, ``password``, ``access_token``, ``private_key``, ``authorization``...),
   matched in the raw bytes, so it also works on truncated JSON and on SSE streams.
4. Well-known key shapes anywhere in a body: ``sk-...`` (OpenAI, Anthropic), ``Bearer <token>``,
   ``AKIA...`` (AWS), ``AIza...`` (Google), ``xox?-...`` (Slack).
5. Query parameters whose name looks like a secret (``key``, ``api-key``, ``token``, ``sig``...).

This is diagnostics hygiene, not a guarantee: a secret with no recognisable name or shape inside
a body (or inside a compressed or binary body) is kept as it was sent.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable

REDACTED = "[REDACTED]"
_REDACTED_B = REDACTED.encode()

#: Always redacted: the headers that carry the client's (and the upstream's) credentials.
CREDENTIAL_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "x-api-key",
        "api-key",
        "x-goog-api-key",
        "cookie",
        "set-cookie",
    }
)
_SECRET_SUFFIXES = (
    "-key",
    "_key",
    "apikey",
    "-token",
    "_token",
    "secret",
    "password",
    "passwd",
    "credential",
    "credentials",
    "signature",
)

# A JSON member with a string value (possibly cut off by truncation: then it runs to the end).
# Every such member is matched (one linear scan); `_SECRET_NAME` then decides on its name.
_JSON_STRING_MEMBER = re.compile(rb'("([A-Za-z0-9_\-]{1,80})"\s*:\s*")(?:[^"\\]|\\.)*(?:\\$)?("?)')
_SECRET_NAME = re.compile(
    rb"api[_\-]?key|secret|passw(?:or)?d|access[_\-]?token|refresh[_\-]?token|id[_\-]?token"
    rb"|session[_\-]?token|auth[_\-]?token|bearer[_\-]?token|private[_\-]?key|authorization"
    rb"|credential",
    re.IGNORECASE,
)
_TOKEN_SHAPES = (
    (re.compile(rb"\bsk-[A-Za-z0-9_\-]{12,}"), b"sk-" + _REDACTED_B),
    (re.compile(rb"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=\-]{8,}", re.IGNORECASE), None),
    (re.compile(rb"\bAKIA[0-9A-Z]{16}\b"), _REDACTED_B),
    (re.compile(rb"\bAIza[0-9A-Za-z_\-]{35}\b"), _REDACTED_B),
    (re.compile(rb"\bxox[abprs]-[A-Za-z0-9\-]{10,}"), _REDACTED_B),
)
_QUERY_SECRET = re.compile(
    r"(?:^|(?<=&))((?:[^=&]*(?:key|token|secret|sig|signature|password|auth|credential)[^=&]*)=)"
    r"[^&]*",
    re.IGNORECASE,
)
# Secrets shorter than this are not searched for in bodies: too likely to match innocent text.
_MIN_SECRET = 8


def _member_sub(match: re.Match[bytes]) -> bytes:
    if _SECRET_NAME.search(match[2]) is None:
        return match[0]
    return match[1] + _REDACTED_B + match[3]


def _scheme_sub(match: re.Match[bytes]) -> bytes:
    return match[1] + b" " + _REDACTED_B


class Redactor:
    """Redaction rules, compiled once per middleware; see the module docstring."""

    __slots__ = ("_names",)

    def __init__(self, redact_headers: Collection[str] = ()) -> None:
        self._names = CREDENTIAL_HEADERS | {name.lower() for name in redact_headers}

    def secret_header(self, name: str) -> bool:
        return name in self._names or name.endswith(_SECRET_SUFFIXES)

    def headers(
        self, headers: Iterable[tuple[bytes, bytes]], secrets: set[bytes]
    ) -> list[tuple[str, str]]:
        """Headers as text pairs with secret values replaced; their values go into ``secrets``."""
        out: list[tuple[str, str]] = []
        for raw_name, raw_value in headers:
            name = raw_name.decode("latin-1").lower()
            if self.secret_header(name):
                _collect(raw_value, secrets)
                out.append((name, REDACTED))
            else:
                out.append((name, raw_value.decode("latin-1")))
        return out

    @staticmethod
    def query(query: str, secrets: Collection[bytes]) -> str:
        if not query:
            return query
        query = _QUERY_SECRET.sub(lambda m: m[1] + REDACTED, query)
        return _replace_text(query, secrets)

    @staticmethod
    def body(data: bytes, secrets: Collection[bytes], *, truncated: bool) -> bytes:
        """The body with known secrets, secret-named JSON fields and key shapes replaced."""
        if not data:
            return data
        for secret in secrets:
            if secret in data:
                data = data.replace(secret, _REDACTED_B)
            if truncated:
                data = _cut_secret_prefix(data, secret)
        data = _JSON_STRING_MEMBER.sub(_member_sub, data)
        for pattern, replacement in _TOKEN_SHAPES:
            data = pattern.sub(replacement if replacement is not None else _scheme_sub, data)
        return data


def _collect(value: bytes, secrets: set[bytes]) -> None:
    value = value.strip()
    scheme, _, token = value.partition(b" ")
    if token and scheme.lower() in (b"bearer", b"basic", b"token"):
        value = token.strip()
    if len(value) >= _MIN_SECRET:
        secrets.add(value)


def _replace_text(text: str, secrets: Collection[bytes]) -> str:
    for secret in secrets:
        plain = secret.decode("latin-1")
        if plain in text:
            text = text.replace(plain, REDACTED)
    return text


def _cut_secret_prefix(data: bytes, secret: bytes) -> bytes:
    """Drop a trailing prefix of ``secret`` (a key cut in two by truncation)."""
    for size in range(min(len(secret) - 1, len(data)), _MIN_SECRET // 2 - 1, -1):
        if data.endswith(secret[:size]):
            return data[:-size] + _REDACTED_B
    return data
