"""The Realtime API over a WebSocket, as documented (``GET /v1/realtime?model=<model>``; Azure:
``/openai/realtime?deployment=...&api-version=...``).

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

Keys, refusals and the ``x-fake-*`` knobs work as for the Responses WebSocket mode
(``_websocket``).
"""

from __future__ import annotations

import base64
import binascii
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import orjson

from asgi_llmguard.testing._common import (
    ApiError,
    count_tokens,
    new_id,
    reply_chunks,
    words_in_content,
)
from asgi_llmguard.testing._websocket import Session

#: Audio output tokens the fake reports for each word of a spoken reply.
AUDIO_TOKENS_PER_WORD = 4
#: Bytes of appended input audio per audio token.
AUDIO_BYTES_PER_TOKEN = 100


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
