"""Upstream credentials for Vertex AI: OAuth 2.0 access tokens from ``google-auth``.

A :class:`GoogleTokenSource` holds one Google credential (a service-account key file, its parsed
content, or the application default credentials) and the access token it last obtained. Requests
read the token with :meth:`~GoogleTokenSource.token` (a clock read and a comparison while it is
fresh) or ``await`` :meth:`~GoogleTokenSource.get`. The token is refreshed ahead of its expiry, in a
worker thread (``google-auth`` blocks on its HTTP call), while requests go on using the current
one; concurrent needs for a refresh share one. A failed background refresh is logged and retried
a little later while the current token stays valid; a request that finds no valid token waits on
one refresh, and its failure raises :class:`GoogleCredentialsError`.

``google-auth`` is the ``vertex`` extra (``pip install 'asgi-llmguard[vertex]'``). A service
account's token endpoint is its key file's ``token_uri`` (Google's own by default; a test points
it at :class:`asgi_llmguard.testing.FakeVertex`).
"""

from __future__ import annotations

import concurrent.futures
import datetime
import json
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asgi_llmguard.errors import ConfigurationError
from asgi_llmguard.lifecycle import Resource

if TYPE_CHECKING:
    from google.auth.credentials import Credentials

__all__ = ["CLOUD_PLATFORM", "GoogleCredentialsError", "GoogleTokenSource"]

logger = logging.getLogger("asgi_llmguard.google_auth")

CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
_INSTALL = "Vertex AI credentials need google-auth: pip install 'asgi-llmguard[vertex]'"


class GoogleCredentialsError(Exception):
    """No valid access token could be had: the upstream request was not sent.

    The message is the gateway's and names the credential and the kind of failure, never a token,
    a key or the token endpoint's answer. ``retryable`` is True when the failure looked
    temporary (a network error, a 5xx from the token endpoint), False when the credential itself
    was refused (a revoked or malformed key).
    """

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True, slots=True)
class _Token:
    value: str
    #: monotonic time from which a background refresh is due
    refresh_at: float
    #: monotonic time after which the token is no longer used
    usable_until: float
    #: wall-clock expiry, for repr and metrics
    expires: float


def _import_google_auth() -> Any:
    try:
        import google.auth
        import google.auth.transport.requests
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigurationError(_INSTALL) from exc
    return google.auth


def _describe(exc: BaseException) -> tuple[str, bool]:
    """A safe one-line description of a refresh failure, and whether it looks temporary."""
    from google.auth import exceptions

    if isinstance(exc, exceptions.TransportError):
        return "the token endpoint could not be reached", True
    if isinstance(exc, exceptions.RefreshError):
        retryable = bool(getattr(exc, "retryable", False))
        # The first argument is "<error>: <error_description>" from the endpoint's JSON; the
        # second (the raw answer) is never shown.
        first = str(exc.args[0]) if exc.args else ""
        kind = first.split(":", 1)[0].strip()[:60] if first else ""
        safe = kind if kind.replace("_", "").isalnum() else "refused"
        return f"the token endpoint refused the credential ({safe})", retryable
    if isinstance(exc, exceptions.GoogleAuthError):
        return f"google-auth failed ({type(exc).__name__})", False
    return f"the refresh failed ({type(exc).__name__})", True


def _service_account(
    info: Mapping[str, Any], scopes: Sequence[str], token_uri: str | None, where: str
) -> Credentials:
    _import_google_auth()
    from google.oauth2 import service_account

    content = dict(info)
    if token_uri is not None:
        content["token_uri"] = token_uri
    try:
        credentials: Credentials = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
            content, scopes=list(scopes)
        )
    except ValueError:
        raise ConfigurationError(
            f"the service-account key {where}{' ' if where else ''}is not a valid "
            "service-account JSON key (it needs client_email, private_key and token_uri)"
        ) from None
    return credentials


class GoogleTokenSource(Resource):
    """Access tokens for one Google credential, cached and refreshed ahead of expiry.

    Args:
        credentials: A ``google.auth.credentials.Credentials`` with scopes (see the
            ``from_*`` constructors).
        project_id: The project the credential belongs to, when known (key files and the
            application default credentials name one).
        refresh_margin: Seconds before expiry from which the token is refreshed in the
            background (at most half the token's lifetime).
        expiry_skew: Seconds before expiry from which the token is no longer used at all (at
            most a tenth of its lifetime), so a request does not leave with a token that
            expires on the way.
        retry_interval: Seconds between background refresh attempts after a failure, while the
            current token stays valid.
        failure_hold: Seconds during which a request that finds no valid token gets the last
            refresh failure again, instead of starting another refresh.
        name: How logs and ``repr`` name the credential; default: the service account's email,
            or ``application-default``.

    Use from any thread and event loop; ``async with source:`` (or ``await source.start()``)
    fetches the first token ahead of the first request.
    """

    def __init__(
        self,
        credentials: Credentials,
        *,
        project_id: str | None = None,
        refresh_margin: float = 300.0,
        expiry_skew: float = 10.0,
        retry_interval: float = 10.0,
        failure_hold: float = 1.0,
        name: str | None = None,
    ) -> None:
        google_auth = _import_google_auth()
        for label, value in (
            ("refresh_margin", refresh_margin),
            ("expiry_skew", expiry_skew),
            ("retry_interval", retry_interval),
            ("failure_hold", failure_hold),
        ):
            if not isinstance(value, int | float) or value < 0:
                raise ConfigurationError(f"GoogleTokenSource {label} must be >= 0 seconds")
        self._credentials = credentials
        self._request_type = google_auth.transport.requests.Request
        self.project_id = project_id
        email = getattr(credentials, "service_account_email", None)
        self.name = name or email or "application-default"
        self._margin = float(refresh_margin)
        self._skew = float(expiry_skew)
        self._retry_interval = float(retry_interval)
        self._failure_hold = float(failure_hold)
        self._token: _Token | None = None
        self._lock = threading.Lock()
        self._inflight: concurrent.futures.Future[_Token] | None = None
        self._next_background = 0.0
        self._failure: tuple[float, GoogleCredentialsError] | None = None
        self._session: Any = None
        #: Refreshes attempted and failed so far (for tests and metrics).
        self.refreshes = 0
        self.failures = 0

    # -- constructors -----------------------------------------------------------------------------

    @classmethod
    def from_service_account_file(
        cls,
        path: str | Path,
        *,
        scopes: Sequence[str] = (CLOUD_PLATFORM,),
        token_uri: str | None = None,
        **options: Any,
    ) -> GoogleTokenSource:
        """A service-account JSON key file. Its ``token_uri`` is the token endpoint, unless
        ``token_uri`` is given (e.g. a private endpoint of the token service)."""
        try:
            info = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigurationError(
                f"cannot read the service-account key file {str(path)!r}: {type(exc).__name__}"
            ) from None
        if not isinstance(info, dict):
            info = {}
        credentials = _service_account(info, scopes, token_uri, f"file {str(path)!r}")
        options.setdefault("project_id", info.get("project_id"))
        return cls(credentials, **options)

    @classmethod
    def from_service_account_info(
        cls,
        info: Mapping[str, str],
        *,
        scopes: Sequence[str] = (CLOUD_PLATFORM,),
        token_uri: str | None = None,
        **options: Any,
    ) -> GoogleTokenSource:
        """A service-account key file's parsed content (``token_uri`` as in
        :meth:`from_service_account_file`)."""
        credentials = _service_account(info, scopes, token_uri, "")
        options.setdefault("project_id", info.get("project_id"))
        return cls(credentials, **options)

    @classmethod
    def application_default(
        cls, *, scopes: Sequence[str] = (CLOUD_PLATFORM,), **options: Any
    ) -> GoogleTokenSource:
        """The application default credentials: ``GOOGLE_APPLICATION_CREDENTIALS``, gcloud's
        user credentials, or the metadata server of the machine or pod. Blocks (it may probe
        the metadata server): call it at startup, not on a request."""
        google_auth = _import_google_auth()
        try:
            credentials, project_id = google_auth.default(scopes=list(scopes))
        except google_auth.exceptions.DefaultCredentialsError:
            raise ConfigurationError(
                "no Google application default credentials were found: set "
                "GOOGLE_APPLICATION_CREDENTIALS to a service-account key file, or run on a "
                "machine with a service account attached"
            ) from None
        options.setdefault("project_id", project_id)
        options.setdefault("name", "application-default")
        return cls(credentials, **options)

    # -- the hot path -----------------------------------------------------------------------------

    def token(self) -> str | None:
        """The current access token, or None when there is no valid one.

        While the token is fresh this is a clock read and one comparison. Within the refresh
        margin it still returns the token and starts one background refresh.
        """
        state = self._token
        if state is not None:
            now = time.monotonic()
            if now < state.refresh_at:
                return state.value
            if now < state.usable_until:
                self._refresh_in_background(now)
                return state.value
        return None

    async def get(self) -> str:
        """The current access token; when there is none, wait for one refresh.

        Raises:
            GoogleCredentialsError: the refresh failed (or failed less than ``failure_hold``
                seconds ago).
        """
        token = self.token()
        if token is not None:
            return token
        return await self._wait_for_refresh()

    async def _wait_for_refresh(self) -> str:
        import asyncio

        with self._lock:
            failure = self._failure
            if failure is not None and time.monotonic() < failure[0]:
                raise failure[1]
            future = self._start_refresh_locked()
        try:
            state = await asyncio.wrap_future(future)
        except GoogleCredentialsError:
            raise
        except Exception as exc:  # pragma: no cover - _refresh wraps every failure
            raise GoogleCredentialsError(f"{self.name}: {exc}", retryable=True) from None
        return state.value

    # -- refreshing -------------------------------------------------------------------------------

    def _refresh_in_background(self, now: float) -> None:
        with self._lock:
            if self._inflight is not None or now < self._next_background:
                return
            self._next_background = now + self._retry_interval
            self._start_refresh_locked()

    def _start_refresh_locked(self) -> concurrent.futures.Future[_Token]:
        """The refresh in flight, or a new one in a worker thread (caller holds the lock)."""
        if self._inflight is not None:
            return self._inflight
        future: concurrent.futures.Future[_Token] = concurrent.futures.Future()
        # Running from the start: a waiter that is cancelled cannot cancel it for the others.
        future.set_running_or_notify_cancel()
        self._inflight = future
        thread = threading.Thread(
            target=self._refresh, args=(future,), name="llmguard-google-auth", daemon=True
        )
        thread.start()
        return future

    def _refresh(self, future: concurrent.futures.Future[_Token]) -> None:
        """In the worker thread: one ``google-auth`` refresh, published to every waiter."""
        self.refreshes += 1
        try:
            state = self._fetch()
        except BaseException as exc:
            self.failures += 1
            message, retryable = _describe(exc)
            error = GoogleCredentialsError(
                f"Google credential {self.name}: {message}", retryable=retryable
            )
            current = self._token
            still_valid = current is not None and time.monotonic() < current.usable_until
            logger.warning(
                "google_token_refresh_failed credential=%s reason=%r %s",
                self.name,
                message,
                "keeping the current token" if still_valid else "no valid token",
            )
            with self._lock:
                self._failure = (time.monotonic() + self._failure_hold, error)
                self._inflight = None
            future.set_exception(error)
            return
        with self._lock:
            self._token = state
            self._failure = None
            self._next_background = 0.0
            self._inflight = None
        logger.info(
            "google_token_refreshed credential=%s expires_in=%.0f",
            self.name,
            state.expires - time.time(),
        )
        future.set_result(state)

    def _fetch(self) -> _Token:
        if self._session is None:
            import requests

            self._session = requests.Session()
        credentials = self._credentials
        credentials.refresh(self._request_type(session=self._session))  # type: ignore[no-untyped-call]
        value = credentials.token
        if not isinstance(value, str) or not value:
            raise ValueError("no access token in the answer")
        now_mono, now_wall = time.monotonic(), time.time()
        expiry: datetime.datetime | None = credentials.expiry
        if expiry is None:
            lifetime = 3600.0
        else:
            # google-auth keeps expiry as a naive UTC datetime
            lifetime = expiry.replace(tzinfo=datetime.UTC).timestamp() - now_wall
        lifetime = max(lifetime, 0.0)
        return _Token(
            value=value,
            refresh_at=now_mono + lifetime - min(self._margin, lifetime / 2),
            usable_until=now_mono + lifetime - min(self._skew, lifetime / 10),
            expires=now_wall + lifetime,
        )

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Fetch the first token now (idempotent)."""
        if self.token() is None:
            await self._wait_for_refresh()

    async def aclose(self) -> None:
        """Close the HTTP session used for refreshes (idempotent; a later use opens another)."""
        session, self._session = self._session, None
        if session is not None:
            session.close()

    def __repr__(self) -> str:
        state = self._token
        if state is None:
            status = "no token"
        else:
            left = state.expires - time.time()
            status = f"token expires in {left:.0f}s" if left > 0 else "token expired"
        project = f", project={self.project_id!r}" if self.project_id else ""
        return f"GoogleTokenSource({self.name!r}{project}, {status})"
