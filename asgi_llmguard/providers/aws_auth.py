"""The upstream credential of AWS Bedrock, applied per request: a SigV4 signature, or an API key.

`SigV4Signer` signs with botocore (the ``bedrock`` extra): botocore's ``SigV4Auth`` computes the
signature and botocore's credential chain finds the credentials, exactly as the AWS SDKs do --
environment variables, the shared config and credentials files (profiles, ``role_arn`` with
``source_profile`` or ``credential_source``, ``web_identity_token_file``, SSO,
``credential_process``), container and instance metadata -- with temporary credentials renewed
before they expire. Finding the credentials, and renewing them, can call the network (STS,
instance metadata), so it runs in a worker thread, never on the event loop: `start` resolves the
chain once and starts a background task that renews temporary credentials when botocore deems
them due (its advisory window, 15 minutes before they expire), so `sign` only reads the cached
credentials. `authorize`, the async form, waits for one renewal shared by all the requests that
found it due at the same time. Signing itself is a few HMACs, done inline. Credentials that have
expired and could not be renewed raise `AwsCredentialsError` (the gateway answers 503 with
``Retry-After``); a failed renewal is logged by its kind, never its message.

`BedrockApiKey` is a Bedrock API key, sent as ``Authorization: Bearer``.

Both offer ``authorize(method, url, headers, body)``, which returns the headers to add to the
request. A signature covers the method, the URL exactly as it will be sent (path and query,
percent-encoding included: a model id's ``:`` is sent as ``%3A``), every header passed in and
the body, so the request must go out with exactly those; headers added later by the HTTP client
(``content-length``, ``accept-encoding``, ``user-agent``) are not signed and do not matter.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from asgi_llmguard.errors import ConfigurationError
from asgi_llmguard.lifecycle import Resource

if TYPE_CHECKING:
    from botocore.credentials import (  # type: ignore[import-untyped]
        Credentials,
        ReadOnlyCredentials,
    )

logger = logging.getLogger("asgi_llmguard.providers.aws")
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


class AwsCredentialsError(Exception):
    """The signer has no valid credentials to sign with (none yet, or expired and not renewed).
    The message names the signer, never a secret; ``retry_after``: seconds until the next
    renewal attempt."""

    def __init__(self, message: str, retry_after: float = 5.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class SigV4Signer(Resource):
    """Signs requests for one AWS service and region with the credentials of botocore's chain.

    Args:
        region: The region the requests go to (``us-east-1``); the signature is scoped to it.
        service: The signing name: ``bedrock`` for Bedrock Runtime.
        profile: A profile of the shared config files (``None``: the chain's default, which
            honours ``AWS_PROFILE``).
        credentials: botocore credentials to use instead of the chain (static or refreshable).
        retry_interval: Seconds between attempts while a renewal fails.
        max_sleep: The longest the background renewal sleeps between looks at the expiry.

    `start` (``async with``) resolves the chain and, for temporary credentials, starts a
    background task that renews them (in a worker thread) when botocore deems them due, ahead of
    their expiry; `aclose` stops it. `current` then only reads the cached credentials: signing a
    request never waits for a renewal nor blocks the event loop. When the credentials have
    expired and could not be renewed, `current` raises `AwsCredentialsError`.
    """

    __slots__ = (
        "_credentials",
        "_expires_at",
        "_frozen",
        "_refresh",
        "_task",
        "max_sleep",
        "profile",
        "region",
        "retry_interval",
        "service",
    )

    def __init__(
        self,
        *,
        region: str,
        service: str = "bedrock",
        profile: str | None = None,
        credentials: Credentials | None = None,
        retry_interval: float = 5.0,
        max_sleep: float = 60.0,
    ) -> None:
        _botocore()
        if not region:
            raise ConfigurationError("an AWS region is required to sign requests")
        if retry_interval <= 0 or max_sleep <= 0:
            raise ConfigurationError("SigV4Signer retry_interval and max_sleep must be > 0")
        self.region = region
        self.service = service
        self.profile = profile
        self.retry_interval = float(retry_interval)
        self.max_sleep = float(max_sleep)
        self._credentials = credentials
        self._refresh: asyncio.Future[ReadOnlyCredentials] | None = None
        self._frozen: ReadOnlyCredentials | None = None
        self._expires_at = math.inf
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return (
            f"SigV4Signer(region={self.region!r}, service={self.service!r}, "
            f"profile={self.profile!r})"
        )

    @property
    def _name(self) -> str:
        return f"profile {self.profile!r}" if self.profile else "the default chain"

    async def start(self) -> None:
        """Resolve the credential chain (in a thread; ConfigurationError when it finds none),
        fetch the credentials, and start renewing temporary ones in the background. A first
        fetch that fails is logged and retried in the background (requests meanwhile get
        `AwsCredentialsError`). Idempotent."""
        if self._credentials is None:
            self._credentials = await asyncio.to_thread(self._resolve)
        if self._task is not None:
            return
        if self._frozen is None:
            await self._renew()
        if getattr(self._credentials, "refresh_needed", None) is not None:
            self._task = asyncio.get_running_loop().create_task(
                self._keep_fresh(), name="llmguard-aws-credentials"
            )

    async def aclose(self) -> None:
        """Stop the background renewal. Idempotent."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def resolve(self) -> None:
        """Resolve the credential chain now (blocking: at start-up, not on a request);
        ConfigurationError when it finds none."""
        if self._credentials is None:
            self._credentials = self._resolve()

    def _resolve(self) -> Credentials:
        botocore = _botocore()
        try:
            session = botocore.session.Session(profile=self.profile)
            credentials = session.get_credentials()
        except botocore.exceptions.BotoCoreError as exc:
            raise ConfigurationError(
                f"AWS credentials could not be loaded ({self._name}): {type(exc).__name__}"
            ) from None
        if credentials is None:
            raise ConfigurationError(
                "no AWS credentials found (environment, shared config files"
                + (f" profile {self.profile!r}" if self.profile else "")
                + ", container or instance metadata)"
            )
        return credentials

    # -- renewal, off the hot path ------------------------------------------------------------

    def _seconds_until_due(self) -> float:
        """Seconds until botocore deems the credentials due for renewal (its advisory window
        before the expiry), at most ``max_sleep``."""
        source = self._credentials
        remaining = getattr(source, "_seconds_remaining", None)
        if remaining is None or getattr(source, "_expiry_time", None) is None:
            return self.max_sleep
        advisory = float(getattr(source, "_advisory_refresh_timeout", 15 * 60))
        return min(self.max_sleep, max(0.0, float(remaining()) - advisory))

    async def _keep_fresh(self) -> None:
        while True:
            await asyncio.sleep(self._seconds_until_due())
            source = self._credentials
            due = getattr(source, "refresh_needed", None)
            if due is None or not due():
                continue
            if not await self._renew() or due():
                # Failed, or botocore kept the old credentials (a failure inside its advisory
                # window is only logged by botocore): look again after a pause.
                await asyncio.sleep(self.retry_interval)

    async def _renew(self) -> bool:
        """One renewal (shared with `credentials`' waiters) into the cache; a failure is logged
        by its kind, never its message (it may quote a credential process's output)."""
        try:
            frozen = await self.credentials()
        except Exception as exc:
            logger.warning(
                "aws_credentials_refresh_failed credentials=%s reason=%s %s",
                self._name,
                type(exc).__name__,
                "keeping the current credentials" if self._valid() else "no valid credentials",
            )
            return False
        self._store(frozen)
        return True

    def _store(self, frozen: ReadOnlyCredentials) -> None:
        expiry = getattr(self._credentials, "_expiry_time", None)
        self._expires_at = expiry.timestamp() if expiry is not None else math.inf
        self._frozen = frozen

    def _valid(self) -> bool:
        return self._frozen is not None and time.time() < self._expires_at

    # -- the hot path -------------------------------------------------------------------------

    def current(self) -> ReadOnlyCredentials:
        """The cached credentials, read without I/O. Raises `AwsCredentialsError` when there are
        none valid (expired and not renewed, or never fetched)."""
        frozen = self._frozen
        if frozen is not None and time.time() < self._expires_at:
            return frozen
        source = self._credentials
        if frozen is None and source is not None and self._task is None:
            # Not started (used without `start`): credentials with nothing due are read as
            # they are, with no I/O; a renewal that is due runs in a thread for the next request.
            due = getattr(source, "refresh_needed", None)
            if due is None or not due():
                self._store(source.get_frozen_credentials())
                return self.current()
            with contextlib.suppress(RuntimeError):  # no running loop: nothing to start
                asyncio.get_running_loop().create_task(self._renew())
        raise AwsCredentialsError(
            f"AWS credentials ({self._name}) have expired and could not be renewed yet"
            if frozen is not None
            else f"AWS credentials ({self._name}) are not available yet",
            self.retry_interval,
        )

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
        credentials: ReadOnlyCredentials | None = None,
    ) -> list[tuple[str, str]]:
        """Sign with the given credentials, else the cached ones (`current`); no I/O."""
        botocore = _botocore()
        if credentials is None:
            credentials = self.current()
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
