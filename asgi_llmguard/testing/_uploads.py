"""OpenAI's upload endpoints, as documented in its API reference: audio transcriptions and
translations, image edits and variations (``multipart/form-data``), and image generations (JSON).

The fake cannot listen to audio or look at images, so it follows fixed rules:

* **Audio duration**: one second per 1,000 bytes of the uploaded ``file`` (at least 0.001 s).
  ``whisper-1`` reports it as ``duration`` (``verbose_json``) and as
  ``usage: {"type": "duration", "seconds": <whole seconds, rounded up>}`` (``json`` and
  ``verbose_json``); ``text``, ``srt`` and ``vtt`` answers carry no numbers.
* **Audio tokens** (every other model, e.g. ``gpt-4o-transcribe``, which take ``json`` and
  ``text`` only): one audio token per 100 bytes of the file (at least 1), plus the words of
  ``prompt`` as text tokens, in ``usage: {"type": "tokens", ...}``; the output tokens are the
  words of the transcript.
* **Transcript**: the reply (``x-fake-reply``).
* **Images**: ``n`` images (default 1), each ``{"b64_json": ...}`` for ``gpt-image-*`` models or
  ``response_format=b64_json``, else ``{"url": ...}``. ``gpt-image-*`` answers carry ``usage``:
  the words of ``prompt`` as text tokens, one image token per 100 bytes of uploaded images, and
  100 output tokens per image.
"""

from __future__ import annotations

import email.parser
import email.policy
import math
import time
from dataclasses import dataclass
from typing import Any

from asgi_llmguard.testing._common import (
    ApiError,
    Generation,
    StreamPlan,
    count_tokens,
    new_id,
    split_reply,
    sse_data,
)

_AUDIO_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
#: A 1x1 PNG, the image every ``b64_json`` answer carries.
_PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5E"
    "rkJggg=="
)


@dataclass(frozen=True)
class Form:
    """A parsed ``multipart/form-data`` body: text fields and file sizes, by field name."""

    fields: dict[str, str]
    files: dict[str, list[int]]

    def text(self, name: str) -> str | None:
        return self.fields.get(name)


@dataclass(frozen=True)
class PlainText:
    """A non-JSON answer (``response_format`` ``text``, ``srt`` or ``vtt``)."""

    body: str
    content_type: str = "text/plain; charset=utf-8"


def parse_form(content_type: str | None, body: bytes) -> Form:
    """The form in ``body``; a body that is not ``multipart/form-data`` is refused (400)."""
    if not content_type or not content_type.lower().startswith("multipart/form-data"):
        raise ApiError(400, "The request must be sent as multipart/form-data.")
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart() or message.defects:
        raise ApiError(400, "The multipart/form-data body could not be parsed.")
    fields: dict[str, str] = {}
    files: dict[str, list[int]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str) or part.defects:
            raise ApiError(400, "The multipart/form-data body could not be parsed.")
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        if part.get_filename() is not None:
            files.setdefault(name.removesuffix("[]"), []).append(len(data))
        else:
            fields[name] = data.decode("utf-8", "replace")
    return Form(fields, files)


def _model(form: Form, gen: Generation) -> str:
    model = gen.model or form.text("model")
    if not model:
        raise ApiError(400, "you must provide a model parameter", param="model")
    return model


def audio(form: Form, gen: Generation, task: str) -> dict[str, Any] | PlainText | StreamPlan:
    """``POST /v1/audio/transcriptions`` (``task="transcribe"``) and ``/translations``.

    ``stream=true`` (transcriptions, models other than ``whisper-1``): one
    ``transcript.text.delta`` event per word, then ``transcript.text.done`` with the text and the
    usage, as ``data:``-only events.
    """
    model = _model(form, gen)
    sizes = form.files.get("file")
    if not sizes:
        raise ApiError(400, "you must provide a file parameter", param="file")
    size = sizes[0]
    fmt = form.text("response_format") or "json"
    if fmt not in _AUDIO_FORMATS:
        raise ApiError(400, f"Invalid response_format {fmt!r}", param="response_format")
    by_duration = model == "whisper-1"
    if not by_duration and fmt not in ("json", "text"):
        raise ApiError(
            400,
            f"response_format '{fmt}' is not compatible with model '{model}'. "
            "Use 'json' or 'text' instead.",
            param="response_format",
        )
    text = gen.reply
    seconds = max(size, 1) / 1000
    if fmt == "text":
        return PlainText(text + "\n")
    if fmt in ("srt", "vtt"):
        end = _timestamp(seconds, "," if fmt == "srt" else ".")
        start = _timestamp(0, "," if fmt == "srt" else ".")
        cue = f"{start} --> {end}\n{text}\n"
        return PlainText("1\n" + cue if fmt == "srt" else "WEBVTT\n\n" + cue, "text/plain")
    out: dict[str, Any] = {"text": text}
    if by_duration:
        usage: dict[str, Any] = {"type": "duration", "seconds": math.ceil(seconds)}
    else:
        audio_tokens = max(1, size // 100)
        text_tokens = count_tokens(form.text("prompt") or "")
        output = count_tokens(text)
        usage = {
            "type": "tokens",
            "input_tokens": audio_tokens + text_tokens,
            "input_token_details": {"text_tokens": text_tokens, "audio_tokens": audio_tokens},
            "output_tokens": output,
            "total_tokens": audio_tokens + text_tokens + output,
        }
    if form.text("stream") == "true" and task == "transcribe" and not by_duration:
        return StreamPlan(
            content=[
                sse_data({"type": "transcript.text.delta", "delta": piece})
                for piece in split_reply(text)
            ],
            tail=[sse_data({"type": "transcript.text.done", "text": text, "usage": usage})],
        )
    if fmt == "verbose_json":
        out = {
            "task": task,
            "language": "english",
            "duration": seconds,
            "text": text,
            "segments": [
                {
                    "id": 0,
                    "seek": 0,
                    "start": 0.0,
                    "end": seconds,
                    "text": text,
                    "tokens": [],
                    "temperature": 0.0,
                    "avg_logprob": -0.2,
                    "compression_ratio": 1.0,
                    "no_speech_prob": 0.0,
                }
            ],
        }
    if task == "transcribe" or fmt == "verbose_json":
        out["usage"] = usage
    return out


def _timestamp(seconds: float, comma: str) -> str:
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{comma}{millis:03d}"


def images(
    fields: dict[str, Any], gen: Generation, image_bytes: int = 0, *, needs_image: bool = False
) -> dict[str, Any]:
    """``POST /v1/images/generations`` (JSON), ``/edits`` and ``/variations`` (forms)."""
    model = gen.model or fields.get("model") or "dall-e-2"
    if not isinstance(model, str):
        raise ApiError(400, "model must be a string", param="model")
    if needs_image and image_bytes == 0:
        raise ApiError(400, "you must provide an image parameter", param="image")
    raw_n = fields.get("n", 1)
    try:
        n = int(raw_n)
    except (TypeError, ValueError):
        raise ApiError(400, "n must be an integer", param="n") from None
    if isinstance(raw_n, bool) or not 1 <= n <= 10:
        raise ApiError(400, "n must be between 1 and 10", param="n")
    gpt_image = model.startswith("gpt-image")
    b64 = gpt_image or fields.get("response_format") == "b64_json"
    data = [
        {"b64_json": _PNG} if b64 else {"url": f"https://fake.invalid/images/{new_id('img_')}.png"}
        for _ in range(n)
    ]
    out: dict[str, Any] = {"created": int(time.time()), "data": data}
    if gpt_image:
        prompt = fields.get("prompt")
        text_tokens = count_tokens(prompt) if isinstance(prompt, str) else 0
        image_tokens = image_bytes // 100
        output = 100 * n
        out["usage"] = {
            "input_tokens": text_tokens + image_tokens,
            "input_tokens_details": {"text_tokens": text_tokens, "image_tokens": image_tokens},
            "output_tokens": output,
            "total_tokens": text_tokens + image_tokens + output,
        }
    return out
