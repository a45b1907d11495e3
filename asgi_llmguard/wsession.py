"""What the layers share about one WebSocket session (the Responses API's WebSocket mode, the
Realtime API): its turns, and the hooks through which each layer acts on them.

An HTTP request is one exchange, so each layer acts once around it. A WebSocket session carries
many responses, one per ``response.create`` the client sends (a *turn*), so the layers act per
turn instead: the forwarder's relay (`asgi_llmguard.forward.websocket`) parses only the frames
that start or end a response and calls the hooks the layers registered here on the session's
`WebSocketSession` (``scope["llmguard.websocket"]``):

- ``turn_hooks``, when a turn starts, in the order the layers are stacked; one may refuse the turn
  (a `TurnRefusal`): the frame is not forwarded and the client gets an ``error`` event;
- ``done_hooks``, when the upstream reports a response finished, with its `ResponseDone`;
- ``end_hooks``, once, when the session ends, with the turns it left unfinished.

`denial_send` lets a layer refuse the upgrade itself with its usual HTTP answer.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote_to_bytes

from asgi_llmguard.types import Message, Scope, Send

SESSION_KEY = "llmguard.websocket"
_DENIAL_KEY = "llmguard.websocket.denial"


class TurnRefusal:
    """Why a turn may not run: shown to the client as an ``error`` event (status, message, code,
    and the error type in the OpenAI dialect); the session stays open."""

    __slots__ = ("code", "kind", "message", "retry_after", "status")

    def __init__(
        self,
        status: int,
        message: str,
        code: str,
        kind: str = "invalid_request_error",
        retry_after: int | None = None,
    ) -> None:
        self.status = status
        self.message = message
        self.code = code
        self.kind = kind
        self.retry_after = retry_after


class Turn:
    """One response inside a session: from the client's ``response.create`` (or the upstream's
    own ``response.created``, for a response the Realtime server started by itself) to the
    upstream's terminal event, or to the end of the session."""

    __slots__ = (
        "deltas",
        "event_id",
        "frame",
        "lane",
        "max_output",
        "model",
        "number",
        "prompt_bytes",
        "request_id",
        "start",
        "started_at",
        "state",
    )

    def __init__(
        self, request_id: str, number: int, model: str | None, max_output: int | None, size: int
    ) -> None:
        #: The turn's own id in records: the session's request id and the turn's number.
        self.request_id = request_id
        self.number = number
        self.model = model
        self.max_output = max_output
        #: The size of the frame that started it (for estimates when no usage comes).
        self.prompt_bytes = size
        self.start = time.perf_counter()
        self.started_at = time.time()
        #: Output deltas relayed so far (an estimate of the output if the turn is cut).
        self.deltas = 0
        #: The frame that started it, while the turn hooks run (``None`` after).
        self.frame: str | bytes | None = None
        #: The client's ``event_id`` on the frame (Realtime), to match the upstream's errors.
        self.event_id: str | None = None
        #: The Responses WebSocket's ``stream_id`` (its multiplexing lane), if the frame named one.
        self.lane: str | None = None
        #: What the layers keep per turn (a budget reservation, a rate-limit charge).
        self.state: dict[str, Any] = {}


class ResponseDone:
    """The upstream's terminal event of a response: its status (``completed``, ``incomplete``,
    ``failed``, ``cancelled``; ``error`` when the upstream refused the turn with an ``error``
    event, whose HTTP status is ``http_status``) and the frame itself (the usage layer decodes
    its usage)."""

    __slots__ = ("frame", "http_status", "status")

    def __init__(self, status: str, frame: bytes, http_status: int = 200) -> None:
        self.status = status
        self.frame = frame
        self.http_status = http_status


TurnHook = Callable[[Turn], Awaitable[TurnRefusal | None]]
DoneHook = Callable[[Turn, ResponseDone], Awaitable[None]]
EndHook = Callable[[list[Turn], str], Awaitable[None]]


class WebSocketSession:
    """One session's shared state; see the module docstring."""

    __slots__ = (
        "close_code",
        "done_hooks",
        "end_hooks",
        "kind",
        "model",
        "tokens",
        "turn_hooks",
        "turns",
    )

    def __init__(self, kind: str) -> None:
        #: ``responses`` (the Responses API's WebSocket mode) or ``realtime``.
        self.kind = kind
        #: The model named on the upgrade (Realtime: ``?model=``), if any.
        self.model: str | None = None
        self.turn_hooks: list[TurnHook] = []
        self.done_hooks: list[DoneHook] = []
        self.end_hooks: list[EndHook] = []
        #: Turns started so far (refused ones included).
        self.turns = 0
        #: LLM tokens the session's responses used, as recorded (for the access log).
        self.tokens = 0
        #: The close code the session ended with, once it has.
        self.close_code: int | None = None


def session_of(scope: Scope, kind: str = "responses") -> WebSocketSession:
    """The scope's session, created here on first use."""
    session: WebSocketSession | None = scope.get(SESSION_KEY)
    if session is None:
        session = scope[SESSION_KEY] = WebSocketSession(kind)
    return session


def _close_code(status: int) -> int:
    if status in (429, 503):
        return 1013  # try again later
    return 1011 if status >= 500 else 1008


def denial_send(scope: Scope, send: Send) -> Send:
    """A ``send`` through which a layer refuses a WebSocket upgrade with its usual HTTP answer.

    ``http.response.*`` messages become the WebSocket denial response
    (``websocket.http.response.*``) when the server supports it, else a close before accepting
    (1008 for a refusal, 1013 for 429 and 503, 1011 for other server errors). Wraps once per
    scope: layers further in get ``send`` back unchanged.
    """
    if scope.get(_DENIAL_KEY):
        return send
    scope[_DENIAL_KEY] = True
    supported = "websocket.http.response" in scope.get("extensions", {})

    async def nothing() -> None:
        return None

    def deny(message: Message) -> Awaitable[None]:
        # A plain function: the frames of an accepted session pass through without a coroutine
        # of their own.
        kind = message["type"]
        if kind == "http.response.start":
            if not supported:
                return send({"type": "websocket.close", "code": _close_code(message["status"])})
            return send({**message, "type": "websocket.http.response.start"})
        if kind == "http.response.body":
            if not supported:
                return nothing()
            return send({**message, "type": "websocket.http.response.body"})
        return send(message)

    return deny


def realtime_model(scope: Scope, api: str) -> str | None:
    """The model a Realtime upgrade names: ``?model=`` (Azure's path: ``?deployment=``)."""
    name = b"deployment" if api == "azure" else b"model"
    for pair in scope.get("query_string", b"").split(b"&"):
        key, _, value = pair.partition(b"=")
        if key == name and value:
            return unquote_to_bytes(value.replace(b"+", b" ")).decode("utf-8", "replace")[:256]
    return None
