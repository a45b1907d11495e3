"""`AdminApp`: the operators' JSON API and dashboard; `AdminMount` serves it under a prefix.

The admin API has its own key, unrelated to virtual keys: ``Authorization: Bearer <admin key>``.
Only the key's SHA-256 is kept, and a presented key is hashed and compared in constant time
(``hmac.compare_digest`` on the digests), so neither its length nor its prefix can be probed.
Every route answers 401 without the key, before the route is even looked up (a caller without the
key learns nothing about which routes exist). The one exception is ``GET /dashboard``: a static
page with no data in it, which asks for the key and sends it with each of its API calls.

`AdminMount` sits outside the guarded stack (see `build_stack`'s ``admin``): admin requests need
no virtual key, are not rate limited, shed or metered, and are not counted as LLM traffic.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

import msgspec

from asgi_llmguard.admin._request import AdminError, Request
from asgi_llmguard.admin.ops import Operations
from asgi_llmguard.context import route_path
from asgi_llmguard.errors import ConfigurationError, error_body, send_body
from asgi_llmguard.keys.base import KeyStore
from asgi_llmguard.keys.hashing import is_key_hash
from asgi_llmguard.middleware.ratelimit import RateLimitMiddleware
from asgi_llmguard.types import ASGIApp, Receive, Scope, Send
from asgi_llmguard.usage.budgets import BudgetStore

logger = logging.getLogger("asgi_llmguard.admin")

Handler = Callable[[Request], Awaitable[tuple[int, Any]]]
#: Shorter admin keys are refused: the key guards every key, budget and the ledger.
MIN_KEY_LENGTH = 24
_SEGMENT = "([^/]+)"
_JSON = (b"content-type", b"application/json")
_NO_STORE = (b"cache-control", b"no-store")


def admin_key_hash(key: str) -> str:
    """The digest an admin key is kept as (SHA-256, hex)."""
    return hashlib.sha256(key.encode()).hexdigest()


def _dashboard() -> tuple[bytes, bytes]:
    """The dashboard page and its Content-Security-Policy.

    The policy allows exactly the page's own inline script (by its hash) and calls back to the
    same origin: no other script, no frame, no outside request can run in it.
    """
    page = resources.files("asgi_llmguard.admin").joinpath("dashboard.html").read_bytes()
    scripts = re.findall(rb"<script>(.*?)</script>", page, re.S)
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(s).digest()).decode() + "'" for s in scripts
    )
    csp = (
        f"default-src 'none'; script-src {hashes}; style-src 'unsafe-inline'; "
        "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )
    return page, csp.encode()


class AdminApp:
    """The admin API (see docs/operations.md, "Admin API").

    - ``key`` or ``key_hash``: the admin key, or its SHA-256 (64 hex digits); required.
    - ``keys``: the `KeyStore` whose keys are listed, created and revoked, and whose policies
      give each key's budget and rate limits.
    - ``budgets``: the usage layer's `BudgetStore`; ``rate_limit``: the `RateLimitMiddleware`
      whose buckets are read and reset; ``forwarder``: the forwarding app, whose ``cooldowns``
      and ``breaker`` (when it has them) are listed and reset.
    - ``ledger``: the usage ledger's URL (``sqlite:///...`` or ``postgresql://...``) for the
      usage queries; ``reload``: an async callable that reloads the gateway's configuration
      (``POST /reload``; 501 without one).
    - ``max_body_bytes``: the largest request body accepted (413 past it).

    Any of the parts may be ``None``: its routes then answer 409 saying what is not configured.
    """

    def __init__(
        self,
        *,
        key: str | None = None,
        key_hash: str | None = None,
        keys: KeyStore | None = None,
        budgets: BudgetStore | None = None,
        rate_limit: RateLimitMiddleware | None = None,
        forwarder: object | None = None,
        ledger: str | None = None,
        reload: Callable[[], Awaitable[object]] | None = None,
        max_body_bytes: int = 65_536,
    ) -> None:
        if (key is None) == (key_hash is None):
            raise ConfigurationError("the admin API needs exactly one of key and key_hash")
        if key is not None:
            if len(key) < MIN_KEY_LENGTH or not key.isascii() or not key.isprintable():
                raise ConfigurationError(
                    f"the admin key must be at least {MIN_KEY_LENGTH} printable ASCII characters"
                    " (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
                )
            key_hash = admin_key_hash(key)
        assert key_hash is not None
        key_hash = key_hash.lower()
        if not is_key_hash(key_hash):
            raise ConfigurationError("the admin key_hash must be 64 hex digits (SHA-256)")
        if not (isinstance(max_body_bytes, int) and max_body_bytes > 0):
            raise ConfigurationError("max_body_bytes must be a positive integer")
        if reload is not None and not callable(reload):
            raise ConfigurationError("reload must be an async callable")
        self._digest = bytes.fromhex(key_hash)
        self._max_body = max_body_bytes
        self.ops = Operations(
            keys=keys,
            budgets=budgets,
            rate_limit=rate_limit,
            forwarder=forwarder,
            ledger=ledger,
            reload=reload,
        )
        ops = self.ops
        table: list[tuple[str, str, Handler]] = [
            ("GET", "/keys", ops.list_keys),
            ("POST", "/keys", ops.create_key),
            ("DELETE", f"/keys/{_SEGMENT}", ops.revoke_key),
            ("GET", f"/budgets/{_SEGMENT}", ops.show_budget),
            ("POST", f"/budgets/{_SEGMENT}/reset", ops.reset_budget),
            ("GET", f"/ratelimits/{_SEGMENT}", ops.show_ratelimit),
            ("POST", f"/ratelimits/{_SEGMENT}/reset", ops.reset_ratelimit),
            ("GET", "/cooldowns", ops.list_cooldowns),
            ("POST", "/cooldowns/reset", ops.reset_cooldowns),
            ("GET", "/usage", ops.usage.usage),
            ("GET", "/usage/top-keys", ops.usage.top_keys),
            ("POST", "/reload", ops.reload),
        ]
        self._routes = [(method, re.compile(path), handler) for method, path, handler in table]
        self._page, self._csp = _dashboard()

    #: Every API route as ``(method, path pattern)``: for documentation and tests.
    @property
    def routes(self) -> list[tuple[str, str]]:
        return [(method, pattern.pattern) for method, pattern, _ in self._routes]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # no websockets; lifespan is the host app's business
        method: str = scope["method"]
        path = route_path(scope).rstrip("/") or "/"
        if path == "/dashboard" and method in ("GET", "HEAD"):
            await self._send_page(send, head=method == "HEAD")
            return
        if not self._authorized(scope):
            client = scope.get("client")
            logger.warning(
                "admin API: refused %s %s from %s (missing or wrong admin key)",
                method,
                path[:100],
                client[0] if client else "-",
            )
            await _send_error(
                send,
                AdminError(401, "A valid admin key is required.", "authentication_error"),
                [(b"www-authenticate", b'Bearer realm="asgi-llmguard admin"')],
            )
            return
        allowed: list[str] = []
        for route_method, pattern, handler in self._routes:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            if route_method != method:
                allowed.append(route_method)
                continue
            await self._dispatch(scope, receive, send, handler, match.groups())
            return
        if allowed:
            error = AdminError(405, f"Method {method} is not allowed on {path[:100]}.")
            await _send_error(send, error, [(b"allow", ", ".join(allowed).encode())])
            return
        await _send_error(send, AdminError(404, f"No admin route {path[:100]}.", code="not_found"))

    def _authorized(self, scope: Scope) -> bool:
        presented = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    presented = token.strip()
                break
        # Always hash and compare, key or not, so a missing key takes as long as a wrong one.
        digest = hashlib.sha256(presented).digest()
        return hmac.compare_digest(digest, self._digest) and bool(presented)

    async def _dispatch(
        self, scope: Scope, receive: Receive, send: Send, handler: Handler, groups: Any
    ) -> None:
        try:
            body = await self._read_body(receive) if scope["method"] in ("POST", "PUT") else b""
            request = Request.make(scope, groups, body)
            status, payload = await handler(request)
        except AdminError as exc:
            await _send_error(send, exc)
            return
        except Exception:
            logger.exception("admin API: %s %s failed", scope["method"], route_path(scope)[:100])
            await _send_error(send, AdminError(500, "The admin operation failed; see the log."))
            return
        await send_body(send, status, msgspec.json.encode(payload), [_NO_STORE])

    async def _read_body(self, receive: Receive) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise AdminError(400, "The client went away.")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self._max_body:
                raise AdminError(413, f"The request body is larger than {self._max_body} bytes.")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _send_page(self, send: Send, *, head: bool) -> None:
        headers = [
            (b"content-type", b"text/html; charset=utf-8"),
            (b"content-length", str(len(self._page)).encode()),
            (b"content-security-policy", self._csp),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
            _NO_STORE,
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if head else self._page})

    def __repr__(self) -> str:
        return f"<AdminApp routes={len(self._routes)}>"


async def _send_error(
    send: Send, error: AdminError, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = error_body(error.status, error.message, type=error.type, code=error.code)
    await send_body(send, error.status, body, [_NO_STORE, *(headers or [])])


class AdminMount:
    """Serve ``admin`` under ``path`` (default ``/admin``) in front of ``app``.

    Requests under the prefix go to the admin app (with the prefix moved to ``root_path``, as
    Starlette's ``Mount`` does); everything else, lifespan included, goes to ``app``.
    """

    def __init__(self, app: ASGIApp, admin: ASGIApp, *, path: str = "/admin") -> None:
        if not isinstance(path, str) or not path.startswith("/") or path == "/":
            raise ConfigurationError(f"the admin path must start with '/' and not be '/': {path!r}")
        self.app = app
        self.admin = admin
        self.path = path.rstrip("/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = route_path(scope)
            prefix = self.path
            if path == prefix or path.startswith(prefix + "/"):
                child = dict(scope)
                child["root_path"] = scope.get("root_path", "") + prefix
                await self.admin(child, receive, send)
                return
        await self.app(scope, receive, send)

    def __repr__(self) -> str:
        return f"<AdminMount {self.path} {self.admin!r}>"
