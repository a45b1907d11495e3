"""The few frames of a WebSocket session the gateway reads: those that start a response
(``response.create``) and those that end one (the Responses API's ``response.completed`` /
``.incomplete`` / ``.failed`` and ``error``, the Realtime API's ``response.done`` and ``error``),
and the ``error`` event the gateway sends for a turn a layer refused.

Only the fields the relay needs are decoded; every other frame passes without being parsed.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import msgspec
import orjson

from asgi_llmguard.wsession import ResponseDone, Turn, TurnRefusal

#: The types of the events that end a response (looked for as they appear in a frame).
TERMINAL = ('"response.completed"', '"response.incomplete"', '"response.failed"')
REALTIME_DONE = '"response.done"'
#: The type of the event that starts a turn.
CREATE = '"response.create"'
CREATE_BYTES = CREATE.encode()


class Create(msgspec.Struct):
    """The fields of a ``response.create`` the layers act on (Realtime: ``response`` holds the
    response's parameters; the Responses API: they are top-level)."""

    type: str = ""
    model: str | None = None
    max_output_tokens: int | str | None = None
    response: _RealtimeParams | None = None
    event_id: str | None = None
    stream_id: str | None = None


class _RealtimeParams(msgspec.Struct):
    max_output_tokens: int | str | None = None


class _Status(msgspec.Struct):
    status: str | None = None


class _Terminal(msgspec.Struct):
    type: str = ""
    response: _Status | None = None
    #: ``error`` events: the Responses WebSocket's HTTP status, the Realtime client event id.
    status: int | None = None
    error: _ErrorBody | None = None
    #: The Responses WebSocket's multiplexing lane, echoed on every event of a response.
    stream_id: str | None = None


class _ErrorBody(msgspec.Struct):
    event_id: str | None = None


create_decoder = msgspec.json.Decoder(Create)
_terminal = msgspec.json.Decoder(_Terminal)


def refused_turn(
    text: str, opened: deque[Turn], realtime: bool
) -> tuple[Turn | None, ResponseDone | None]:
    """An upstream ``error`` event that refuses a turn: the turn it ends, and how. In the
    Responses WebSocket mode an error answers the oldest open turn; a Realtime error names the
    client event it answers (``error.event_id``), and only a ``response.create`` it names is
    ended (others, such as a bad ``session.update``, leave the turns alone)."""
    try:
        event = _terminal.decode(text)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None, None
    if event.type != "error":
        return None, None
    if realtime:
        wanted = event.error.event_id if event.error is not None else None
        if wanted is None:
            return None, None
        for turn in opened:
            if turn.event_id == wanted:
                opened.remove(turn)
                break
        else:
            return None, None
    else:
        found = lane_head(opened, text)
        if found is None:
            return None, None
        opened.remove(found)
        turn = found
    return turn, ResponseDone("error", text.encode(), event.status or 400)


def lane_head(opened: deque[Turn], text: str) -> Turn | None:
    """The open turn an upstream event belongs to: the oldest open turn, or, when turns are
    open on several ``stream_id`` lanes at once (multiplexing), the oldest of the event's lane."""
    first = opened[0]
    if len(opened) == 1 or all(turn.lane == first.lane for turn in opened):
        return first
    lane = stream_id(text)
    for turn in opened:
        if turn.lane == lane:
            return turn
    return None


def stream_id(text: str) -> str | None:
    """The ``stream_id`` an event echoes, read without decoding the event."""
    at = text.find('"stream_id"')
    colon = text.find(":", at + 11) if at >= 0 else -1
    if colon < 0:
        return None
    start = colon + 1
    while start < len(text) and text[start] in " \t\r\n":
        start += 1
    if start >= len(text) or text[start] != '"':
        return None  # null, or not a string
    end = text.find('"', start + 1)
    return text[start + 1 : end] if end > 0 else None


def terminal_status(where: str, text: str, realtime: bool) -> str | None:
    """The status of the response a terminal event ends (``None`` for any other frame);
    ``where`` is the part of the frame ``text`` to look for its type in."""
    if realtime:
        if REALTIME_DONE not in where:
            return None
    elif not any(marker in where for marker in TERMINAL):
        return None
    try:
        event = _terminal.decode(text)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None
    kind = event.type
    if realtime:
        if kind != "response.done":
            return None
    elif kind not in ("response.completed", "response.incomplete", "response.failed"):
        return None
    status = event.response.status if event.response is not None else None
    return status or kind.rpartition(".")[2]


def error_event(kind: str, refusal: TurnRefusal, client_event: str | None) -> str:
    error = {"type": refusal.kind, "code": refusal.code, "message": refusal.message, "param": None}
    if kind == "realtime":
        event: dict[str, Any] = {
            "type": "error",
            "event_id": f"event_llmguard_{time.time_ns():x}",
            "error": {**error, "event_id": client_event},
        }
    else:
        event = {"type": "error", "status": refusal.status, "error": error}
        if refusal.retry_after is not None:
            event["headers"] = {"retry-after": str(refusal.retry_after)}
    return orjson.dumps(event).decode()
