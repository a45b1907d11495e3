"""Google's OAuth 2.0 token endpoint for service accounts, as the fake Vertex AI serves it.

A service account exchanges a JWT it signs with its private key for an access token (RFC 7523's
JWT bearer grant, as Google documents it for server-to-server applications)::

    POST /token
    Content-Type: application/x-www-form-urlencoded

    grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=<header.claims.signature>

The JWT is signed with RS256; its claims name the account (``iss``), the token endpoint
(``aud``), the scopes asked for (``scope``, space-separated) and a lifetime of at most an hour
(``iat``, ``exp``). The answer is ``{"access_token", "expires_in", "token_type": "Bearer"}``; a
refusal is ``{"error", "error_description"}`` with status 400 (``invalid_grant``,
``invalid_request``, ``unsupported_grant_type``).

The fake makes its own RSA key pair (with ``cryptography``, which ``google-auth`` depends on), so
the service-account file it writes carries a private key that signs for nobody but the fake.
"""

from __future__ import annotations

import base64
import binascii
import collections
import json
import secrets
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

#: The audience Google's client libraries put in the assertion, whatever ``token_uri`` says.
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"  # noqa: S105 - a URL
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
#: Google refuses assertions whose lifetime is longer than an hour.
MAX_ASSERTION_LIFETIME = 3600
#: Clock skew tolerated on ``iat`` and ``exp``.
SKEW = 300


class OAuthError(Exception):
    """A token request the endpoint refuses: ``{"error", "error_description"}``."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


def _b64url(data: str) -> bytes:
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))


class ServiceAccountKey:
    """A service account of the fake: its email, and an RSA key pair made for it.

    Args:
        email: The account's ``client_email``.
        project_id: The ``project_id`` written into its key file.
        private_key_pem: A PKCS#8 PEM private key to use instead of generating one (2048-bit
            generation takes a few tens of milliseconds).
    """

    def __init__(
        self,
        email: str = "llm-gateway@fake-project.iam.gserviceaccount.com",
        *,
        project_id: str = "fake-project",
        private_key_pem: str | None = None,
    ) -> None:
        try:
            from cryptography.hazmat.primitives import serialization
            from cryptography.hazmat.primitives.asymmetric import rsa
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "the fake Vertex AI signs and checks keys with cryptography, which google-auth "
                "brings: pip install 'asgi-llmguard[vertex]'"
            ) from exc
        if private_key_pem is None:
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            private_key_pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ).decode()
        loaded = serialization.load_pem_private_key(private_key_pem.encode(), password=None)
        if not isinstance(loaded, rsa.RSAPrivateKey):
            raise ValueError("private_key_pem must be an RSA private key")
        self.email = email
        self.project_id = project_id
        self.key_id = secrets.token_hex(20)
        self._private_key_pem = private_key_pem
        self._public_key = loaded.public_key()

    def __repr__(self) -> str:
        return f"ServiceAccountKey(email={self.email!r}, key_id={self.key_id[:8]!r}...)"

    def info(self, token_uri: str) -> dict[str, str]:
        """The service-account key file's content, its ``token_uri`` set to ``token_uri``."""
        return {
            "type": "service_account",
            "project_id": self.project_id,
            "private_key_id": self.key_id,
            "private_key": self._private_key_pem,
            "client_email": self.email,
            "client_id": "100000000000000000000",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": token_uri,
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "client_x509_cert_url": (
                "https://www.googleapis.com/robot/v1/metadata/x509/"
                + urllib.parse.quote(self.email)
            ),
            "universe_domain": "googleapis.com",
        }

    def write(self, path: str | Path, token_uri: str) -> Path:
        """Write the key file to ``path`` (mode 0600) and return the path."""
        target = Path(path)
        target.write_text(json.dumps(self.info(token_uri), indent=2))
        target.chmod(0o600)
        return target

    def verify(self, assertion: str, *, audiences: tuple[str, ...]) -> dict[str, Any]:
        """The claims of ``assertion`` once its signature, issuer, audience and times check."""
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        parts = assertion.split(".")
        if len(parts) != 3:
            raise OAuthError(400, "invalid_grant", "Invalid JWT: Token must be a short-lived token")
        try:
            header = json.loads(_b64url(parts[0]))
            claims = json.loads(_b64url(parts[1]))
            signature = _b64url(parts[2])
        except (ValueError, binascii.Error):
            raise OAuthError(400, "invalid_grant", "Invalid JWT: not a JWT") from None
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise OAuthError(400, "invalid_grant", "Invalid JWT: not a JWT")
        if header.get("alg") != "RS256":
            raise OAuthError(400, "invalid_grant", "Invalid JWT: the algorithm must be RS256")
        try:
            self._public_key.verify(
                signature,
                f"{parts[0]}.{parts[1]}".encode(),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except InvalidSignature:
            raise OAuthError(400, "invalid_grant", "Invalid JWT Signature.") from None
        if claims.get("iss") != self.email:
            raise OAuthError(400, "invalid_grant", "Invalid JWT: unknown issuer")
        if claims.get("aud") not in audiences:
            raise OAuthError(400, "invalid_grant", "Invalid JWT: the audience is not this endpoint")
        now = time.time()
        iat, exp = claims.get("iat"), claims.get("exp")
        if not isinstance(iat, int | float) or not isinstance(exp, int | float):
            raise OAuthError(400, "invalid_grant", "Invalid JWT: iat and exp are required")
        if iat > now + SKEW or exp < now - SKEW or exp - iat > MAX_ASSERTION_LIFETIME:
            raise OAuthError(
                400,
                "invalid_grant",
                "Invalid JWT: Token must be a short-lived token (60 minutes) and in a "
                "reasonable timeframe. Check your iat and exp values in the JWT claim.",
            )
        scopes = claims.get("scope")
        if not isinstance(scopes, str) or not scopes.split():
            raise OAuthError(400, "invalid_scope", "Invalid OAuth scope or ID token audience.")
        return claims


class TokenIssuer:
    """The access tokens the fake has issued and when each expires (oldest forgotten first)."""

    def __init__(self, keep: int = 10_000) -> None:
        self._tokens: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._keep = keep
        self._lock = threading.Lock()
        self.issued = 0

    def issue(self, expires_in: int) -> str:
        token = "ya29.fake-" + secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[token] = time.time() + expires_in
            self.issued += 1
            while len(self._tokens) > self._keep:
                self._tokens.popitem(last=False)
        return token

    def status(self, token: str) -> str:
        """``valid``, ``expired`` or ``unknown``."""
        with self._lock:
            expires = self._tokens.get(token)
        if expires is None:
            return "unknown"
        return "valid" if time.time() < expires else "expired"

    def revoke_all(self) -> None:
        with self._lock:
            self._tokens.clear()


def grant(
    body: bytes, content_type: str | None, key: ServiceAccountKey, audiences: tuple[str, ...]
) -> dict[str, Any]:
    """Check a token request's form and assertion; the assertion's claims."""
    if content_type is None or not content_type.lower().startswith(
        "application/x-www-form-urlencoded"
    ):
        raise OAuthError(400, "invalid_request", "Bad Request: expected a form-encoded body")
    try:
        form = urllib.parse.parse_qs(body.decode(), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise OAuthError(400, "invalid_request", "Bad Request") from None
    grant_type = form.get("grant_type", [""])[0]
    if grant_type != JWT_BEARER:
        raise OAuthError(400, "unsupported_grant_type", f"Invalid grant_type: {grant_type}")
    assertion = form.get("assertion", [""])[0]
    if not assertion:
        raise OAuthError(400, "invalid_request", "Missing required parameter: assertion")
    return key.verify(assertion, audiences=audiences)


def answer(
    method: str,
    body: bytes,
    content_type: str | None,
    *,
    here: str,
    key: ServiceAccountKey,
    issuer: TokenIssuer,
    expires_in: int,
    fail_with: int | None,
) -> tuple[int, dict[str, Any]]:
    """The token endpoint's answer to one request: a new token, or the refusal.

    ``here`` is the URL the request reached (accepted as the assertion's audience, as is
    Google's own token URL); ``fail_with`` refuses every request with that status.
    """
    try:
        if method != "POST":
            raise OAuthError(405, "invalid_request", "Method not allowed")
        if fail_with is not None:
            if fail_with in (400, 401, 403):
                raise OAuthError(fail_with, "invalid_grant", "account disabled")
            raise OAuthError(fail_with, "internal_failure", "token service unavailable")
        grant(body, content_type, key, (GOOGLE_TOKEN_AUDIENCE, here))
    except OAuthError as error:
        return error.status, error.body()
    return 200, {
        "access_token": issuer.issue(expires_in),
        "expires_in": expires_in,
        "token_type": "Bearer",
    }
