"""Checking AWS Signature Version 4 (``AWS4-HMAC-SHA256`` in the ``Authorization`` header).

Written from AWS's description of the algorithm ("Create a signed AWS API request", IAM user
guide) and checked against AWS's published SigV4 test suite; it shares no code with any signer,
so a signer and this checker agreeing is evidence that both follow the documented algorithm:

1. the canonical request: the method; the URI path with dot segments and repeated slashes
   removed, each byte but the unreserved ones (``A-Z a-z 0-9 - _ . ~``) and ``/`` percent-encoded
   (the path as sent, so ``%3A`` becomes ``%253A``: every service but S3 encodes twice); the
   query's names and values decoded, encoded again and sorted; each signed header as
   ``name:value`` (lowercase name, values trimmed, inner runs of spaces made one, repeated
   headers joined with commas); the signed header names; the payload's hex SHA-256
   (``x-amz-content-sha256`` when sent);
2. the string to sign: ``AWS4-HMAC-SHA256``, the ``x-amz-date`` timestamp, the credential scope
   (``date/region/service/aws4_request``) and the canonical request's hex SHA-256;
3. the signing key: HMAC-SHA256 chained over the date, region, service and ``aws4_request``,
   from ``"AWS4" + secret``; the signature is the string to sign's hex HMAC under that key.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

ALGORITHM = "AWS4-HMAC-SHA256"
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~")
_SPACES = re.compile(r" +")
_AUTH = re.compile(
    r"^AWS4-HMAC-SHA256\s+Credential=([^,\s]+),\s*SignedHeaders=([^,\s]+),\s*Signature=([0-9a-f]{64})$"
)
_AMZ_DATE = "%Y%m%dT%H%M%SZ"


class SignatureError(Exception):
    """A request the checker refuses: ``code`` is the AWS error code, ``message`` AWS's text."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class SignedRequest:
    """A request as it arrived on the wire."""

    method: str
    raw_path: bytes
    """The path as sent (percent-encoded), without the query."""
    raw_query: bytes
    headers: list[tuple[str, str]]
    """Lowercase names, in arrival order (repeated headers kept)."""
    body: bytes


def _encode(data: bytes, safe: frozenset[int]) -> str:
    return "".join(chr(b) if b in safe else f"%{b:02X}" for b in data)


def canonical_uri(raw_path: bytes) -> str:
    segments: list[bytes] = []
    for segment in raw_path.split(b"/"):
        if segment in (b"", b"."):
            continue
        if segment == b"..":
            if segments:
                segments.pop()
            continue
        segments.append(segment)
    path = b"/" + b"/".join(segments)
    if raw_path.endswith(b"/") and segments:
        path += b"/"
    return _encode(path, _UNRESERVED | {ord("/")})


def canonical_query(raw_query: bytes) -> str:
    pairs: list[tuple[str, str]] = []
    for part in raw_query.split(b"&"):
        if not part:
            continue
        name, _, value = part.partition(b"=")
        pairs.append(
            (
                _encode(urllib.parse.unquote_to_bytes(name), _UNRESERVED),
                _encode(urllib.parse.unquote_to_bytes(value), _UNRESERVED),
            )
        )
    return "&".join(f"{name}={value}" for name, value in sorted(pairs))


def _header_value(values: list[str]) -> str:
    return ",".join(_SPACES.sub(" ", value.strip()) for value in values)


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    key = ("AWS4" + secret).encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def canonical_request(request: SignedRequest, signed: list[str], payload_hash: str) -> str:
    by_name: dict[str, list[str]] = {}
    for name, value in request.headers:
        by_name.setdefault(name, []).append(value)
    lines = []
    for name in signed:
        if name not in by_name:
            raise SignatureError(
                "InvalidSignatureException",
                f"The request signature we calculated does not match the signature you provided. "
                f"Signed header {name!r} is missing from the request.",
            )
        lines.append(f"{name}:{_header_value(by_name[name])}\n")
    return "\n".join(
        [
            request.method.upper(),
            canonical_uri(request.raw_path),
            canonical_query(request.raw_query),
            "".join(lines),
            ";".join(signed),
            payload_hash,
        ]
    )


def verify(
    request: SignedRequest,
    secret_for: Callable[[str], str | None],
    *,
    service: str,
    region: str | None,
    now: dt.datetime | None = None,
    max_skew: float = 300.0,
) -> str:
    """Check the request's signature; returns its access key id, or raises `SignatureError`.

    ``secret_for(access_key_id)`` gives the key's secret (``None``: unknown key). ``region``
    ``None`` accepts any region in the credential scope. With ``now``, a timestamp further than
    ``max_skew`` seconds from it is refused, as AWS does.
    """
    header = next((v for k, v in request.headers if k == "authorization"), None)
    if header is None:
        raise SignatureError("MissingAuthenticationTokenException", "Missing Authentication Token")
    match = _AUTH.match(header.strip())
    if match is None:
        raise SignatureError(
            "IncompleteSignatureException",
            "Authorization header requires 'Credential', 'SignedHeaders' and 'Signature' "
            f"parameters, separated by commas, after {ALGORITHM}.",
        )
    credential, signed_text, signature = match.groups()
    parts = credential.split("/")
    if len(parts) != 5 or parts[4] != "aws4_request":
        raise SignatureError(
            "IncompleteSignatureException",
            "Credential should be scoped to a valid region, service and the terminator "
            "'aws4_request'.",
        )
    access_key, date, scope_region, scope_service, _ = parts
    amz_date = next((v for k, v in request.headers if k == "x-amz-date"), None)
    if amz_date is None:
        raise SignatureError(
            "IncompleteSignatureException", "Authorization requires the X-Amz-Date header."
        )
    try:
        stamp = dt.datetime.strptime(amz_date.strip(), _AMZ_DATE).replace(tzinfo=dt.UTC)
    except ValueError:
        raise SignatureError(
            "IncompleteSignatureException", f"Date must be in ISO-8601 basic format: {amz_date}"
        ) from None
    if amz_date.strip()[:8] != date:
        raise SignatureError(
            "InvalidSignatureException",
            f"Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date "
            f"from HTTP: '{date}' != '{amz_date.strip()[:8]}'",
        )
    if scope_service != service:
        raise SignatureError(
            "InvalidSignatureException",
            f"Credential should be scoped to correct service: '{service}'.",
        )
    if region is not None and scope_region != region:
        raise SignatureError(
            "InvalidSignatureException",
            f"Credential should be scoped to a valid region, not '{scope_region}'.",
        )
    if now is not None and abs((now - stamp).total_seconds()) > max_skew:
        raise SignatureError(
            "InvalidSignatureException",
            f"Signature expired: {amz_date} is now earlier or later than "
            f"{now.strftime(_AMZ_DATE)} (by more than {max_skew:g} seconds).",
        )
    signed = signed_text.split(";")
    if signed != sorted(signed) or "host" not in signed or any(s != s.lower() for s in signed):
        raise SignatureError(
            "InvalidSignatureException",
            "SignedHeaders must be lowercase, sorted, separated by ';' and include 'host'.",
        )
    secret = secret_for(access_key)
    if secret is None:
        raise SignatureError(
            "UnrecognizedClientException", "The security token included in the request is invalid."
        )
    body_hash = hashlib.sha256(request.body).hexdigest()
    declared = next((v for k, v in request.headers if k == "x-amz-content-sha256"), None)
    if declared is not None and declared.strip() not in (body_hash, "UNSIGNED-PAYLOAD"):
        raise SignatureError(
            "InvalidSignatureException",
            "The provided 'x-amz-content-sha256' header does not match what was computed.",
        )
    payload_hash = declared.strip() if declared is not None else body_hash
    canonical = canonical_request(request, signed, payload_hash)
    scope = f"{date}/{scope_region}/{scope_service}/aws4_request"
    to_sign = "\n".join(
        [ALGORITHM, amz_date.strip(), scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = signing_key(secret, date, scope_region, scope_service)
    expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature):
        raise SignatureError(
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided. "
            "Check your AWS Secret Access Key and signing method. Consult the service "
            "documentation for details.",
        )
    return access_key
