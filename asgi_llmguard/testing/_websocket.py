"""OpenAI's two WebSocket APIs, as documented: the Responses API's WebSocket mode and the Realtime
API (also spoken by Azure OpenAI's ``/openai/realtime``).

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

**Realtime API** (``GET /v1/realtime?model=<model>``; Azure: ``/openai/realtime?deployment=...``).
The server speaks first (``session.created``). Client events handled: ``session.update``
(``session.updated``), ``conversation.item.create`` (``conversation.item.added`` and
``conversation.item.done``), ``input_audio_buffer.append`` / ``.commit`` / ``.clear``, and
``response.create``: ``response.created``, the output item and content part events, one delta
per reply word (``response.output_text.delta``, or ``response.output_audio_transcript.delta``
and ``response.output_audio.delta`` when the output modality is audio), their ``.done`` events,
then ``response.done`` whose ``usage`` splits input and output into text and audio tokens:

* input text tokens: the words of every text item in the conversation, earlier replies included;
  input audio tokens: one per 100 bytes of audio appended (decoded) and committed;
* cached input tokens: ``x-fake-cached-tokens`` (at most the input), reported as text;
* output: one text token per reply word; with audio output, also `AUDIO_TOKENS_PER_WORD` audio
  tokens per word.

With ``audio.input.turn_detection`` set (``session.update``), every ``input_audio_buffer.commit``
also starts a response by itself, as the server does when its voice activity detection hears
the end of the speech (unless ``create_response`` is false); no ``response.create`` is sent.

Unknown client event types get an ``error`` event (``invalid_request_error``,
``unknown_event``); the session stays open.

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
import base64
import binascii
import contextlib
import time
import urllib.parse
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from asgi_llmguard.testing import _openai
from asgi_llmguard.testing._common import (
    ApiError,
    Generation,
    count_tokens,
    new_id,
    reply_chunks,
    words_in_content,
)
from asgi_llmguard.testing._knobs import Knobs

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

#: Audio output tokens the fake reports for each word of a spoken reply.
AUDIO_TOKENS_PER_WORD = 4
#: Bytes of appended input audio per audio token.
AUDIO_BYTES_PER_TOKEN = 100
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


# -- Realtime API ---------------------------------------------------------------------------------


class Conversation:
    """What a Realtime session has heard and said: the words and audio tokens of its items."""

    def __init__(self) -> None:
        self.text_tokens = 0
        self.audio_tokens = 0
        self.buffer_bytes = 0
        self.modalities: list[str] = ["audio"]
        self.instructions = ""
        #: ``audio.input.turn_detection`` as the client set it (``None``: turns are manual).
        self.turn_detection: dict[str, Any] | None = None


def realtime_error(error: ApiError, client_event_id: str | None) -> dict[str, Any]:
    return {
        "type": "error",
        "event_id": new_id("event_"),
        "error": {
            "type": error.kind or "invalid_request_error",
            "code": error.code,
            "message": error.message,
            "param": error.param,
            "event_id": client_event_id,
        },
    }


def _session_object(session_id: str, model: str, conv: Conversation) -> dict[str, Any]:
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": session_id,
        "model": model,
        "output_modalities": conv.modalities,
        "instructions": conv.instructions,
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "prompt": None,
        "expires_at": int(time.time()) + 3600,
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": conv.turn_detection,
            },
            "output": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "voice": "alloy",
                "speed": 1.0,
            },
        },
        "include": None,
    }


async def realtime_response(
    session: Session, conv: Conversation, model: str, params: dict[str, Any]
) -> None:
    modalities = params.get("output_modalities") or conv.modalities
    audio = "audio" in modalities
    instructions = params.get("instructions")
    extra = count_tokens(instructions) if isinstance(instructions, str) else 0
    k = session.knobs
    pieces = reply_chunks(k.reply, chunks=k.chunks)
    limit = params.get("max_output_tokens")
    capped = isinstance(limit, int) and limit < len(pieces)
    if isinstance(limit, int) and capped:
        pieces = pieces[:limit]
    resp_id, item_id = new_id("resp_"), new_id("item_")
    text = "".join(pieces)

    def response(status: str, output: list[dict[str, Any]], usage: Any) -> dict[str, Any]:
        return {
            "object": "realtime.response",
            "id": resp_id,
            "status": status,
            "status_details": (
                {"type": "incomplete", "reason": "max_output_tokens"} if capped else None
            ),
            "output": output,
            "conversation_id": "conv_fake",
            "output_modalities": modalities,
            "max_output_tokens": limit if limit is not None else "inf",
            "audio": {"output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "alloy"}},
            "usage": usage,
            "metadata": params.get("metadata"),
        }

    def part(done: bool) -> dict[str, Any]:
        if audio:
            return {"type": "output_audio", "transcript": text if done else ""}
        return {"type": "output_text", "text": text if done else ""}

    def item(status: str, done: bool) -> dict[str, Any]:
        return {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": [part(done)] if done else [],
        }

    def ev(kind: str, **fields: Any) -> dict[str, Any]:
        return {"type": kind, "event_id": new_id("event_"), **fields}

    where = {"response_id": resp_id, "item_id": item_id, "output_index": 0, "content_index": 0}
    await session.event(ev("response.created", response=response("in_progress", [], None)))
    await session.event(
        ev(
            "response.output_item.added",
            response_id=resp_id,
            output_index=0,
            item=item("in_progress", False),
        )
    )
    await session.event(
        ev("conversation.item.added", previous_item_id=None, item=item("in_progress", False))
    )
    await session.event(ev("response.content_part.added", **where, part=part(False)))
    for sent, piece in enumerate(pieces, start=1):
        if audio:
            await session.event(
                ev(
                    "response.output_audio.delta",
                    **where,
                    delta=base64.b64encode(b"\0" * 48).decode(),
                )
            )
            await session.delta(
                ev("response.output_audio_transcript.delta", **where, delta=piece), sent
            )
        else:
            await session.delta(ev("response.output_text.delta", **where, delta=piece), sent)
    if audio:
        await session.event(ev("response.output_audio.done", **where))
        await session.event(ev("response.output_audio_transcript.done", **where, transcript=text))
    else:
        await session.event(ev("response.output_text.done", **where, text=text))
    await session.event(ev("response.content_part.done", **where, part=part(True)))
    final_item = item("incomplete" if capped else "completed", True)
    await session.event(
        ev("response.output_item.done", response_id=resp_id, output_index=0, item=final_item)
    )
    await session.event(ev("conversation.item.done", previous_item_id=None, item=final_item))
    text_in = conv.text_tokens + extra
    input_tokens = text_in + conv.audio_tokens
    cached = min(k.cached_tokens, text_in)
    words = len(pieces)
    audio_out = words * AUDIO_TOKENS_PER_WORD if audio else 0
    usage = {
        "total_tokens": input_tokens + words + audio_out,
        "input_tokens": input_tokens,
        "output_tokens": words + audio_out,
        "input_token_details": {
            "text_tokens": text_in,
            "audio_tokens": conv.audio_tokens,
            "image_tokens": 0,
            "cached_tokens": cached,
            "cached_tokens_details": {"text_tokens": cached, "audio_tokens": 0, "image_tokens": 0},
        },
        "output_token_details": {"text_tokens": words, "audio_tokens": audio_out},
    }
    await session.event(
        ev(
            "response.done",
            response=response("incomplete" if capped else "completed", [final_item], usage),
        )
    )
    # The reply becomes part of the conversation the next response reads.
    conv.text_tokens += words
    conv.audio_tokens += audio_out


async def serve_realtime(session: Session, model: str, on_turn: Callable[[bytes], None]) -> None:
    conv = Conversation()
    session_id = new_id("sess_")

    def ev(kind: str, **fields: Any) -> dict[str, Any]:
        return {"type": kind, "event_id": new_id("event_"), **fields}

    await session.event(ev("session.created", session=_session_object(session_id, model, conv)))
    while True:
        message = await session.receive()
        if message["type"] == "websocket.disconnect":
            return
        raw = message.get("text")
        data = raw.encode() if raw is not None else message.get("bytes") or b""
        client_id: str | None = None
        try:
            try:
                event = orjson.loads(data)
            except orjson.JSONDecodeError:
                raise ApiError(400, "Invalid JSON in message.", code="invalid_json") from None
            if not isinstance(event, dict):
                raise ApiError(400, "Each message must be a JSON object.")
            client_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
            kind = event.get("type")
            if kind == "session.update":
                update = event.get("session") or {}
                if isinstance(update.get("output_modalities"), list):
                    conv.modalities = update["output_modalities"]
                if isinstance(update.get("instructions"), str):
                    conv.instructions = update["instructions"]
                audio_in = (update.get("audio") or {}).get("input") or {}
                if "turn_detection" in audio_in:
                    detection = audio_in["turn_detection"]
                    conv.turn_detection = detection if isinstance(detection, dict) else None
                await session.event(
                    ev("session.updated", session=_session_object(session_id, model, conv))
                )
            elif kind == "conversation.item.create":
                item = event.get("item") or {}
                conv.text_tokens += words_in_content(item.get("content"))
                item_id = item.get("id") or new_id("item_")
                added = {**item, "id": item_id, "object": "realtime.item", "status": "completed"}
                await session.event(
                    ev("conversation.item.added", previous_item_id=None, item=added)
                )
                await session.event(ev("conversation.item.done", previous_item_id=None, item=added))
            elif kind == "input_audio_buffer.append":
                try:
                    conv.buffer_bytes += len(
                        base64.b64decode(event.get("audio") or "", validate=True)
                    )
                except (binascii.Error, TypeError):
                    raise ApiError(400, "audio must be base64.", param="audio") from None
            elif kind == "input_audio_buffer.commit":
                conv.audio_tokens += -(-conv.buffer_bytes // AUDIO_BYTES_PER_TOKEN)
                conv.buffer_bytes = 0
                await session.event(
                    ev(
                        "input_audio_buffer.committed",
                        previous_item_id=None,
                        item_id=new_id("item_"),
                    )
                )
                if conv.turn_detection is not None and conv.turn_detection.get(
                    "create_response", True
                ):
                    # Voice activity detection: the end of the speech starts a response.
                    await realtime_response(session, conv, model, {})
            elif kind == "input_audio_buffer.clear":
                conv.buffer_bytes = 0
                await session.event(ev("input_audio_buffer.cleared"))
            elif kind == "response.create":
                on_turn(data)
                params = event.get("response") or {}
                await realtime_response(
                    session, conv, model, params if isinstance(params, dict) else {}
                )
            else:
                raise ApiError(400, f"Unknown event type {str(kind)[:64]!r}.", code="unknown_event")
        except ApiError as error:
            await session.event(realtime_error(error, client_id))


def realtime_model(api: str, query_string: str, arg: str) -> str:
    query = urllib.parse.parse_qs(query_string)
    if api == "azure":
        deployment = (query.get("deployment") or [""])[0]
        if not deployment:
            raise ApiError(400, "The deployment query parameter is required.", param="deployment")
        if not query.get("api-version"):
            raise ApiError(
                400,
                "The api-version query parameter is required.",
                code="MissingApiVersionParameter",
            )
        return deployment
    model = (query.get("model") or [""])[0]
    if not model:
        raise ApiError(400, "The model query parameter is required.", param="model")
    return model
