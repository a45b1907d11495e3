"""Gemini's wire format on Vertex AI: generateContent (plain, SSE and streamed JSON array),
countTokens and Google's error shape, as documented for ``projects.locations.publishers.models``.

A ``GenerateContentResponse`` is ``{"candidates": [{"content": {"role": "model", "parts":
[{"text"}]}, "finishReason"}], "usageMetadata", "modelVersion", "createTime", "responseId"}``.
``usageMetadata`` holds ``promptTokenCount``, ``candidatesTokenCount`` and ``totalTokenCount``,
plus ``cachedContentTokenCount`` (part of the prompt), ``thoughtsTokenCount`` and
``toolUsePromptTokenCount`` when not zero (proto3 JSON leaves zeros out); the total adds the
thoughts and tool-use prompt tokens to the prompt and candidates.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson

from asgi_llmguard.testing._common import (
    ApiError,
    Completion,
    StreamPlan,
    complete,
    count_tokens,
    new_id,
)

# google.rpc.Code names by HTTP status, as Google's JSON errors carry them.
STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "INVALID_ARGUMENT",
    409: "ABORTED",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"


def error_body(status: int, message: str, *, retry_delay: float | None = None) -> dict[str, Any]:
    """``{"error": {"code", "message", "status"}}``; with ``retry_delay``, a RetryInfo detail."""
    fallback = "FAILED_PRECONDITION" if status < 500 else "UNKNOWN"
    error: dict[str, Any] = {
        "code": status,
        "message": message,
        "status": STATUS_NAMES.get(status, fallback),
    }
    if retry_delay is not None:
        delay = f"{int(retry_delay)}s" if retry_delay == int(retry_delay) else f"{retry_delay}s"
        error["details"] = [{"@type": RETRY_INFO, "retryDelay": delay}]
    return {"error": error}


@dataclass(frozen=True)
class Usage:
    """The extra counts a generation reports (knobs), on top of prompt and candidates."""

    cached: int = 0
    thoughts: int = 0
    tool_use_prompt: int = 0


def _field(body: dict[str, Any], camel: str, snake: str) -> Any:
    return body.get(camel, body.get(snake))


def _words_in_parts(content: Any) -> int:
    if not isinstance(content, dict):
        return 0
    parts = content.get("parts")
    if not isinstance(parts, list):
        return 0
    return sum(
        count_tokens(part["text"])
        for part in parts
        if isinstance(part, dict) and isinstance(part.get("text"), str)
    )


def prompt_words(body: dict[str, Any]) -> int:
    """Words in every ``contents[].parts[].text`` and in ``systemInstruction``."""
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise ApiError(400, "Unable to submit request because it has an empty contents field.")
    words = sum(_words_in_parts(content) for content in contents)
    return words + _words_in_parts(_field(body, "systemInstruction", "system_instruction"))


def _max_output_tokens(body: dict[str, Any]) -> int | None:
    config = _field(body, "generationConfig", "generation_config")
    if config is None:
        return None
    if not isinstance(config, dict):
        raise ApiError(400, "Invalid value at 'generation_config': expected an object")
    limit = _field(config, "maxOutputTokens", "max_output_tokens")
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ApiError(400, "Invalid value at 'generation_config.max_output_tokens'")
    return limit


def usage_metadata(c: Completion, usage: Usage) -> dict[str, Any]:
    cached = min(usage.cached, c.prompt_tokens)
    meta: dict[str, Any] = {
        "promptTokenCount": c.prompt_tokens,
        "candidatesTokenCount": c.completion_tokens,
        "totalTokenCount": (
            c.prompt_tokens + c.completion_tokens + usage.thoughts + usage.tool_use_prompt
        ),
    }
    if cached:
        meta["cachedContentTokenCount"] = cached
    if usage.thoughts:
        meta["thoughtsTokenCount"] = usage.thoughts
    if usage.tool_use_prompt:
        meta["toolUsePromptTokenCount"] = usage.tool_use_prompt
    meta["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": c.prompt_tokens}]
    if c.completion_tokens:
        meta["candidatesTokensDetails"] = [{"modality": "TEXT", "tokenCount": c.completion_tokens}]
    meta["trafficType"] = "ON_DEMAND"
    return meta


def _response(
    c: Completion,
    text: str,
    *,
    finish: str | None,
    usage: dict[str, Any] | None,
    response_id: str,
    created: str,
) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": [{"text": text}]}}
    if finish is not None:
        candidate["finishReason"] = finish
    answer: dict[str, Any] = {"candidates": [candidate]}
    if usage is not None:
        answer["usageMetadata"] = usage
    answer["modelVersion"] = c.model
    answer["createTime"] = created
    answer["responseId"] = response_id
    return answer


def generate(
    model: str,
    body: dict[str, Any],
    *,
    reply: str,
    chunks: int | None,
    usage: Usage,
    stream: str | None,
) -> dict[str, Any] | StreamPlan:
    """``:generateContent`` (``stream`` None), or ``:streamGenerateContent`` as ``"sse"`` events
    or as a ``"json"`` array of responses.

    Streamed, each content chunk is a response with one word and the running counts
    (``promptTokenCount``, ``candidatesTokenCount`` so far, their ``totalTokenCount``), as
    Gemini streams them; the last response carries an empty text part, ``finishReason`` and the
    final ``usageMetadata``. A meter keeps the last counts it saw, never their sum.
    """
    c = complete(
        model,
        reply,
        chunks=chunks,
        max_tokens=_max_output_tokens(body),
        prompt_words=prompt_words(body),
    )
    finish = "MAX_TOKENS" if c.capped else "STOP"
    meta = usage_metadata(c, usage)
    response_id = new_id("")
    created = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())

    def answer(text: str, sent: int | None) -> dict[str, Any]:
        """A response with ``text``; ``sent``: the words streamed so far (None: the last)."""
        usage = meta
        if sent is not None:
            usage = {
                "promptTokenCount": c.prompt_tokens,
                "candidatesTokenCount": sent,
                "totalTokenCount": c.prompt_tokens + sent,
                "trafficType": "ON_DEMAND",
            }
        return _response(
            c,
            text,
            finish=finish if sent is None else None,
            usage=usage,
            response_id=response_id,
            created=created,
        )

    if stream is None:
        return answer(c.text, None)
    pieces = [answer(piece, i) for i, piece in enumerate(c.pieces, start=1)]
    if stream == "sse":
        return StreamPlan(
            content=[_sse(piece) for piece in pieces],
            tail=[_sse(answer("", None))],
        )
    # The JSON array Google streams: pretty-printed elements, ",\r\n" between them.
    elements = [_pretty(piece) for piece in pieces]
    last = _pretty(answer("", None))
    return StreamPlan(
        head=[b"["],
        content=[e if i == 0 else b",\r\n" + e for i, e in enumerate(elements)],
        tail=[last if not elements else b",\r\n" + last, b"]"],
    )


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\r\n\r\n"


def _pretty(obj: dict[str, Any]) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_INDENT_2) + b"\n"


def count(body: dict[str, Any]) -> dict[str, Any]:
    """``:countTokens``: the ``promptTokenCount`` the same request would report."""
    tokens = max(1, prompt_words(body))
    characters = sum(
        len(part["text"].replace(" ", ""))
        for content in [
            *(body.get("contents") or []),
            _field(body, "systemInstruction", "system_instruction"),
        ]
        if isinstance(content, dict) and isinstance(content.get("parts"), list)
        for part in content["parts"]
        if isinstance(part, dict) and isinstance(part.get("text"), str)
    )
    return {
        "totalTokens": tokens,
        "totalBillableCharacters": characters,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": tokens}],
    }
