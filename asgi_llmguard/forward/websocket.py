"""The WebSocket relay: the Responses API's WebSocket mode and the Realtime API.

The gateway connects upstream first (aiohttp's client WebSocket, on the forwarder's pooled
session), with the upstream's credential and without the client's, and only then accepts the
client's socket, with the subprotocol the upstream chose; an upstream that cannot be reached or
refuses the handshake refuses the upgrade (502/504, or the upstream's 4xx; a close 1011 where the
server has no WebSocket denial response). Then frames are relayed both ways, each direction in
order, text as text and binary as binary, every send awaited (a slow reader slows its writer
down instead of filling memory). Close codes and reasons are relayed. Each hop answers its own
pings (uvicorn towards the client, aiohttp towards the upstream).

Limits (`WebSocketLimits`): a message larger than ``max_message_bytes`` from either side ends the
session with 1009; no frame either way for ``idle_timeout`` seconds ends it with 1001, and so does
``max_duration``. A session ended from outside (the drain after its grace) closes the upstream;
the drain layer tells the client (1012).

Turns: the frames that start a response (``response.create``) and those that end one
(``response.completed`` / ``.incomplete`` / ``.failed``, Realtime's ``response.done``) are
decoded (only those) and handed to the hooks the layers registered on the session
(`asgi_llmguard.wsession`); everything else passes untouched.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import msgspec

from asgi_llmguard.context import SCOPE_KEY, InvalidBody, RequestContext
from asgi_llmguard.errors import send_error, send_route_error
from asgi_llmguard.forward._frames import (
    CREATE,
    CREATE_BYTES,
    create_decoder,
    error_event,
    lane_head,
    refused_turn,
    terminal_status,
)
from asgi_llmguard.forward.config import WebSocketLimits
from asgi_llmguard.forward.headers import RESPONSE_DROP, request_headers
from asgi_llmguard.forward.target import Target
from asgi_llmguard.wsession import (
    ResponseDone,
    Turn,
    WebSocketSession,
    denial_send,
    realtime_model,
    session_of,
)

if TYPE_CHECKING:
    import aiohttp

    from asgi_llmguard.forward.router import Router
    from asgi_llmguard.types import Receive, Scope, Send

logger = logging.getLogger("asgi_llmguard.forward")

#: The handshake's own headers: aiohttp writes the upstream's, uvicorn the client's.
HANDSHAKE = frozenset(
    {
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"sec-websocket-extensions",
        b"sec-websocket-protocol",
        b"sec-websocket-accept",
    }
)
_ACCEPT_DROP = RESPONSE_DROP | HANDSHAKE | {b"content-length", b"content-type"}
#: Subprotocols that carry a key (browsers cannot set headers): never sent upstream.
KEY_PROTOCOL_PREFIXES = ("openai-insecure-api-key.",)


def _valid_close(code: int | None) -> int:
    """A close code that may be sent on the wire (1005, 1006, 1015 may not)."""
    if code is None or code in (1004, 1005, 1006, 1015) or not (1000 <= code < 5000):
        return 1000
    if 1016 <= code < 3000:
        return 1000
    return code


class _Ended(Exception):
    def __init__(self, code: int, reason: str, why: str) -> None:
        self.code = code
        self.reason = reason
        self.why = why


class WebSocketRelay:
    """Relay WebSocket sessions for a `ForwardingApp` (one per forwarder)."""

    def __init__(self, router: Router, session: Any, limits: WebSocketLimits) -> None:
        #: A callable returning the pooled ``aiohttp.ClientSession`` (``None``: own one).
        self._pooled = session
        self._own: aiohttp.ClientSession | None = None
        self.router = router
        self.limits = limits
        #: Sessions being relayed now.
        self.open = 0

    def _session(self) -> aiohttp.ClientSession:
        if self._pooled is not None:
            pooled: aiohttp.ClientSession = self._pooled()
            return pooled
        if self._own is None:
            import aiohttp

            self._own = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        return self._own

    async def aclose(self) -> None:
        own, self._own = self._own, None
        if own is not None:
            await own.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx: RequestContext | None = scope.get(SCOPE_KEY)
        if ctx is None:
            ctx = scope[SCOPE_KEY] = RequestContext.from_scope(scope)
        send = denial_send(scope, send)
        route = ctx.route
        if route is None:
            await send_route_error(send, ctx.method, ctx.path, ctx.route_error)
            return
        session = session_of(scope, route.endpoint.operation)
        if session.model is None and route.endpoint.operation == "realtime":
            session.model = realtime_model(scope, route.endpoint.api)
        upstream = await self._connect(ctx, session, scope, send)
        if upstream is None:
            return
        ws, chosen, headers = upstream
        self.open += 1
        why = "closed"
        opened: deque[Turn] = deque()
        try:
            accept: dict[str, Any] = {"type": "websocket.accept", "headers": headers}
            if chosen:
                accept["subprotocol"] = chosen
            await send(accept)
            why = await self._relay(ctx, session, ws, receive, send, opened)
        except asyncio.CancelledError:
            why = "shutdown"
            raise
        finally:
            self.open -= 1
            if not ws.closed:
                await _quietly(ws.close(code=1001, message=b"The client's session ended."))
            for hook in session.end_hooks:
                await _quietly(hook(list(opened), why))

    async def _connect(
        self, ctx: RequestContext, session: WebSocketSession, scope: Scope, send: Send
    ) -> tuple[aiohttp.ClientWebSocketResponse, str | None, list[tuple[bytes, bytes]]] | None:
        """Open the upstream socket on the first planned credential that accepts it; on failure
        refuse the client and return ``None``."""
        import aiohttp

        route = ctx.route
        assert route is not None
        api = route.endpoint.api
        plan = self.router.plan(api, session.model, scope["headers"])
        if not plan.steps:
            await send_error(
                send, plan.status if plan.error else 503, plan.error or "No upstream available."
            )
            return None
        offered = [
            p.strip()
            for name, value in scope["headers"]
            if name == b"sec-websocket-protocol"
            for p in value.decode("latin-1").split(",")
            if p.strip() and not p.strip().startswith(KEY_PROTOCOL_PREFIXES)
        ]
        limits = self.limits
        router = self.router
        breaker = router.breaker
        cooldowns = None if plan.solo else router.cooldowns
        status, message = 502, "Could not connect to the upstream."
        for index, step in enumerate(plan.steps):
            candidate = step.candidate
            credential = candidate.credential_id
            model = step.model.base if step.model is not None else ""
            if index and model and router.available(candidate, model, time.time()) is not None:
                continue  # cooled down since the plan was made
            if breaker is not None and not breaker.allow(credential):
                continue
            target: Target = candidate.target  # type: ignore[assignment]
            try:
                url = target.provider.target(target.upstream, ctx, scope.get("query_string", b""))
            except InvalidBody as exc:
                if breaker is not None:
                    breaker.release(credential)
                await send_error(send, 400, str(exc))
                return None
            headers = request_headers(
                scope["headers"], target.drop | HANDSHAKE, target.defaults, target.static
            )
            headers.append(("x-request-id", ctx.client_request_id or ctx.request_id))
            ctx.credential_id = credential
            started = time.time()
            refused = 0
            try:
                async with asyncio.timeout(limits.connect_timeout):
                    ws = await self._session().ws_connect(
                        url,
                        headers=headers,
                        protocols=offered,
                        max_msg_size=limits.max_message_bytes,
                        autoping=True,
                        heartbeat=limits.heartbeat,
                        compress=0,
                    )
            except TimeoutError:
                status, message = 504, "The upstream did not accept the WebSocket in time."
                ctx.upstream_error = "timeout"
            except aiohttp.WSServerHandshakeError as exc:
                refused = exc.status
                ctx.upstream_error = "refused"
                if 400 <= refused < 500 and refused not in (401, 402, 403, 429):
                    # The request itself was refused (a bad model, a bad query): no other
                    # credential would take it either.
                    if breaker is not None:
                        breaker.record(credential, True)
                    await send_error(
                        send,
                        refused,
                        f"The upstream refused the WebSocket ({refused}).",
                        code="upstream_error",
                    )
                    return None
                # The gateway's own credential refused, rate limited, or a server error.
                status = 429 if refused == 429 else 502
                message = f"The upstream refused the WebSocket ({refused})."
            except (aiohttp.ClientError, OSError):
                ctx.upstream_error = "connect"
            else:
                if breaker is not None:
                    breaker.record(credential, True)
                if cooldowns is not None and model:
                    await cooldowns.record_success(credential, model)
                break
            if breaker is not None:
                breaker.record(credential, False)
            if cooldowns is not None and (model or refused in (401, 402, 403)):
                await cooldowns.record_failure(
                    credential,
                    model,
                    status=refused or None,
                    kind=None if refused else (ctx.upstream_error or "connect"),
                    started=started,
                )
        else:
            logger.warning("websocket %s: no upstream accepted (%s)", ctx.request_id, message)
            await send_error(send, status, message, code="upstream_error")
            return None
        ctx.upstream_error = None
        if plan.session is not None:
            router.remember(plan.session, ctx.credential_id or "")
        answer = getattr(ws, "_response", None)
        accept_headers: list[tuple[bytes, bytes]] = []
        if answer is not None:
            for name, value in answer.raw_headers:
                lowered = name.lower()
                if lowered not in _ACCEPT_DROP:
                    accept_headers.append((lowered, value))
        return ws, ws.protocol, accept_headers

    async def _relay(
        self,
        ctx: RequestContext,
        session: WebSocketSession,
        ws: aiohttp.ClientWebSocketResponse,
        receive: Receive,
        send: Send,
        opened: deque[Turn],
    ) -> str:
        """Relay until either side closes or a limit ends the session; returns why it ended."""
        limits = self.limits
        clock = [time.monotonic()]
        loop = asyncio.get_running_loop()
        upward = loop.create_task(
            self._client_to_upstream(ctx, session, ws, receive, send, opened, clock)
        )
        downward = loop.create_task(self._upstream_to_client(ctx, session, ws, send, opened, clock))
        tasks = {upward, downward}
        deadline = None if limits.max_duration is None else time.monotonic() + limits.max_duration
        # What ends the session: (why, close code, reason, whether the client still needs
        # telling). The closes happen once both directions have stopped, so neither direction
        # mistakes the other's close for its peer's.
        ending: tuple[str, int, str, bool] | None = None
        try:
            while ending is None:
                now = time.monotonic()
                waits = []
                if limits.idle_timeout is not None:
                    waits.append(clock[0] + limits.idle_timeout - now)
                if deadline is not None:
                    waits.append(deadline - now)
                timeout = max(0.0, min(waits)) if waits else None
                done, _ = await asyncio.wait(
                    tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                if done:
                    task = done.pop()
                    exc = task.exception()
                    if isinstance(exc, _Ended):
                        told = exc.why in ("client_disconnected", "closed")
                        ending = (exc.why, exc.code, exc.reason, not told)
                    elif exc is not None:
                        raise exc
                    else:
                        return str(task.result())
                    continue
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    reason = "The session reached its maximum duration; reconnect to continue."
                    ending = ("max_duration", 1001, reason, True)
                elif limits.idle_timeout is not None and now - clock[0] >= limits.idle_timeout:
                    ending = ("idle", 1001, "The session was idle for too long.", True)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        why, code, reason, tell = ending
        if tell:
            await _quietly(send({"type": "websocket.close", "code": code, "reason": reason}))
        await _quietly(ws.close(code=code, message=reason.encode()))
        return why

    async def _client_to_upstream(
        self,
        ctx: RequestContext,
        session: WebSocketSession,
        ws: aiohttp.ClientWebSocketResponse,
        receive: Receive,
        send: Send,
        opened: deque[Turn],
        clock: list[float],
    ) -> str:
        limit = self.limits.max_message_bytes
        hooks = session.turn_hooks
        while True:
            message = await receive()
            kind = message["type"]
            clock[0] = time.monotonic()
            if kind == "websocket.receive":
                text = message.get("text")
                if text is not None:
                    size = len(text)
                    if size * 4 > limit:
                        size = len(text.encode())
                    if size > limit:
                        raise _Ended(1009, "Message too big.", "too_big")
                    if CREATE in text:
                        refusal = await self._start_turn(ctx, session, text, opened, hooks)
                        if refusal is not None:
                            await _to_client(send, {"type": "websocket.send", "text": refusal})
                            continue
                    await _to_upstream(ws.send_str(text))
                else:
                    data = message.get("bytes") or b""
                    if len(data) > limit:
                        raise _Ended(1009, "Message too big.", "too_big")
                    if CREATE_BYTES in data:  # a turn sent as a binary frame is still a turn
                        refusal = await self._start_turn(ctx, session, data, opened, hooks)
                        if refusal is not None:
                            await _to_client(send, {"type": "websocket.send", "text": refusal})
                            continue
                    await _to_upstream(ws.send_bytes(data))
            elif kind == "websocket.disconnect":
                # The upstream is closed with the client's code once the relay has stopped.
                session.close_code = _valid_close(message.get("code"))
                reason = message.get("reason") or ""
                raise _Ended(
                    session.close_code, reason[:123], "client_disconnected" if opened else "closed"
                )

    async def _start_turn(
        self,
        ctx: RequestContext,
        session: WebSocketSession,
        text: str | bytes,
        opened: deque[Turn],
        hooks: list[Any],
    ) -> str | None:
        """A ``response.create``: a new turn, offered to the layers' hooks. Returns the error
        event to send instead of forwarding the frame when a layer refuses it."""
        try:
            create = create_decoder.decode(text)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
            return None  # not ours to judge: the upstream answers it
        if create.type != "response.create":
            return None
        limit = create.max_output_tokens
        if create.response is not None:
            limit = create.response.max_output_tokens
        session.turns += 1
        turn = Turn(
            f"{ctx.request_id}.{session.turns}",
            session.turns,
            create.model or session.model,
            limit if isinstance(limit, int) else None,
            len(text),
        )
        turn.event_id = create.event_id
        turn.lane = create.stream_id
        turn.frame = text
        try:
            for hook in hooks:
                refusal = await hook(turn)
                if refusal is not None:
                    for end in session.end_hooks:
                        await end([turn], "refused")
                    return error_event(session.kind, refusal, create.event_id)
        finally:
            turn.frame = None
        opened.append(turn)
        return None

    async def _upstream_to_client(
        self,
        ctx: RequestContext,
        session: WebSocketSession,
        ws: aiohttp.ClientWebSocketResponse,
        send: Send,
        opened: deque[Turn],
        clock: list[float],
    ) -> str:
        import aiohttp

        realtime = session.kind == "realtime"
        done_hooks = session.done_hooks
        receive = ws.receive
        monotonic = time.monotonic
        TEXT = aiohttp.WSMsgType.TEXT
        while True:
            msg = await receive()
            clock[0] = monotonic()
            kind = msg.type
            if kind is TEXT:
                text: str = msg.data
                try:
                    await send({"type": "websocket.send", "text": text})
                except OSError:  # the server's ClientDisconnected: the client is gone
                    raise _Ended(1001, "The client went away.", "client_disconnected") from None
                if opened or realtime:
                    # OpenAI's events name their type first: look there, and through the whole
                    # frame only when the type is not where it usually is.
                    head = text[:96]
                    where = head if '"type"' in head else text
                    if opened and '.delta"' in where:
                        head_turn = lane_head(opened, text)
                        if head_turn is not None:
                            head_turn.deltas += 1
                        continue
                    if opened and '"error"' in where:
                        turn, event = refused_turn(text, opened, realtime)
                        if turn is not None and event is not None:
                            for hook in done_hooks:
                                await hook(turn, event)
                        continue
                    status = terminal_status(where, text, realtime)
                    if status is not None:
                        found = lane_head(opened, text) if opened else None
                        if found is not None:
                            opened.remove(found)
                            turn = found
                        else:
                            turn = self._server_turn(ctx, session)
                        event = ResponseDone(status, text.encode())
                        for hook in done_hooks:
                            await hook(turn, event)
            elif kind == aiohttp.WSMsgType.BINARY:
                await _to_client(send, {"type": "websocket.send", "bytes": msg.data})
            elif kind in (
                aiohttp.WSMsgType.CLOSE,
                aiohttp.WSMsgType.CLOSING,
                aiohttp.WSMsgType.CLOSED,
            ):
                raw = ws.close_code
                reason = msg.extra if isinstance(msg.extra, str) else ""
                if raw is None or raw == 1006:  # no close frame: the upstream vanished
                    code, reason = 1011, "The upstream connection was lost."
                else:
                    code = _valid_close(raw)
                session.close_code = raw
                await _quietly(
                    send({"type": "websocket.close", "code": code, "reason": reason[:123]})
                )
                return "upstream_closed" if opened else "closed"
            elif kind == aiohttp.WSMsgType.ERROR:
                error = msg.data
                if getattr(error, "code", None) == 1009:
                    raise _Ended(1009, "Message too big.", "too_big")
                raise _Ended(1011, "The upstream connection failed.", "upstream_error")

    @staticmethod
    def _server_turn(ctx: RequestContext, session: WebSocketSession) -> Turn:
        """A response the upstream started by itself (Realtime voice activity detection)."""
        session.turns += 1
        return Turn(f"{ctx.request_id}.{session.turns}", session.turns, session.model, None, 0)


async def _to_client(send: Send, message: dict[str, Any]) -> None:
    try:
        await send(message)
    except OSError:  # the server's ClientDisconnected: the client is gone
        raise _Ended(1001, "The client went away.", "client_disconnected") from None


async def _to_upstream(sending: Any) -> None:
    import aiohttp

    try:
        await sending
    except (aiohttp.ClientError, OSError):
        raise _Ended(1011, "The upstream connection failed.", "upstream_error") from None


async def _quietly(awaitable: Any) -> None:
    try:
        await awaitable
    except Exception:
        logger.debug("websocket: ignored an error while closing", exc_info=True)
