"""Upstream credentials for Vertex AI: OAuth 2.0 access tokens from ``google-auth``.

A :class:`GoogleTokenSource` holds one Google credential (a service-account key file, its parsed
content, or the application default credentials) and the access token it last obtained. Requests
read the token with :meth:`~GoogleTokenSource.token` (a clock read and a comparison while it is
fresh) or ``await`` :meth:`~GoogleTokenSource.get`. The token is refreshed ahead of its expiry, in a
worker thread (``google-auth`` blocks on its HTTP call), while requests go on using the current
one; concurrent needs for a refresh share one. Once started, the source also refreshes on a
timer, so a token is ready whether or not requests come; a failed refresh is retried in the
background (after ``retry_interval``, doubling up to ``max_retry_interval``) until a token is had
again; a failure is logged once (again only when it changes), never with a token or a key. A
request that finds no valid token either waits on one refresh (:meth:`~GoogleTokenSource.get`)
or is told at once why there is none and when the next attempt is due
(:meth:`~GoogleTokenSource.unavailable`).

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
    was refused (a revoked or malformed key). ``retry_after`` is the seconds until the source's
    next refresh attempt, when one is scheduled.
    """

    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


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
        retry_interval: Seconds before the first background refresh attempt after a failure;
            the wait doubles after each further failure, up to ``max_retry_interval``.
        max_retry_interval: The longest wait between background refresh attempts.
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
        max_retry_interval: float = 300.0,
        failure_hold: float = 1.0,
        name: str | None = None,
    ) -> None:
        google_auth = _import_google_auth()
        for label, value in (
            ("refresh_margin", refresh_margin),
            ("expiry_skew", expiry_skew),
            ("retry_interval", retry_interval),
            ("max_retry_interval", max_retry_interval),
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
        self._max_retry_interval = max(float(max_retry_interval), self._retry_interval)
        self._failure_hold = float(failure_hold)
        self._token: _Token | None = None
        self._lock = threading.Lock()
        self._inflight: concurrent.futures.Future[_Token] | None = None
        self._next_background = 0.0
        self._failure: tuple[float, GoogleCredentialsError] | None = None
        self._session: Any = None
        #: Started and not closed: failed refreshes are retried by a timer.
        self._running = False
        self._timer: threading.Timer | None = None
        #: Failures in a row, and the last one logged (each distinct failure is logged once).
        self._consecutive = 0
        self._logged: str | None = None
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
        margin it still returns the token and starts one background refresh; without a valid
        token it starts one too, unless a failed one is waiting for its retry (see
        :meth:`unavailable` for why there is no token).
        """
        state = self._token
        now = time.monotonic()
        if state is not None:
            if now < state.refresh_at:
                return state.value
            if now < state.usable_until:
                self._refresh_in_background(now)
                return state.value
        self._refresh_in_background(now)
        return None

    def unavailable(self) -> GoogleCredentialsError:
        """Why :meth:`token` has no token: the last refresh failure, with the seconds until the
        next attempt as ``retry_after``; while the first refresh is still running, a
        retryable error with ``retry_after`` 1."""
        with self._lock:
            failure = self._failure
            due = self._next_background
            refreshing = self._inflight is not None
        if failure is None:
            return GoogleCredentialsError(
                f"Google credential {self.name}: no access token yet, a refresh is running",
                retryable=True,
                retry_after=1.0,
            )
        error = failure[1]
        wait = 1.0 if refreshing else max(due - time.monotonic(), 1.0)
        return GoogleCredentialsError(str(error), retryable=error.retryable, retry_after=wait)

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
            self._failed(future, exc)
            return
        with self._lock:
            self._token = state
            self._failure = None
            self._next_background = 0.0
            self._inflight = None
            recovered = self._consecutive > 0
            self._consecutive = 0
            self._logged = None
            if self._running:  # the next refresh is due then, requests or not
                self._schedule_locked(state.refresh_at - time.monotonic() + 0.01)
        if recovered:
            logger.warning(
                "google_token_refreshed credential=%s after failures expires_in=%.0f",
                self.name,
                state.expires - time.time(),
            )
        else:
            logger.info(
                "google_token_refreshed credential=%s expires_in=%.0f",
                self.name,
                state.expires - time.time(),
            )
        future.set_result(state)

    def _failed(self, future: concurrent.futures.Future[_Token], exc: BaseException) -> None:
        """A refresh failed: publish the error, log it if it is new, schedule the retry."""
        self.failures += 1
        message, retryable = _describe(exc)
        error = GoogleCredentialsError(
            f"Google credential {self.name}: {message}", retryable=retryable
        )
        current = self._token
        still_valid = current is not None and time.monotonic() < current.usable_until
        with self._lock:
            self._consecutive += 1
            delay = min(
                self._retry_interval * 2.0 ** (self._consecutive - 1), self._max_retry_interval
            )
            now = time.monotonic()
            self._failure = (now + self._failure_hold, error)
            self._next_background = now + delay
            self._inflight = None
            first = self._logged != message
            self._logged = message
            if self._running:
                self._schedule_locked(delay)
        if first:
            logger.log(
                logging.WARNING if retryable or still_valid else logging.ERROR,
                "google_token_refresh_failed credential=%s reason=%r %s; %s",
                self.name,
                message,
                "keeping the current token" if still_valid else "no valid token",
                "retrying in the background"
                if retryable
                else "the credential was refused: check the service-account key",
            )
        else:
            logger.debug(
                "google_token_refresh_failed again credential=%s failures=%d",
                self.name,
                self._consecutive,
            )
        future.set_exception(error)

    def _schedule_locked(self, delay: float) -> None:
        """Refresh in ``delay`` seconds, requests or not (caller holds the lock)."""
        if self._timer is not None:
            self._timer.cancel()
        timer = threading.Timer(max(delay, 0.0), self._retry)
        timer.daemon = True
        timer.name = "llmguard-google-auth-retry"
        self._timer = timer
        timer.start()

    def _retry(self) -> None:
        with self._lock:
            self._timer = None
            if not self._running or self._inflight is not None:
                return
            state = self._token
            if state is not None and time.monotonic() < state.refresh_at:
                return  # a request-driven refresh got a fresh token meanwhile
            self._next_background = time.monotonic() + self._retry_interval
            self._start_refresh_locked()

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
        """Fetch the first token now (idempotent), and from now on retry failed refreshes in
        the background until :meth:`aclose`.

        Raises:
            GoogleCredentialsError: the credential was refused (a bad or revoked key). A
                temporary failure (the token endpoint unreachable) is logged and retried in the
                background instead: requests are answered "unavailable" until a token is had.
        """
        with self._lock:
            self._running = True
        if self.token() is not None:
            return
        try:
            await self._wait_for_refresh()
        except GoogleCredentialsError as exc:
            if not exc.retryable:
                with self._lock:
                    self._running = False
                    timer, self._timer = self._timer, None
                if timer is not None:
                    timer.cancel()
                raise
            with self._lock:
                if self._timer is None and self._inflight is None:
                    # failed within failure_hold of an earlier attempt: nothing scheduled yet
                    self._schedule_locked(max(self._next_background - time.monotonic(), 0.0))

    async def aclose(self) -> None:
        """Stop the background retries and close the HTTP session used for refreshes
        (idempotent; a later use opens another)."""
        with self._lock:
            self._running = False
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
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
