"""`ForwardingApp`: the thin ASGI app at the bottom of the stack that relays to the upstream.

It reads the request body once (or takes the one a layer above already read), sends it to the
upstream configured for the route's API, and relays the answer chunk by chunk: an SSE event goes
out as soon as it arrives, bytes unchanged, ``Content-Encoding`` preserved. A client that leaves
cancels the upstream exchange at once; an upstream that fails gets the client a clear error: 502 or
504 before the response started, a terminal SSE event after.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from asgi_llmguard.context import (
    ClientDisconnected,
    InvalidBody,
    RequestContext,
    get_context,
    read_body,
)
from asgi_llmguard.errors import (
    ConfigurationError,
    send_error,
    send_route_error,
    sse_error_event,
)
from asgi_llmguard.forward.config import PoolLimits, Timeouts
from asgi_llmguard.forward.engines import (
    AiohttpEngine,
    Engine,
    HttpxEngine,
    UpstreamError,
    UpstreamResponse,
)
from asgi_llmguard.forward.headers import request_drop_set, request_headers, response_headers
from asgi_llmguard.providers.base import Provider, Upstream, provider_for
from asgi_llmguard.routes import Api
from asgi_llmguard.types import Receive, Scope, Send

if TYPE_CHECKING:
    import httpx

logger = logging.getLogger("asgi_llmguard.forward")

# Non-streamed answers up to this size are read whole and sent in one message.
_SMALL_BODY = 1 << 20
_STATUS_FOR = {"connect": 502, "timeout": 504, "broken": 502}


class _Target:
    """An upstream and everything about it that can be computed before the first request."""

    __slots__ = ("credential_id", "defaults", "drop", "provider", "static", "upstream")

    def __init__(self, upstream: Upstream, provider: Provider) -> None:
        self.upstream = upstream
        self.provider = provider
        self.static = provider.static_headers(upstream)
        self.defaults = provider.default_headers(upstream)
        self.drop = request_drop_set(self.static)
        self.credential_id = upstream.credential_id


class _Watch:
    """Per-exchange flags shared with the disconnect watcher (never stored on the app)."""

    __slots__ = ("disconnected", "finished")

    def __init__(self) -> None:
        self.finished = False
        self.disconnected = False


async def _watch_disconnect(receive: Receive, task: asyncio.Task[object], watch: _Watch) -> None:
    # Once the body is read, the next message a server sends is http.disconnect, when the client
    # goes away (or when the response is complete). Servers only report a disconnect through
    # receive(): uvicorn's send() goes quiet instead of raising.
    while (await receive())["type"] != "http.disconnect":
        pass
    if not watch.finished:
        watch.disconnected = True
        task.cancel()


class ForwardingApp:
    """Relay requests to the configured upstreams.

    ``upstreams``: one `Upstream` per provider the gateway fronts. A route is served by the first
    upstream that speaks its API: OpenAI routes by an ``openai`` or ``azure`` upstream, Azure
    deployment routes by an ``azure`` upstream, Anthropic routes by an ``anthropic`` upstream.

    ``client``: an ``httpx.AsyncClient`` to use instead of the default pooled aiohttp session
    (custom transports, ``httpx.MockTransport`` in tests). It stays the caller's to close.

    ``timeouts``, ``limits``: see `Timeouts` and `PoolLimits`. ``trust_env``: honour
    ``HTTP(S)_PROXY``/``NO_PROXY`` (aiohttp engine; an httpx client has its own setting).

    The aiohttp session is opened on the first request and closed on lifespan shutdown or by
    `aclose` (lifespan does not reach an app mounted inside another, so close it from the host
    app's lifespan, or use the gateway as an async context manager).
    """

    def __init__(
        self,
        upstreams: Sequence[Upstream],
        *,
        client: httpx.AsyncClient | None = None,
        timeouts: Timeouts = Timeouts(),
        limits: PoolLimits = PoolLimits(),
        trust_env: bool = True,
    ) -> None:
        if not upstreams:
            raise ConfigurationError("ForwardingApp needs at least one Upstream")
        targets: dict[Api, _Target] = {}
        for upstream in upstreams:
            if not isinstance(upstream, Upstream):
                raise ConfigurationError(f"upstreams must be Upstream objects, got {upstream!r}")
            provider = provider_for(upstream.provider)
            for api in sorted(provider.serves):
                targets.setdefault(api, _Target(upstream, provider))
        self._targets = targets
        self.upstreams = tuple(upstreams)
        self.engine: Engine = (
            HttpxEngine(client, timeouts=timeouts)
            if client is not None
            else AiohttpEngine(timeouts=timeouts, limits=limits, trust_env=trust_env)
        )

    async def aclose(self) -> None:
        await self.engine.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http":
            if kind == "lifespan":
                await self._lifespan(receive, send)
            elif kind == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            return
        ctx = get_context(scope)
        route = ctx.route
        if route is None:
            await send_route_error(send, ctx.method, ctx.path, ctx.route_error)
            return
        api = route.endpoint.api
        anthropic = api == "anthropic"
        target = self._targets.get(api)
        if target is None:
            await send_error(
                send, 404, f"This gateway has no upstream for {api} routes.", anthropic=anthropic
            )
            return
        try:
            body = ctx.body if ctx.body is not None else await read_body(ctx, receive)
            url = target.provider.target(target.upstream, ctx, scope["query_string"])
        except ClientDisconnected:
            ctx.disconnected = True
            return
        except InvalidBody as exc:
            await send_error(send, 400, str(exc), anthropic=anthropic)
            return
        headers = request_headers(scope["headers"], target.drop, target.defaults, target.static)
        # The request id travels upstream so provider-side logs can be matched to ours.
        headers.append(("x-request-id", ctx.request_id))

        task: asyncio.Task[object] = asyncio.current_task()  # type: ignore[assignment]
        watch = _Watch()
        watcher = asyncio.get_running_loop().create_task(_watch_disconnect(receive, task, watch))
        try:
            await self._exchange(ctx, target, url, headers, body, send, watch, anthropic)
        except asyncio.CancelledError:
            if watch.disconnected and task.uncancel() == 0:
                ctx.disconnected = True
                logger.debug("client disconnected: %s cancelled upstream", ctx.request_id)
                return
            raise
        finally:
            watch.finished = True
            watcher.cancel()

    async def _exchange(
        self,
        ctx: RequestContext,
        target: _Target,
        url: str,
        headers: list[tuple[str, str]],
        body: bytes,
        send: Send,
        watch: _Watch,
        anthropic: bool,
    ) -> None:
        ctx.credential_id = target.credential_id
        try:
            resp = await self.engine.send(ctx.method, url, headers, body)
        except UpstreamError as exc:
            ctx.upstream_error = exc.kind
            logger.warning(
                "upstream %s failed before answering %s: %s",
                target.credential_id,
                ctx.request_id,
                exc,
            )
            status = _STATUS_FOR[exc.kind]
            await send_error(send, status, str(exc), anthropic=anthropic, code="upstream_error")
            return
        try:
            await self._relay(ctx, target, resp, send, watch, anthropic)
        finally:
            await resp.aclose()

    async def _relay(
        self,
        ctx: RequestContext,
        target: _Target,
        resp: UpstreamResponse,
        send: Send,
        watch: _Watch,
        anthropic: bool,
    ) -> None:
        headers = response_headers(resp.headers)
        length = -1
        sse = False
        for name, value in headers:
            if name == b"content-length":
                length = int(value) if value.isdigit() else -1
            elif name == b"content-type":
                sse = value.startswith(b"text/event-stream")

        if 0 <= length <= _SMALL_BODY and not sse:
            try:
                data = await resp.read_all()
            except UpstreamError as exc:
                ctx.upstream_error = exc.kind
                logger.warning(
                    "upstream %s broke answering %s: %s", target.credential_id, ctx.request_id, exc
                )
                await send_error(
                    send,
                    _STATUS_FOR[exc.kind],
                    str(exc),
                    anthropic=anthropic,
                    code="upstream_error",
                )
                return
            await send({"type": "http.response.start", "status": resp.status, "headers": headers})
            watch.finished = True
            await send({"type": "http.response.body", "body": data, "more_body": False})
            return

        await send({"type": "http.response.start", "status": resp.status, "headers": headers})
        try:
            while chunk := await resp.read_chunk():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except UpstreamError as exc:
            ctx.upstream_error = exc.kind
            logger.warning(
                "upstream %s broke mid-response to %s: %s",
                target.credential_id,
                ctx.request_id,
                exc,
            )
            if not sse:
                # The status is already out; the only honest signal left is to close the
                # connection without ending the body, which the ASGI server does when the app
                # returns an unfinished response.
                return
            await send(
                {
                    "type": "http.response.body",
                    "body": sse_error_event(str(exc), anthropic=anthropic),
                    "more_body": True,
                }
            )
        watch.finished = True
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return
