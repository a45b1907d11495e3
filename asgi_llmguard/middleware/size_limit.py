"""Refuse request bodies that are too large (413) or arrive too slowly (408).

Two checks, in the cheapest order:

1. From the headers alone: a ``Content-Length`` above the route's limit is refused before a
   single body byte is read, and nothing reaches the layers below. An unparseable
   ``Content-Length`` is a 400.
2. While the body streams in: ``receive`` is wrapped to count the bytes actually delivered
   (chunked bodies have no ``Content-Length``; in-process transports do not enforce one), and to
   put a deadline on the whole body. The moment the count passes the limit, or the deadline
   passes, the wrapped ``receive`` sends the error response and raises `BodyTooLarge` /
   `BodyTimeout` so that the app stops reading; the layer that was reading the body
   (``read_body``) lets it through and this middleware absorbs it. The rest of the body is never
   read, so never buffered: the response carries ``Connection: close`` and the server drops the
   connection with the unread bytes.

A key's policy can only *lower* the limit (``KeyPolicy.max_body_bytes``). The key is resolved
by the auth layer, below this one, but before anything reads the body, so it is looked up lazily,
on the first ``receive`` after it appears on the context.

Requests that have no body at all (``Content-Length: 0``, or an HTTP/1 request with neither
``Content-Length`` nor ``Transfer-Encoding``, e.g. every GET) are passed through untouched.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping

import msgspec

from asgi_llmguard.context import SCOPE_KEY, RequestContext, get_context
from asgi_llmguard.errors import ConfigurationError, send_error
from asgi_llmguard.routes import OPENAI, Dialect
from asgi_llmguard.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger("asgi_llmguard.size_limit")

#: The default request-body limit: far above any chat request, and above the providers' own
#: upload limits for audio (25 MB), so that the provider, not the gateway, refuses those.
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024

_CLOSE = ((b"connection", b"close"),)
# More digits than this cannot be a real length below any sane limit (and int() of a huge digit
# string is itself a cost an attacker could choose).
_MAX_DIGITS = 18


class BodyRejected(Exception):
    """The request body was refused while it was being received; ``status`` says why."""

    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BodyTooLarge(BodyRejected):
    """More body bytes arrived than the limit allows (413)."""

    status = 413


class BodyTimeout(BodyRejected):
    """The body did not arrive within the deadline, or arrived too slowly (408)."""

    status = 408


class SizeLimits(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The settings of `SizeLimitMiddleware`, its keyword arguments (see there), validated.

    The config file's ``[size_limit]`` section is this struct (where ``body_timeout = 0`` stands
    for ``None``, which TOML cannot write)."""

    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    per_route: Mapping[str, int] | None = None
    body_timeout: float | None = 60.0
    min_body_rate: float | None = None
    body_rate_grace: float = 5.0

    def __post_init__(self) -> None:
        _check_limit("max_body_bytes", self.max_body_bytes)
        for operation, limit in (self.per_route or {}).items():
            if not isinstance(operation, str) or not operation:
                raise ConfigurationError(
                    f"per_route keys must be endpoint operations such as 'chat.completions', "
                    f"not {operation!r}"
                )
            _check_limit(f"per_route[{operation!r}]", limit)
        timeout = self.body_timeout
        if timeout is not None and not (
            isinstance(timeout, int | float) and 0 < timeout < math.inf
        ):
            raise ConfigurationError(
                f"body_timeout must be a positive number of seconds or None, not {timeout!r}"
            )
        rate = self.min_body_rate
        if rate is not None and not (isinstance(rate, int | float) and 0 < rate < math.inf):
            raise ConfigurationError(
                f"min_body_rate must be a positive number of bytes per second or None, not {rate!r}"
            )
        grace = self.body_rate_grace
        if not (isinstance(grace, int | float) and 0 <= grace < math.inf):
            raise ConfigurationError(f"body_rate_grace must be seconds (>= 0), not {grace!r}")


class SizeLimitMiddleware:
    """Limit the size of request bodies and the time they may take to arrive.

    - ``max_body_bytes``: the limit for every route without its own (default 32 MiB).
    - ``per_route``: limits by endpoint operation, e.g. ``{"audio.transcriptions": 26_000_000,
      "embeddings": 4_000_000}``; they may be higher or lower than ``max_body_bytes``.
    - ``body_timeout``: seconds the whole body may take, counted from the moment the app first
      asks for it (default 60); ``None`` for no deadline.
    - ``min_body_rate``: bytes per second the body must keep up, on average, once
      ``body_rate_grace`` seconds have passed (default: no rate check). Use it instead of a short
      ``body_timeout`` on upload routes, where big bodies legitimately take long.

    Refusals are JSON in the route's provider shape, with ``Connection: close``: 413 for a body
    over the limit, 408 for a slow body, 400 for an invalid ``Content-Length``.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        per_route: Mapping[str, int] | None = None,
        body_timeout: float | None = 60.0,
        min_body_rate: float | None = None,
        body_rate_grace: float = 5.0,
    ) -> None:
        #: The settings, validated (`ConfigurationError` names the wrong one).
        self.settings = SizeLimits(
            max_body_bytes=max_body_bytes,
            per_route=per_route,
            body_timeout=body_timeout,
            min_body_rate=min_body_rate,
            body_rate_grace=body_rate_grace,
        )
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.per_route: Mapping[str, int] = dict(per_route or {})
        self.body_timeout = float(body_timeout) if body_timeout is not None else None
        self.min_body_rate = float(min_body_rate) if min_body_rate is not None else None
        self.body_rate_grace = float(body_rate_grace)
        # How often the deadlines are checked (see `_Watchdog`); 0: no deadline to check.
        periods = [t for t in (self.body_timeout,) if t is not None]
        if self.min_body_rate is not None:
            periods.append(max(self.body_rate_grace, 0.1))
        self._tick = min(1.0, max(0.01, min(periods) / 10)) if periods else 0.0
        self._watchdog: _Watchdog | None = None
        self._timed = self._tick > 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ctx: RequestContext = scope.get(SCOPE_KEY) or get_context(scope)
        route = ctx.route
        limit = self.max_body_bytes
        dialect = OPENAI
        if route is not None:
            endpoint = route.endpoint
            dialect = endpoint.dialect
            limit = self.per_route.get(endpoint.operation, limit)

        # One pass over the headers: Content-Length (all copies must agree) and whether a
        # Transfer-Encoding says a body follows without one.
        length: int | None = None
        invalid = False
        chunked = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                parsed = _parse_length(value)
                if parsed is None or (length is not None and parsed != length):
                    invalid = True
                    break
                length = parsed
            elif name == b"transfer-encoding":
                chunked = True
        if invalid:
            await send_error(
                send, 400, "Invalid Content-Length header.", dialect=dialect, headers=_CLOSE
            )
            return
        if length is not None and length > limit:
            await send_error(
                send, 413, _too_large(limit, by_key=False), dialect=dialect, headers=_CLOSE
            )
            return
        if length == 0 or (
            length is None and not chunked and scope.get("http_version", "1.1") in ("1.1", "1.0")
        ):
            # No body (RFC 9112 §6.3): nothing to count and nothing to wait for.
            await self.app(scope, receive, send)
            return

        guard = _BodyGuard(receive, send, ctx, limit, length, self, dialect)
        try:
            await self.app(scope, guard.receive, send)
        except Exception as exc:
            if guard.error is None:
                raise
            # Refused: the error response is already out (sent from the wrapped receive). What
            # the app did with the exception next (a framework turning it into a 400 or 500 that
            # the server then refused to send) is of no consequence to the client.
            if exc is not guard.error:
                logger.debug("after a refused body the app raised %s", type(exc).__name__)
        finally:
            guard.close()

    def watchdog(self) -> _Watchdog:
        """The deadline checker of the running loop (shared by this middleware's requests)."""
        loop = asyncio.get_running_loop()
        watchdog = self._watchdog
        if watchdog is None or watchdog.loop is not loop:
            watchdog = self._watchdog = _Watchdog(loop, self._tick)
        return watchdog


def _check_limit(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigurationError(f"{name} must be a non-negative number of bytes, not {value!r}")


def _parse_length(value: bytes) -> int | None:
    value = value.strip(b" \t")
    if not value.isdigit():
        return None
    if len(value) > _MAX_DIGITS:
        return 1 << 62  # a valid number, larger than any limit
    return int(value)


def _too_large(limit: int, *, by_key: bool) -> str:
    whose = "this key's limit" if by_key else "the limit for this endpoint"
    return f"The request body is larger than {whose} of {limit} bytes."


class _Watchdog:
    """Expires the slow bodies of one event loop: one timer ticking while bodies are in progress.

    A loop timer per request would cost more than the rest of this layer (arming and cancelling
    it, for bodies that almost always are already there); instead each body in progress sits in
    a set, and one tick every ``tick`` seconds checks their deadlines. A body thus gets up to one
    tick (a tenth of the timeout, at most one second) beyond its deadline. The set holds only
    bodies being received; each leaves it when complete, refused, or when its request ends.
    """

    __slots__ = ("guards", "handle", "loop", "tick")

    def __init__(self, loop: asyncio.AbstractEventLoop, tick: float) -> None:
        self.loop = loop
        self.tick = tick
        self.guards: set[_BodyGuard] = set()
        self.handle: asyncio.TimerHandle | None = None

    def add(self, guard: _BodyGuard) -> None:
        self.guards.add(guard)
        if self.handle is None:
            self.handle = self.loop.call_later(self.tick, self._sweep)

    def _sweep(self) -> None:
        self.handle = None
        now = self.loop.time()
        late = [guard for guard in self.guards if guard.deadline() <= now]
        for guard in late:
            self.guards.discard(guard)
            guard.expire()
        if self.guards:
            self.handle = self.loop.call_later(self.tick, self._sweep)


class _BodyGuard:
    """The wrapped ``receive`` of one request: counts bytes; the watchdog enforces the deadline.

    When the deadline passes while the app waits in ``receive``, that wait is cancelled (and
    only that wait: the cancellation is taken back with ``Task.uncancel`` and replaced by
    `BodyTimeout`, as ``asyncio.timeout`` does); when it passes between two ``receive`` calls, the
    next one raises.
    """

    __slots__ = (
        "_receive",
        "_send",
        "by_key",
        "cancelling",
        "config",
        "ctx",
        "deadline_total",
        "dialect",
        "done",
        "error",
        "expired",
        "keyed",
        "length",
        "limit",
        "received",
        "start",
        "unwatched",
        "waiter",
        "watchdog",
    )

    def __init__(
        self,
        receive: Receive,
        send: Send,
        ctx: RequestContext,
        limit: int,
        length: int | None,
        config: SizeLimitMiddleware,
        dialect: Dialect,
    ) -> None:
        self._receive = receive
        self._send = send
        self.dialect = dialect
        self.ctx = ctx
        self.limit = limit
        self.length = length
        self.config = config
        self.received = 0
        self.done = False
        self.keyed = False
        self.by_key = False
        self.expired: BodyTimeout | None = None
        self.error: BodyRejected | None = None
        self.watchdog: _Watchdog | None = None
        self.unwatched = config._timed
        self.waiter: asyncio.Task[object] | None = None
        self.cancelling = 0
        self.start = 0.0
        self.deadline_total = math.inf

    async def receive(self) -> Message:
        if self.error is not None:
            raise self.error  # refused: the rest of the body is never read
        if self.done:
            # Body complete: what follows (http.disconnect for a watcher) passes untouched.
            return await self._receive()
        if not self.keyed and (lower := self._check_key()) is not None:
            raise await self._refuse(lower)
        if self.unwatched:
            self._watch()
        if self.watchdog is None:  # no deadline: nothing can interrupt the wait
            message = await self._receive()
        else:
            if self.expired is not None:
                raise await self._refuse(self.expired)
            task: asyncio.Task[object] = asyncio.current_task()  # type: ignore[assignment]
            self.waiter = task
            try:
                message = await self._receive()
            except asyncio.CancelledError:
                # Cancelled by the watchdog (it sets ``expired`` and ``cancelling`` first)?
                expired = self._expiry()
                if expired is not None and task.uncancel() <= self.cancelling:
                    raise await self._refuse(expired) from None
                raise
            finally:
                self.waiter = None
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit:
                raise await self._refuse(BodyTooLarge(_too_large(self.limit, by_key=self.by_key)))
            if not message.get("more_body", False):
                self.close()
        else:  # http.disconnect: the body will never complete
            self.close()
        return message

    def _expiry(self) -> BodyTimeout | None:
        return self.expired

    def _check_key(self) -> BodyTooLarge | None:
        """Apply the key's lower limit once the key is known; the refusal if CL exceeds it."""
        key = self.ctx.key
        if key is None:
            return None
        self.keyed = True
        lower = key.max_body_bytes
        if lower is not None and lower < self.limit:
            self.limit = lower
            self.by_key = True
            if self.length is not None and self.length > lower:
                return BodyTooLarge(_too_large(lower, by_key=True))
        return None

    async def _refuse(self, error: BodyRejected) -> BodyRejected:
        """Answer the refusal now, then let the caller raise it to stop the app reading.

        Answering here rather than where the exception is caught means the client gets the 413
        or 408 even when the app below catches every exception (FastAPI turns an error while
        reading the body into a 400): its own answer then comes second and the server refuses
        it. If the app had already started its response, the server refuses ours instead (ASGI
        servers raise on an out-of-order message) and closes the connection on the unfinished
        answer; checking this way keeps ``send`` unwrapped, so this layer costs nothing per
        response chunk.
        """
        self.error = error
        self.close()
        try:
            await send_error(
                self._send, error.status, error.message, dialect=self.dialect, headers=_CLOSE
            )
        except Exception:
            logger.debug("request body refused after the response started (%s)", error.status)
        return error

    # -- the deadline -----------------------------------------------------------------------------

    def _watch(self) -> None:
        self.unwatched = False
        watchdog = self.watchdog = self.config.watchdog()  # only when a deadline is configured
        self.start = watchdog.loop.time()
        timeout = self.config.body_timeout
        if timeout is not None:
            self.deadline_total = self.start + timeout
        watchdog.add(self)

    def deadline(self) -> float:
        rate = self.config.min_body_rate
        if rate is None:
            return self.deadline_total
        rated = self.start + max(self.config.body_rate_grace, self.received / rate)
        return min(self.deadline_total, rated)

    def expire(self) -> None:
        if self.done:
            return
        config = self.config
        if self.deadline() >= self.deadline_total:
            self.expired = BodyTimeout(
                f"The request body was not received within {config.body_timeout:g} seconds."
            )
        else:
            self.expired = BodyTimeout(
                f"The request body arrived too slowly "
                f"(less than {config.min_body_rate:g} bytes per second on average)."
            )
        waiter = self.waiter
        if waiter is not None:
            # As asyncio.timeout does: remember the task's pending cancellations, so that the
            # waiting receive can tell ours from a real one and take back only ours.
            self.cancelling = waiter.cancelling()
            waiter.cancel()

    def close(self) -> None:
        """The body is complete or refused, or the request is over: stop watching it."""
        self.done = True
        watchdog = self.watchdog
        if watchdog is not None:
            watchdog.guards.discard(self)
