"""Liveness and readiness endpoints, answered by the gateway itself.

``GET /healthz`` says the process is up and serving (always 200). ``GET /readyz`` runs the
configured dependency checks (Redis, PostgreSQL, your own) and answers 200 only when all pass, so
a load balancer or Kubernetes stops sending traffic to a replica that cannot do its work.

Probes come often and from many places at once, so the checks must not be run once per probe:
the result of a run is cached for ``cache_ttl`` seconds, and probes that arrive while a run is
under way wait for that run instead of starting their own. Each check is bounded by
``check_timeout``, and checks run concurrently, so a probe is answered within about that time
even when a dependency hangs.

Responses name each check and say ``"ok"``, ``"fail"`` or ``"timeout"``; they never carry an
exception's text, and logs carry only its type, so a DSN with a password cannot leak.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson

from asgi_llmguard.context import route_path
from asgi_llmguard.errors import ConfigurationError, send_body
from asgi_llmguard.lifecycle import Resource
from asgi_llmguard.types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    import redis.asyncio
    import redis.asyncio.cluster

logger = logging.getLogger("asgi_llmguard.health")

Check = Callable[[], Awaitable[bool]]
_NO_CHECKS: Mapping[str, Check] = MappingProxyType({})

_JSON = (b"content-type", b"application/json")
_NO_STORE = (b"cache-control", b"no-store")
_ALLOW = ((b"allow", b"GET, HEAD"),)
_LIVE_BODY = orjson.dumps({"status": "ok"})


class HealthMiddleware(Resource):
    """Answer ``live_path`` and ``ready_path`` (GET/HEAD) here; pass everything else on.

    - Liveness: always ``200 {"status": "ok"}``.
    - Readiness: runs ``checks`` (name -> ``async () -> bool``) concurrently, each bounded by
      ``check_timeout`` seconds; a check that returns false or raises is ``"fail"``, one that
      takes too long ``"timeout"``. All ok: ``200 {"status": "ready", "checks": {...}}``, else
      ``503 {"status": "unready", "checks": {...}}``. Results are cached for ``cache_ttl``
      seconds (0: no cache), and concurrent probes share one run.
    - Other methods on these paths get 405. Paths are matched on the route path (``path`` minus
      the ``root_path`` of a mount), so the endpoints follow the gateway when it is mounted.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        live_path: str = "/healthz",
        ready_path: str = "/readyz",
        checks: Mapping[str, Check] = _NO_CHECKS,
        check_timeout: float = 1.0,
        cache_ttl: float = 1.0,
    ) -> None:
        for name, path in (("live_path", live_path), ("ready_path", ready_path)):
            if not isinstance(path, str) or not path.startswith("/"):
                raise ConfigurationError(f"{name} must be a path starting with '/', not {path!r}")
        if live_path == ready_path:
            raise ConfigurationError("live_path and ready_path must differ")
        for name, check in checks.items():
            if not isinstance(name, str) or not name:
                raise ConfigurationError(f"check names must be non-empty strings, not {name!r}")
            if not callable(check):
                raise ConfigurationError(f"check {name!r} must be an async callable")
        if isinstance(check_timeout, bool) or not isinstance(check_timeout, int | float):
            raise ConfigurationError(f"check_timeout must be a number, not {check_timeout!r}")
        if check_timeout <= 0:
            raise ConfigurationError(f"check_timeout must be positive, not {check_timeout!r}")
        if isinstance(cache_ttl, bool) or not isinstance(cache_ttl, int | float) or cache_ttl < 0:
            raise ConfigurationError(f"cache_ttl must be a number >= 0, not {cache_ttl!r}")
        self.app = app
        self._live = live_path
        self._ready = ready_path
        self._checks = dict(checks)
        self._timeout = float(check_timeout)
        self._ttl = float(cache_ttl)
        # The shared cache: the last result and when it expires, and the run under way, if any.
        self._cached: tuple[float, int, bytes] | None = None
        self._running: asyncio.Task[tuple[int, bytes]] | None = None
        #: How many times the checks have been run (for metrics and tests).
        self.runs = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = route_path(scope)
        if path != self._live and path != self._ready:
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        if method not in ("GET", "HEAD"):
            await send_body(
                send,
                405,
                orjson.dumps({"status": "error", "message": f"Method {method} not allowed."}),
                _ALLOW,
            )
            return
        if path == self._live:
            status, body = 200, _LIVE_BODY
        else:
            status, body = await self.readiness()
        await _respond(send, status, body, head=method == "HEAD")

    async def readiness(self) -> tuple[int, bytes]:
        """The readiness status and JSON body: cached, or from the run under way, or a new run."""
        cached = self._cached
        if cached is not None and time.monotonic() < cached[0]:
            return cached[1], cached[2]
        task = self._running
        if task is None or task.get_loop() is not asyncio.get_running_loop():
            task = self._running = asyncio.create_task(self._run())
        # shield: a probe whose client leaves must not cancel the run the others wait for.
        return await asyncio.shield(task)

    async def _run(self) -> tuple[int, bytes]:
        try:
            self.runs += 1
            names = list(self._checks)
            outcomes = await asyncio.gather(*(self._one(name) for name in names))
            results = dict(zip(names, outcomes, strict=True))
            ok = all(outcome == "ok" for outcome in outcomes)
            status = 200 if ok else 503
            body = orjson.dumps({"status": "ready" if ok else "unready", "checks": results})
            if self._ttl > 0:
                self._cached = (time.monotonic() + self._ttl, status, body)
            return status, body
        finally:
            self._running = None

    async def _one(self, name: str) -> str:
        try:
            async with asyncio.timeout(self._timeout):
                passed = await self._checks[name]()
        except TimeoutError:
            logger.warning("readiness check %r timed out after %s s", name, self._timeout)
            return "timeout"
        except Exception as exc:
            # The type only: an exception's text may hold a DSN with its password.
            logger.warning("readiness check %r failed: %s", name, type(exc).__name__)
            return "fail"
        if passed is not True:
            logger.warning("readiness check %r reported failure", name)
            return "fail"
        return "ok"

    async def aclose(self) -> None:
        """Close the checks that hold connections (those with an ``aclose``, e.g. `redis_check`)."""
        for check in self._checks.values():
            close = getattr(check, "aclose", None)
            if close is not None:
                await close()

    def __repr__(self) -> str:
        return (
            f"<HealthMiddleware live={self._live!r} ready={self._ready!r} "
            f"checks={list(self._checks)}>"
        )


async def _respond(send: Send, status: int, body: bytes, *, head: bool) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [_JSON, _NO_STORE, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": b"" if head else body, "more_body": False})


def _safe_url(url: str) -> str:
    """``url`` without its user info (no password in a repr or a log line)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparseable url>"
    return f"{parts.scheme}://{host}{port}{parts.path}"


class RedisCheck:
    """A readiness check that PINGs Redis; the client is created on first use and reused."""

    def __init__(self, url: str, *, timeout: float = 1.0, **tls: str) -> None:
        from asgi_llmguard._redis import split_tls

        self._tls, unknown = split_tls(tls)
        if unknown:
            raise TypeError(f"unexpected keyword arguments: {', '.join(sorted(unknown))}")
        self._url = url
        self._timeout = timeout
        self._client: redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster | None = None

    async def __call__(self) -> bool:
        client = self._client
        if client is None:
            from asgi_llmguard._redis import redis_client

            client = self._client = redis_client(
                self._url, timeout=self._timeout, max_connections=2, **self._tls
            )
        return bool(await client.ping())

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def __repr__(self) -> str:
        return f"<RedisCheck {_safe_url(self._url)}>"


class PostgresCheck:
    """A readiness check that connects to PostgreSQL and runs ``SELECT 1``.

    A fresh connection per run: with the readiness cache that is at most one connection per
    ``cache_ttl``, and it tests what matters (that new connections can be made) without tying a
    pool to one event loop.
    """

    def __init__(self, dsn: str, *, timeout: float = 1.0) -> None:
        self._dsn = dsn
        self._timeout = timeout

    async def __call__(self) -> bool:
        import asyncpg  # type: ignore[import-untyped]

        conn: Any = await asyncpg.connect(self._dsn, timeout=self._timeout)
        try:
            return bool(await conn.fetchval("SELECT 1", timeout=self._timeout) == 1)
        finally:
            await conn.close(timeout=self._timeout)

    def __repr__(self) -> str:
        return f"<PostgresCheck {_safe_url(self._dsn)}>"


def redis_check(url: str, *, timeout: float = 1.0, **tls: str) -> RedisCheck:
    """A check that PINGs the Redis at ``url`` (``redis://...``, ``rediss://...``,
    ``redis+cluster://...``); ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile`` and
    ``ssl_cert_reqs`` as for the stores."""
    return RedisCheck(url, timeout=timeout, **tls)


def postgres_check(dsn: str, *, timeout: float = 1.0) -> PostgresCheck:
    """A check that runs ``SELECT 1`` on the PostgreSQL at ``dsn`` (``postgresql://...``)."""
    return PostgresCheck(dsn, timeout=timeout)
