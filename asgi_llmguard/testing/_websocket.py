"""OpenAI's two WebSocket APIs, as documented: the Responses API's WebSocket mode here, the
Realtime API (also spoken by Azure OpenAI's ``/openai/realtime``) in ``_realtime``; what both
share (keys, refusals, the session's sending) here too.

**Responses WebSocket mode** (``GET /v1/responses`` with ``Upgrade: websocket``; clients such as
Codex add ``OpenAI-Beta: responses_websockets=2026-02-06``). Each turn is a client text frame
``{"type": "response.create", ...}`` whose other fields are those of ``POST /v1/responses``
(``stream`` is implied and ignored). The server answers with the same events as the HTTP stream,
one JSON text frame each, ending with ``response.completed`` (or ``response.incomplete``) and its
``usage``. ``"generate": false`` warms the connection up: ``response.created`` then
``response.completed`` with no output, the prompt counted as input and no output tokens.
A refused turn is one ``{"type": "error", "status": <http status>, "error": {...}}`` frame (the
error object as in HTTP answers); the socket stays open. A ``response.create`` with a
``stream_id`` runs in that lane: lanes run side by side (their events interleave, each echoing
its ``stream_id``), the turns of one lane in order.

**Realtime API**: see ``_realtime``.

Both APIs authenticate on the upgrade: ``Authorization: Bearer <key>`` (Azure: ``api-key``), or
the key as a subprotocol ``openai-insecure-api-key.<key>`` (the browser form). Refusals happen
before the socket is accepted: a 401 or 404 HTTP answer when the server supports the WebSocket
denial response, else a close with code 1008. The subprotocol ``realtime``, when offered, is
accepted. The ``x-fake-*`` headers of the upgrade request apply to the whole session
(``chunk_delay``, ``chunks``, ``reply``, ``cached_tokens``, ``latency`` before accepting,
``status`` to refuse the upgrade, and ``reset_after_chunks``: the socket is dropped without a
close frame after that many deltas of a response).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from asgi_llmguard.testing import _openai
from asgi_llmguard.testing._common import (
    ApiError,
    Generation,
)
from asgi_llmguard.testing._knobs import Knobs
from asgi_llmguard.testing._tools import Script

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

#: The key subprotocol prefix browsers use (they cannot set headers on a WebSocket).
KEY_PROTOCOL = "openai-insecure-api-key."


class SocketDropped(Exception):
    """Raised to drop the socket without a close frame (``reset_after_chunks``)."""


def offered_protocols(headers: list[tuple[str, str]]) -> list[str]:
    return [
        p.strip()
        for name, value in headers
        if name == "sec-websocket-protocol"
        for p in value.split(",")
        if p.strip()
    ]


def check_key(api: str, headers: list[tuple[str, str]], key: str) -> None:
    """Raise a 401 `ApiError` unless the upgrade carries ``key``."""
    given = {name: value for name, value in headers}
    if api == "azure":
        ok = given.get("api-key") == key
    else:
        ok = given.get("authorization") == f"Bearer {key}"
    if not ok:
        ok = KEY_PROTOCOL + key in offered_protocols(headers)
    if not ok:
        raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")


async def deny(scope: MutableMapping[str, Any], send: Send, error: ApiError) -> None:
    """Refuse the upgrade with an HTTP answer, or close with 1008 when the server cannot."""
    if "websocket.http.response" in scope.get("extensions", {}):
        body = orjson.dumps(
            _openai.error_body(error.status, error.message, code=error.code, param=error.param)
        )
        await send(
            {
                "type": "websocket.http.response.start",
                "status": error.status,
                "headers": [(b"content-type", b"application/json"), *error.headers],
            }
        )
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008, "reason": error.message[:120]})


class Session:
    """One accepted socket: sends JSON frames and paces deltas by the session's knobs."""

    def __init__(self, receive: Receive, send: Send, knobs: Knobs, pause: Any) -> None:
        self.receive = receive
        self.send = send
        self.knobs = knobs
        self.pause = pause
        self.sequence = 0

    async def event(self, obj: dict[str, Any]) -> None:
        await self.send({"type": "websocket.send", "text": orjson.dumps(obj).decode()})

    async def delta(self, obj: dict[str, Any], sent: int) -> None:
        await self.pause(self.knobs.chunk_delay)
        await self.event(obj)
        if self.knobs.reset_after_chunks == sent:
            raise SocketDropped(f"fake provider dropped the socket after {sent} deltas")

    def generation(self) -> Generation:
        k = self.knobs
        return Generation(
            reply=k.reply,
            chunks=k.chunks,
            cached_tokens=k.cached_tokens,
            reasoning_tokens=k.reasoning_tokens,
            service_tier=k.service_tier,
            script=Script(
                k.tool_call, k.tool_arguments, k.parallel_tool_calls, k.structured_output
            ),
        )


# -- Responses WebSocket mode ---------------------------------------------------------------------


def _sse_objects(events: list[bytes]) -> list[dict[str, Any]]:
    out = []
    for raw in events:
        for line in raw.splitlines():
            if line.startswith(b"data: "):
                out.append(orjson.loads(line[6:]))
    return out


def responses_error(error: ApiError) -> dict[str, Any]:
    body = _openai.error_body(error.status, error.message, code=error.code, param=error.param)
    return {"type": "error", "status": error.status, **body}


async def responses_turn(session: Session, event: dict[str, Any]) -> None:
    """Answer one ``response.create`` frame with the HTTP stream's events (each echoing the
    frame's ``stream_id``, if it has one)."""
    lane = event.get("stream_id")
    if lane is not None:
        session = _Lane(session, lane)
    body = {k: v for k, v in event.items() if k not in ("type", "stream", "generate", "stream_id")}
    body["stream"] = True
    generation = session.generation()
    if event.get("generate") is False:
        # A warm-up: the request is prepared, nothing is generated.
        full = _openai.responses({**body, "stream": False, "max_output_tokens": None}, generation)
        assert isinstance(full, dict)
        usage = full["usage"]
        usage.update(
            output_tokens=0,
            total_tokens=usage["input_tokens"],
            output_tokens_details={"reasoning_tokens": 0},
        )
        full["output"] = []
        created = {**full, "status": "in_progress", "usage": None, "completed_at": None}
        await session.event({"type": "response.created", "sequence_number": 0, "response": created})
        await session.event({"type": "response.completed", "sequence_number": 1, "response": full})
        return
    plan = _openai.responses(body, generation)
    assert not isinstance(plan, dict)
    for obj in _sse_objects(plan.head):
        await session.event(obj)
    for sent, obj in enumerate(_sse_objects(plan.content), start=1):
        await session.delta(obj, sent)
    for obj in _sse_objects(plan.tail):
        await session.event(obj)


class _Lane(Session):
    """The events of one ``stream_id`` lane: each echoes it."""

    def __init__(self, session: Session, lane: Any) -> None:
        super().__init__(session.receive, session.send, session.knobs, session.pause)
        self.lane = lane

    async def event(self, obj: dict[str, Any]) -> None:
        await super().event({**obj, "stream_id": self.lane})


async def _run_lane(session: Session, queue: asyncio.Queue[dict[str, Any]]) -> None:
    while True:
        event = await queue.get()
        try:
            await responses_turn(session, event)
        except ApiError as error:
            await session.event({**responses_error(error), "stream_id": event.get("stream_id")})


async def serve_responses(session: Session, on_turn: Callable[[bytes], None]) -> None:
    """Turns run in order; turns naming a ``stream_id`` run in order within their lane, lanes
    side by side (multiplexing), as the Responses WebSocket mode documents."""
    lanes: dict[Any, tuple[asyncio.Queue[dict[str, Any]], asyncio.Task[None]]] = {}
    try:
        await _serve_responses(session, on_turn, lanes)
    finally:
        for _, task in lanes.values():
            task.cancel()
        for _, task in lanes.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def _serve_responses(
    session: Session,
    on_turn: Callable[[bytes], None],
    lanes: dict[Any, tuple[asyncio.Queue[dict[str, Any]], asyncio.Task[None]]],
) -> None:
    while True:
        for _, task in lanes.values():
            if task.done() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        message = await session.receive()
        if message["type"] == "websocket.disconnect":
            return
        raw = message.get("text")
        data = raw.encode() if raw is not None else message.get("bytes") or b""
        try:
            event = orjson.loads(data)
            if not isinstance(event, dict):
                raise ApiError(400, "Each message must be a JSON object.")
            if event.get("type") != "response.create":
                raise ApiError(
                    400,
                    f"Unsupported event type {str(event.get('type'))[:64]!r}; "
                    "send response.create.",
                    code="unknown_event",
                )
            on_turn(data)
            lane = event.get("stream_id")
            if lane is None:
                await responses_turn(session, event)
                continue
            if not isinstance(lane, str):
                raise ApiError(400, "stream_id must be a string.", param="stream_id")
            if lane not in lanes:
                queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
                task = asyncio.get_running_loop().create_task(_run_lane(session, queue))
                lanes[lane] = (queue, task)
            lanes[lane][0].put_nowait(event)
        except orjson.JSONDecodeError:
            await session.event(responses_error(ApiError(400, "Invalid JSON in message.")))
        except ApiError as error:
            await session.event(responses_error(error))
