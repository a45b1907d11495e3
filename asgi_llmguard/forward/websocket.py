"""The WebSocket relay: the Responses API's WebSocket mode and the Realtime API.

The gateway connects upstream first (aiohttp's client WebSocket, on the forwarder's pooled
session), with the upstream's credential and without the client's, and only then accepts the
client's socket, with the subprotocol the upstream chose (`connect_upstream`: failover,
refusals). Then frames are relayed both ways, each direction in
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

from asgi_llmguard.context import SCOPE_KEY, RequestContext
from asgi_llmguard.errors import send_route_error
from asgi_llmguard.forward._frames import (
    CREATE,
    CREATE_BYTES,
    create_decoder,
    error_event,
    lane_head,
    refused_turn,
    terminal_status,
)
from asgi_llmguard.forward._upstream_ws import connect_upstream
from asgi_llmguard.forward.config import WebSocketLimits
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
        upstream = await connect_upstream(
            self.router, self._session(), self.limits, ctx, session, scope, send
        )
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
