"""Resolve the caller's virtual key to its `KeyPolicy`, then hold the request to that policy.

The key is taken from the headers in one pass (``Authorization: Bearer``, ``x-api-key``,
``api-key``: what the OpenAI, Anthropic and Azure SDKs send), checked for shape, hashed, and
looked up by its digest. A request without a valid key is refused with 401 from its headers
alone: its body is never read, so a caller without a key cannot make the gateway buffer anything.
The key itself is never logged, echoed or kept; it is named only by its key id.

Then what the headers tell (the provider API, the operation) is checked against the policy, and
only when the policy restricts something the body decides (models, tool types, ``background``)
is the body read (once, through `read_body`) and its fields decoded (once, `ctx.fields()`).
Refusals are 403 in the shape of the API called, naming what is not allowed.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import logging
import re
from collections.abc import Sequence

from asgi_llmguard.context import (
    QUERY_KEY,
    SCOPE_KEY,
    ClientDisconnected,
    InvalidBody,
    RequestContext,
    RequestFields,
    get_context,
    read_body,
    replay_receive,
)
from asgi_llmguard.errors import ConfigurationError, error_body, send_body, send_error
from asgi_llmguard.keys.base import KeyStore
from asgi_llmguard.middleware import _websocket
from asgi_llmguard.policy import KeyPolicy, mcp_server_allowed
from asgi_llmguard.routes import DIALECTS, GOOGLE, Dialect, Endpoint, dialect_of_path
from asgi_llmguard.types import ASGIApp, Receive, Scope, Send

logger = logging.getLogger("asgi_llmguard.auth")

DEFAULT_HEADERS = ("authorization", "x-api-key", "api-key", "x-goog-api-key")

# RFC 7235 token68 (letters, digits, -._~+/ and = padding), plus ':' seen in some vendors' keys.
# Anything else (quotes, spaces, controls, NUL, non-ASCII) cannot be a key: refused unhashed.
_KEY_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/=:"
_GLOB_CHARS = frozenset("*?[")
# Longer model names are refused without matching (no route accepts a longer id either).
_MAX_MODEL = 256


class ModelMatcher:
    """An allow-list of models: exact names in a set, globs compiled into one regex."""

    __slots__ = ("exact", "pattern")

    def __init__(self, models: Sequence[str]) -> None:
        self.exact = frozenset(m for m in models if _GLOB_CHARS.isdisjoint(m))
        globs = [m for m in models if not _GLOB_CHARS.isdisjoint(m)]
        self.pattern = (
            re.compile("|".join(f"(?:{fnmatch.translate(g)})" for g in globs)) if globs else None
        )

    def __call__(self, model: str) -> bool:
        if model in self.exact:
            return True
        pattern = self.pattern
        return pattern is not None and len(model) <= _MAX_MODEL and pattern.match(model) is not None


def _shown(value: str, limit: int = 100) -> str:
    return value if len(value) <= limit else value[:limit] + "..."


class AuthMiddleware:
    """Refuse requests without a valid virtual key (401) or outside its policy (403).

    - ``store``: where keys are looked up by digest (`StaticKeyStore`, `SQLiteKeyStore`,
      `PostgresKeyStore`, ideally behind a `CachedKeyStore`). The middleware does not close it.
    - ``header_names``: the headers a key may come in, in order of precedence;
      ``authorization`` is read as ``Bearer <key>``, the others as the bare key.
    - ``max_key_length``: longer values are refused without being hashed or looked up.
    - ``matcher_cache_size``: compiled model allow-lists kept (one per distinct allow-list).

    On success the policy is at ``get_context(scope).key`` for the layers below. A store that
    fails (database down) gets the caller a 503, never a 401 that would blame their key.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        store: KeyStore,
        header_names: Sequence[str] = DEFAULT_HEADERS,
        max_key_length: int = 256,
        matcher_cache_size: int = 1024,
    ) -> None:
        if not callable(getattr(store, "lookup", None)):
            raise ConfigurationError(f"store must be a KeyStore (with lookup()), got {store!r}")
        if isinstance(header_names, str) or not header_names:
            raise ConfigurationError("header_names must be a non-empty sequence of header names")
        names: dict[bytes, tuple[int, bool]] = {}
        for i, header in enumerate(header_names):
            if not header.isascii() or not header or not header.replace("-", "").isalnum():
                raise ConfigurationError(f"header_names: {header!r} is not a header name")
            lowered = header.lower()
            names.setdefault(lowered.encode(), (i, lowered == "authorization"))
        if max_key_length < 1:
            raise ConfigurationError("max_key_length must be >= 1")
        self.app = app
        self.store = store
        self.header_names = tuple(h.lower() for h in header_names)
        self._names = names
        self._max_key_length = max_key_length
        self._matcher = functools.lru_cache(maxsize=matcher_cache_size)(ModelMatcher)
        # Prebuilt 401s: the answer to a flood of bad keys costs no encoding.
        self._missing = {
            dialect: error_body(
                401,
                "You didn't provide an API key. Send it in an `x-goog-api-key` header or the "
                "`key` query parameter."
                if dialect is GOOGLE
                else "You didn't provide an API key. Send it as `Authorization: Bearer <key>` "
                "or in an `x-api-key` header.",
                dialect=dialect,
                code="invalid_api_key",
            )
            for dialect in DIALECTS
        }
        self._invalid = {
            dialect: error_body(
                401, "Incorrect API key provided.", dialect=dialect, code="invalid_api_key"
            )
            for dialect in DIALECTS
        }

    def __repr__(self) -> str:
        return f"AuthMiddleware(store={self.store!r}, header_names={self.header_names!r})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await _websocket.authorize(self, scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        ctx: RequestContext = scope.get(SCOPE_KEY) or get_context(scope)
        route = ctx.route
        dialect = route.endpoint.dialect if route is not None else dialect_of_path(ctx.path)

        # -- the key, from the headers alone -------------------------------------------------------
        key: bytes | None = None
        rank = len(self._names)
        ambiguous = False
        names = self._names
        for name, value in scope["headers"]:
            found = names.get(name)
            if found is None:
                continue
            index, bearer = found
            if bearer:
                if value[:7].lower() != b"bearer ":
                    continue  # another scheme (Basic ...) is not a key for us
                value = value[7:]
            value = value.strip(b" \t")
            if index < rank:
                key, rank, ambiguous = value, index, False
            elif index == rank and value != key:
                ambiguous = True  # the same header twice, with different keys
        if key is None:
            # The Gemini API's ``?key=``, taken out of the URL when the context was made.
            key = scope.get(QUERY_KEY)
            if key is None:
                logger.debug("%s refused: no API key", ctx.request_id)
                await self._unauthorized(send, self._missing[dialect], dialect)
                return
        if ambiguous or not 0 < len(key) <= self._max_key_length or key.translate(None, _KEY_CHARS):
            logger.debug("%s refused: malformed or ambiguous API key", ctx.request_id)
            await self._unauthorized(send, self._invalid[dialect], dialect)
            return
        key_hash = hashlib.sha256(key).hexdigest()
        del key
        try:
            policy = await self.store.lookup(key_hash)
        except Exception as exc:
            # The exception's text is not logged: a driver may put connection details in it.
            logger.warning(
                "%s: key store %r failed (%s); refusing with 503",
                ctx.request_id,
                self.store,
                type(exc).__name__,
            )
            await send_error(
                send,
                503,
                "The gateway cannot check API keys right now; try again shortly.",
                dialect=dialect,
                type=dialect.server_error,
                code="key_store_unavailable",
                headers=[(b"retry-after", b"1")],
            )
            return
        if policy is None or policy.revoked:
            if policy is None:
                logger.debug("%s refused: unknown key %s", ctx.request_id, key_hash[:12])
            else:
                logger.info("%s refused: revoked key %s", ctx.request_id, policy.key_id)
            await self._unauthorized(send, self._invalid[dialect], dialect)
            return
        ctx.key = policy

        # -- what the key may do ----------------------------------------------------------------
        if (
            policy.providers is None
            and policy.endpoints is None
            and policy.models is None
            and policy.tool_types is None
            and policy.mcp_servers is None
            and policy.allow_background
        ):
            await self.app(scope, receive, send)  # the common case: an unrestricted key
            return
        if route is None:
            # Used alone in front of paths the route table does not know: the policy cannot be
            # applied, so a restricted key is refused rather than let through unchecked.
            await self._forbidden(
                send,
                ctx,
                policy,
                f"This API key is restricted, and {ctx.method} {_shown(ctx.path)} is not an "
                "endpoint its restrictions can be checked on.",
                "endpoint_not_allowed",
                dialect,
            )
            return
        endpoint = route.endpoint
        if policy.providers is not None and endpoint.api not in policy.providers:
            await self._forbidden(
                send,
                ctx,
                policy,
                f"This API key may not call the {endpoint.api} API.",
                "provider_not_allowed",
                dialect,
            )
            return
        if policy.endpoints is not None and endpoint.operation not in policy.endpoints:
            await self._forbidden(
                send,
                ctx,
                policy,
                f"This API key may not call {endpoint.operation}.",
                "endpoint_not_allowed",
                dialect,
            )
            return
        refusal = await self._check_body(ctx, policy, endpoint, receive)
        if refusal is None:
            return  # the client left while sending its body
        if refusal:
            message, code = refusal
            if code == "invalid_request_body":
                await send_error(send, 400, message, dialect=dialect)
            else:
                await self._forbidden(send, ctx, policy, message, code, dialect)
            return
        if ctx.body is not None:
            receive = replay_receive(ctx, receive)
        await self.app(scope, receive, send)

    async def _check_body(
        self, ctx: RequestContext, policy: KeyPolicy, endpoint: Endpoint, receive: Receive
    ) -> tuple[str, str] | tuple[()] | None:
        """``()`` when the request may go on, ``(message, code)`` when refused, ``None`` when the
        client disconnected. Reads the body only when a restriction needs it."""
        route = ctx.route
        assert route is not None
        models = policy.models
        tool_types = policy.tool_types
        model = route.model  # Azure's deployment, Gemini's models/{model}: the path names it
        fields = None
        if (
            endpoint.json_body
            and (
                tool_types is not None
                or policy.mcp_servers is not None
                or not policy.allow_background
                or (models is not None and model is None)
            )
        ) or (endpoint.multipart and models is not None and model is None):
            # An upload names its model in a form field: read only for a model-restricted key.
            try:
                await read_body(ctx, receive)
                fields = ctx.fields()
            except ClientDisconnected:
                ctx.disconnected = True
                return None
            except InvalidBody as exc:
                return (str(exc), "invalid_request_body")
            if model is None:
                model = fields.model
        if models is not None:
            if model is None:
                # A request that costs money but names no model (an upload, a passthrough path,
                # a body without "model", a fine-tuning job or a Realtime session whose model the
                # gateway does not read) could reach any model: a model-restricted key may not.
                if endpoint.billable or endpoint.spends or endpoint.operation == "passthrough":
                    return (
                        "This API key is restricted to certain models, and the model of this "
                        "request cannot be determined.",
                        "model_not_allowed",
                    )
            elif not self._matcher(models if type(models) is tuple else tuple(models))(model):
                return (
                    f"This API key may not use the model '{_shown(model)}'.",
                    "model_not_allowed",
                )
        if fields is not None:
            if tool_types is not None and (
                fields.tools or fields.web_search_options is not None or fields.mcp_servers
            ):
                # Anthropic's client tools have no type: they are "custom" tools. Hosted tools
                # enabled outside ``tools`` count as their tool type.
                used = {tool.type or "custom" for tool in fields.tools or ()}
                if fields.web_search_options is not None:
                    used.add("web_search")
                if fields.mcp_servers:
                    used.add("mcp")
                if not used <= tool_types:
                    shown = ", ".join(_shown(t, 64) for t in sorted(used - tool_types)[:5])
                    return (f"This API key may not use tools of type: {shown}.", "tool_not_allowed")
            if policy.mcp_servers is not None:
                refused = _refused_mcp_server(policy.mcp_servers, fields)
                if refused is not None:
                    return (
                        f"This API key may not use the MCP server '{_shown(refused, 128)}'.",
                        "mcp_server_not_allowed",
                    )
            if fields.background and not policy.allow_background:
                return (
                    "This API key may not run background responses (`background: true`).",
                    "background_not_allowed",
                )
        return ()

    @staticmethod
    async def _unauthorized(send: Send, body: bytes, dialect: Dialect) -> None:
        headers = [(b"www-authenticate", b"Bearer"), *dialect.error_headers(401)]
        await send_body(send, 401, body, headers)

    @staticmethod
    async def _forbidden(
        send: Send,
        ctx: RequestContext,
        policy: KeyPolicy,
        message: str,
        code: str,
        dialect: Dialect,
    ) -> None:
        logger.debug("%s refused for key %s: %s", ctx.request_id, policy.key_id, code)
        await send_error(send, 403, message, dialect=dialect, code=code)


def _refused_mcp_server(allowed: tuple[str, ...], fields: RequestFields) -> str | None:
    """The first MCP server of the request that ``allowed`` does not list (a server named
    without a URL, such as a Responses connector, is shown as ``(no server_url)``)."""
    urls = [server.url for server in fields.mcp_servers or ()]
    urls += [tool.server_url for tool in fields.tools or () if tool.type == "mcp"]
    for url in urls:
        if url is None:
            return "(no server_url)"
        if not mcp_server_allowed(allowed, url):
            return url
    return None
