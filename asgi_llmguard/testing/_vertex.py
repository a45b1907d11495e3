"""A fake Vertex AI: Gemini and Claude behind Google's OAuth 2.0 service-account tokens.

One pure ASGI app serving, from Google's and Anthropic's documented wire formats:

===================================================================  ==============================
``POST /token``                                                      OAuth 2.0 token endpoint (JWT
                                                                     bearer grant, RS256-signed)
``POST /{v}/projects/{p}/locations/{l}/publishers/google/models/``   Gemini; ``{v}`` is ``v1`` or
``{m}:generateContent``, ``:streamGenerateContent``,                 ``v1beta1``; streamed as SSE
``:countTokens``                                                     with ``?alt=sse``, else as a
                                                                     JSON array
``POST /{v}/projects/{p}/locations/{l}/publishers/anthropic/``       Claude (Anthropic Messages,
``models/{m}:rawPredict``, ``:streamRawPredict``                     ``anthropic_version`` in the
                                                                     body, the model in the path)
``POST .../publishers/anthropic/models/count-tokens:rawPredict``     Anthropic token counting
===================================================================  ==============================

Regional (``{region}-aiplatform.googleapis.com``) and global (``aiplatform.googleapis.com``,
location ``global``) endpoints differ only in their host: both are the same paths here, and any
location is served.

Every model call needs ``Authorization: Bearer <token>`` with a token the fake's token endpoint
issued (or :meth:`FakeVertex.issue_token` made) and that has not expired: otherwise 401
``UNAUTHENTICATED`` in Google's error shape ``{"error": {"code", "message", "status"}}``.

Errors on Gemini routes are Google's shape (429 ``RESOURCE_EXHAUSTED`` with a ``RetryInfo``
detail when ``retry_after`` is set; in the JSON-array stream form the error is wrapped in an
array, as Google does). On Claude routes, what Vertex itself refuses (401, 403, 404, 429) is
Google's shape and what the model refuses (a bad body, 5xx, 529) is Anthropic's.

Answers follow :mod:`asgi_llmguard.testing.fake`'s token rule, and its knobs and ``x-fake-*``
headers apply (``cached_tokens`` is Gemini's ``cachedContentTokenCount``, ``reasoning_tokens`` its
``thoughtsTokenCount``), plus ``tool_use_prompt_tokens`` / ``x-fake-tool-use-prompt-tokens``
(``toolUsePromptTokenCount``).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import urllib.parse
from pathlib import Path
from typing import Any

import orjson

from asgi_llmguard.testing import _anthropic
from asgi_llmguard.testing import _google_oauth as oauth
from asgi_llmguard.testing import _vertex_gemini as gemini
from asgi_llmguard.testing._common import ApiError, StreamPlan, new_id
from asgi_llmguard.testing._http import Exchange, Receive, ReceivedRequest, Scope, Send
from asgi_llmguard.testing._knobs import Knobs, count, override, seconds, validate
from asgi_llmguard.testing._observed import Observed, read_http_request, received_request
from asgi_llmguard.testing._playback import play, with_line_ending
from asgi_llmguard.testing._vertex_routes import Call, Family, dispatch, parse
from asgi_llmguard.testing.fake import _RESET_FILTER

__all__ = ["FakeVertex"]

_JSON = (b"content-type", b"application/json; charset=UTF-8")
_TOOL_USE_HEADER = "x-fake-tool-use-prompt-tokens"
_TOKEN_HEADERS = [(b"content-type", b"application/json; charset=utf-8"), (b"pragma", b"no-cache")]


def _family(path: str) -> Family:
    """The family of a recorded path, which may carry the prefix the fake is mounted under."""
    while True:
        found = parse(path).family
        slash = path.find("/", 1)
        if found != "none" or slash < 0:
            return found
        path = path[slash:]


class FakeVertex(Observed):
    """A fake Vertex AI (Gemini and Claude) with its own OAuth 2.0 token endpoint.

    Args:
        project: When set, only this project is served (403 ``PERMISSION_DENIED`` otherwise).
        account: The service account whose signed assertions the token endpoint accepts; a new
            one (with a fresh RSA key pair) by default.
        token_expires_in: ``expires_in`` of the tokens the endpoint issues, in seconds.
        token_status: When set (400 or more), the token endpoint refuses every request with this
            status (400, 401 and 403: ``invalid_grant``; others: ``internal_failure``, which
            ``google-auth`` retries).
        token_latency: Seconds the token endpoint waits before answering.
        tool_use_prompt_tokens: Gemini's ``toolUsePromptTokenCount``.
        max_requests_kept: How many requests :attr:`requests` remembers.
        **knobs: :class:`~asgi_llmguard.testing.FakeProvider`'s knobs (``reply``, ``latency``,
            ``chunk_delay``, ``status``, ``retry_after``, ``reset_after_chunks``,
            ``truncate_after_chunks``, ``chunks``, ``cached_tokens``, ``reasoning_tokens``,
            ``line_ending``, ``cache_write_5m``, ``cache_write_1h``, ``service_tier``).

    The token endpoint's URL is ``<served url>/token``: :meth:`write_service_account_file` puts
    it in a key file ``google-auth`` reads. :attr:`requests` records every request, the token
    requests included; :attr:`tokens_issued` counts the tokens issued.
    """

    def __init__(
        self,
        *,
        project: str | None = None,
        account: oauth.ServiceAccountKey | None = None,
        token_expires_in: int = 3599,
        token_status: int | None = None,
        token_latency: float = 0.0,
        tool_use_prompt_tokens: int = 0,
        max_requests_kept: int = 1000,
        **knobs: Any,
    ) -> None:
        self.project = project
        self.account = account or oauth.ServiceAccountKey()
        self.token_expires_in = token_expires_in
        self.token_status = token_status
        self.token_latency = token_latency
        self.tool_use_prompt_tokens = tool_use_prompt_tokens
        self._issuer = oauth.TokenIssuer()
        self._defaults = Knobs()
        self._requests: collections.deque[ReceivedRequest] = collections.deque(
            maxlen=count("max_requests_kept", max_requests_kept, 1)
        )
        self._lock = threading.Lock()
        self._active = self._completed = self._disconnects = self._resets = 0
        self.configure(**knobs)
        logger = logging.getLogger("uvicorn.error")
        if _RESET_FILTER not in logger.filters:
            logger.addFilter(_RESET_FILTER)

    def configure(self, **knobs: Any) -> None:
        """Change knobs for the requests that follow: the constructor's names, except
        ``project``, ``account`` and ``max_requests_kept``."""
        own = {"token_expires_in", "token_status", "token_latency", "tool_use_prompt_tokens"}
        shared = {f.name for f in dataclasses.fields(Knobs)}
        unknown = set(knobs) - own - shared
        if unknown:
            raise TypeError(f"unknown knob(s): {', '.join(sorted(unknown))}")
        for name in own & set(knobs):
            value = knobs[name]
            if name == "token_latency":
                seconds(name, value)
            elif name == "token_status":
                if value is not None and (count(name, value, 400) > 599):
                    raise ValueError("token_status must be an HTTP error status")
            else:
                count(name, value, 1 if name == "token_expires_in" else 0)
            setattr(self, name, value)
        changes = {name: value for name, value in knobs.items() if name in shared}
        self._defaults = validate(dataclasses.replace(self._defaults, **changes))

    # -- credentials ------------------------------------------------------------------------------

    def issue_token(self, expires_in: int | None = None) -> str:
        """An access token the fake accepts, as its token endpoint would issue it."""
        return self._issuer.issue(self.token_expires_in if expires_in is None else expires_in)

    def revoke_tokens(self) -> None:
        """Forget every token issued: the next calls with them answer 401."""
        self._issuer.revoke_all()

    @property
    def tokens_issued(self) -> int:
        """Tokens issued so far (by the endpoint and by :meth:`issue_token`)."""
        return self._issuer.issued

    def service_account_info(self, base_url: str) -> dict[str, str]:
        """The service-account key file's content for the fake served at ``base_url``."""
        return self.account.info(base_url.rstrip("/") + "/token")

    def write_service_account_file(self, path: str | Path, base_url: str) -> Path:
        """Write a service-account key file whose ``token_uri`` is this fake's token endpoint
        at ``base_url`` (e.g. ``serve(fake).url``); ``google-auth`` then gets its tokens here."""
        return self.account.write(path, base_url.rstrip("/") + "/token")

    # -- observation ------------------------------------------------------------------------------

    def calls(self, family: Family | None = None) -> list[ReceivedRequest]:
        """The model calls received (``google`` or ``anthropic``; both when None), wherever the
        fake is mounted."""
        wanted = {"google", "anthropic"} if family is None else {family}
        return [r for r in list(self._requests) if _family(r.path) in wanted]

    def reset(self) -> None:
        """Forget the recorded requests and zero the counters, :attr:`tokens_issued` included
        (the tokens issued stay valid)."""
        self._issuer.issued = 0
        with self._lock:
            self._requests.clear()
            self._completed = self._disconnects = self._resets = 0

    # -- ASGI -------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await read_http_request(scope, receive, send)
        if body is None:
            return
        request = received_request(scope, body)
        await self._observe(request, receive, send, lambda ex: self._answer(request, scope, ex))

    async def _answer(self, request: ReceivedRequest, scope: Scope, exchange: Exchange) -> None:
        root = scope.get("root_path", "")
        path = request.path[len(root) :] if root and request.path.startswith(root) else request.path
        call = parse(path)
        if call.family == "token":
            await self._token(request, scope, exchange)
            return
        query = urllib.parse.parse_qs(request.query_string)
        sse = query.get("alt", [""])[0] == "sse"
        array = call.method == "streamGenerateContent" and not sse
        knobs = self._defaults
        tool_use = self.tool_use_prompt_tokens
        try:
            if call.family == "none":
                raise ApiError(404, f"The requested URL {request.path} was not found.")
            if request.method != "POST":
                raise ApiError(405, f"Method {request.method} not allowed on {request.path}")
            headers = [(k, v) for k, v in request.headers if k != _TOOL_USE_HEADER]
            if len(headers) != len(request.headers):
                tool_use = self._header_count(request.header(_TOOL_USE_HEADER) or "")
            knobs = override(knobs, headers)
            await exchange.pause(knobs.latency)
            self._authorize(request, call)
            if knobs.status is not None and knobs.status >= 400:
                raise ApiError(knobs.status, f"Fake Vertex AI error: {knobs.status}")
            body = self._json(request.body)
            result = dispatch(call, body, knobs, tool_use, sse)
        except ApiError as error:
            await self._error(exchange, call, error, knobs, array)
            return
        if isinstance(result, StreamPlan):
            await self._stream(exchange, call, result, knobs, sse or call.family == "anthropic")
        else:
            await self._json_answer(exchange, 200, result)

    @staticmethod
    def _header_count(text: str) -> int:
        try:
            return count(_TOOL_USE_HEADER, int(text.strip()))
        except ValueError:
            raise ApiError(400, f"bad value for {_TOOL_USE_HEADER}: {text!r}") from None

    def _authorize(self, request: ReceivedRequest, call: Call) -> None:
        given = request.header("authorization") or ""
        scheme, _, token = given.partition(" ")
        state = self._issuer.status(token.strip()) if scheme.lower() == "bearer" else "unknown"
        if state != "valid":
            raise ApiError(
                401,
                "Request had invalid authentication credentials. Expected OAuth 2 access token, "
                "login cookie or other valid authentication credential.",
                kind="google",
            )
        if self.project is not None and call.project != self.project:
            raise ApiError(
                403,
                f"Permission denied on resource project {call.project}.",
                kind="google",
            )

    @staticmethod
    def _json(data: bytes) -> dict[str, Any]:
        try:
            body = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise ApiError(400, "Invalid JSON payload received.") from None
        if not isinstance(body, dict):
            raise ApiError(400, "Invalid JSON payload received. Expected an object.")
        return body

    # -- token endpoint ---------------------------------------------------------------------------

    async def _token(self, request: ReceivedRequest, scope: Scope, exchange: Exchange) -> None:
        await exchange.pause(self.token_latency)
        status, answer = oauth.answer(
            request.method,
            request.body,
            request.header("content-type"),
            here=f"{scope.get('scheme', 'http')}://{request.header('host') or ''}{request.path}",
            key=self.account,
            issuer=self._issuer,
            expires_in=self.token_expires_in,
            fail_with=self.token_status,
        )
        await self._send(exchange, status, orjson.dumps(answer), _TOKEN_HEADERS)

    # -- sending ----------------------------------------------------------------------------------

    @staticmethod
    async def _send(
        exchange: Exchange, status: int, data: bytes, headers: list[tuple[bytes, bytes]]
    ) -> None:
        await exchange.start(status, [*headers, (b"content-length", str(len(data)).encode())])
        await exchange.body(data, more=False)

    async def _json_answer(self, exchange: Exchange, status: int, obj: Any) -> None:
        await self._send(exchange, status, orjson.dumps(obj), [_JSON])

    async def _error(
        self, exchange: Exchange, call: Call, error: ApiError, knobs: Knobs, array: bool
    ) -> None:
        status = error.status
        google = call.family != "anthropic" or error.kind == "google" or status in (403, 404, 429)
        headers = list(error.headers)
        if google:
            delay = knobs.retry_after if status == 429 else None
            body: Any = gemini.error_body(status, error.message, retry_delay=delay)
            if array:
                body = [body]
        else:
            body = _anthropic.error_body(status, error.message)
            if knobs.retry_after is not None:
                headers.append((b"retry-after", str(int(knobs.retry_after)).encode()))
        data = orjson.dumps(body)
        await self._send(exchange, status, data, [_JSON, *headers])

    async def _stream(
        self, exchange: Exchange, call: Call, plan: StreamPlan, knobs: Knobs, sse: bool
    ) -> None:
        if call.family == "anthropic":
            plan = with_line_ending(plan, knobs.line_ending)
        content_type = b"text/event-stream" if sse else b"application/json; charset=UTF-8"
        request_id = (b"x-request-id", new_id("req_vrtx_").encode())
        headers = [(b"content-type", content_type), request_id]
        await play(exchange, plan, knobs, headers, "fake Vertex AI")
