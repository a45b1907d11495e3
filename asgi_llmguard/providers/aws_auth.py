"""The upstream credential of AWS Bedrock, applied per request: a SigV4 signature, or an API key.

`SigV4Signer` signs with botocore (the ``bedrock`` extra): botocore's ``SigV4Auth`` computes the
signature and botocore's credential chain finds the credentials, exactly as the AWS SDKs do --
environment variables, the shared config and credentials files (profiles, ``role_arn`` with
``source_profile`` or ``credential_source``, ``web_identity_token_file``, SSO,
``credential_process``), container and instance metadata -- with temporary credentials renewed
before they expire. Finding the credentials, and renewing them, can call the network (STS,
instance metadata), so it runs in a worker thread, never on the event loop: `start` resolves the
chain once, and a request that finds a renewal due waits for one renewal shared by all the
requests that found it due at the same time. Signing itself is a few HMACs, done inline.

`BedrockApiKey` is a Bedrock API key, sent as ``Authorization: Bearer``.

Both offer ``authorize(method, url, headers, body)``, which returns the headers to add to the
request. A signature covers the method, the URL exactly as it will be sent (path and query,
percent-encoding included: a model id's ``:`` is sent as ``%3A``), every header passed in and
the body, so the request must go out with exactly those; headers added later by the HTTP client
(``content-length``, ``accept-encoding``, ``user-agent``) are not signed and do not matter.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from asgi_llmguard.errors import ConfigurationError

if TYPE_CHECKING:
    from botocore.credentials import (  # type: ignore[import-untyped]
        Credentials,
        ReadOnlyCredentials,
    )

_MISSING = "AWS Bedrock needs botocore: pip install 'asgi-llmguard[bedrock]'"
#: The headers a signature adds (lowercase).
SIGNATURE_HEADERS = frozenset({"authorization", "x-amz-date", "x-amz-security-token"})


def _botocore() -> Any:
    try:
        import botocore.auth  # type: ignore[import-untyped]
        import botocore.awsrequest  # type: ignore[import-untyped]
        import botocore.credentials
        import botocore.exceptions  # type: ignore[import-untyped]
        import botocore.session  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - the extra is installed in tests
        raise ConfigurationError(_MISSING) from None
    return botocore


class SigV4Signer:
    """Signs requests for one AWS service and region with the credentials of botocore's chain.

    Args:
        region: The region the requests go to (``us-east-1``); the signature is scoped to it.
        service: The signing name: ``bedrock`` for Bedrock Runtime.
        profile: A profile of the shared config files (``None``: the chain's default, which
            honours ``AWS_PROFILE``).
        credentials: botocore credentials to use instead of the chain (static or refreshable).

    Call (and await) :meth:`start` once before :meth:`authorize`.
    """

    __slots__ = ("_credentials", "_refresh", "profile", "region", "service")

    def __init__(
        self,
        *,
        region: str,
        service: str = "bedrock",
        profile: str | None = None,
        credentials: Credentials | None = None,
    ) -> None:
        _botocore()
        if not region:
            raise ConfigurationError("an AWS region is required to sign requests")
        self.region = region
        self.service = service
        self.profile = profile
        self._credentials = credentials
        self._refresh: asyncio.Future[ReadOnlyCredentials] | None = None

    def __repr__(self) -> str:
        return (
            f"SigV4Signer(region={self.region!r}, service={self.service!r}, "
            f"profile={self.profile!r})"
        )

    async def start(self) -> None:
        """Resolve the credential chain (in a thread); ConfigurationError when it finds none."""
        if self._credentials is None:
            self._credentials = await asyncio.to_thread(self._resolve)
        await self.credentials()

    def _resolve(self) -> Credentials:
        botocore = _botocore()
        try:
            session = botocore.session.Session(profile=self.profile)
            credentials = session.get_credentials()
        except botocore.exceptions.BotoCoreError as exc:
            raise ConfigurationError(f"AWS credentials could not be loaded: {exc}") from None
        if credentials is None:
            raise ConfigurationError(
                "no AWS credentials found (environment, shared config files"
                + (f" profile {self.profile!r}" if self.profile else "")
                + ", container or instance metadata)"
            )
        return credentials

    async def credentials(self) -> ReadOnlyCredentials:
        """The current credentials, renewed first (in a thread, once for all waiters) when due."""
        source = self._credentials
        if source is None:
            raise RuntimeError("SigV4Signer.start() was not awaited")
        refresh_needed = getattr(source, "refresh_needed", None)
        if refresh_needed is None or not refresh_needed():
            return source.get_frozen_credentials()
        pending = self._refresh
        if pending is None:
            pending = asyncio.ensure_future(asyncio.to_thread(source.get_frozen_credentials))
            self._refresh = pending
            pending.add_done_callback(self._refreshed)
        return await asyncio.shield(pending)

    def _refreshed(self, future: asyncio.Future[ReadOnlyCredentials]) -> None:
        if self._refresh is future:
            self._refresh = None
        if not future.cancelled():
            future.exception()  # retrieved: each waiter sees it through the shield

    async def authorize(
        self, method: str, url: str, headers: Sequence[tuple[str, str]], body: bytes
    ) -> list[tuple[str, str]]:
        """The headers that sign this request: ``authorization``, ``x-amz-date`` and, with
        temporary credentials, ``x-amz-security-token`` (lowercase names)."""
        return self.sign(method, url, headers, body, await self.credentials())

    def sign(
        self,
        method: str,
        url: str,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        credentials: ReadOnlyCredentials,
    ) -> list[tuple[str, str]]:
        """Sign with the given credentials (no I/O); see :meth:`authorize`."""
        botocore = _botocore()
        request = botocore.awsrequest.AWSRequest(
            method=method, url=url, headers=dict(headers), data=body
        )
        botocore.auth.SigV4Auth(credentials, self.service, self.region).add_auth(request)
        return [
            (name.lower(), value)
            for name, value in request.headers.items()
            if name.lower() in SIGNATURE_HEADERS
        ]


class BedrockApiKey:
    """A Bedrock API key, sent as ``Authorization: Bearer <key>``; never shown in a repr."""

    __slots__ = ("_header",)

    def __init__(self, key: str) -> None:
        if not key or not key.isprintable() or not key.isascii():
            raise ConfigurationError("a Bedrock API key must be a non-empty printable ASCII string")
        self._header = [("authorization", f"Bearer {key}")]

    def __repr__(self) -> str:
        digest = hashlib.sha256(self._header[0][1].encode()).hexdigest()[:8]
        return f"BedrockApiKey(sha256:{digest})"

    async def start(self) -> None:
        """Nothing to resolve; for symmetry with `SigV4Signer`."""

    async def authorize(
        self, method: str, url: str, headers: Sequence[tuple[str, str]], body: bytes
    ) -> list[tuple[str, str]]:
        return list(self._header)
