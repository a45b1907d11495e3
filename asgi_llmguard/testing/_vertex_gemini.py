"""Gemini's wire format on Vertex AI: generateContent (plain, SSE and streamed JSON array),
countTokens and Google's error shape, as documented for ``projects.locations.publishers.models``.

A ``GenerateContentResponse`` is ``{"candidates": [{"content": {"role": "model", "parts":
[{"text"}]}, "finishReason", "index"}], "usageMetadata", "modelVersion", "createTime",
"responseId"}``.
``usageMetadata`` holds ``promptTokenCount``, ``candidatesTokenCount`` and ``totalTokenCount``,
plus ``cachedContentTokenCount`` (part of the prompt), ``thoughtsTokenCount`` and
``toolUsePromptTokenCount`` when not zero (proto3 JSON leaves zeros out); the total adds the
thoughts and tool-use prompt tokens to the prompt and candidates.

The request reading, the error shape and the response itself are the Gemini API's (`_gemini`);
what is Vertex's own is here: its usage counts, ``createTime``, the stream's pieces and
``countTokens``'s billable characters.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson

from asgi_llmguard.testing import _gemini
from asgi_llmguard.testing._common import Completion, StreamPlan, complete, new_id
from asgi_llmguard.testing._gemini import error_body as error_body


@dataclass(frozen=True)
class Usage:
    """The extra counts a generation reports (knobs), on top of prompt and candidates."""

    cached: int = 0
    thoughts: int = 0
    tool_use_prompt: int = 0


_NO_CONTENTS = "Unable to submit request because it has an empty contents field."


def prompt_words(body: dict[str, Any]) -> int:
    """Words in every ``contents[].parts[].text`` and in ``systemInstruction``."""
    return _gemini.prompt_words(body, empty=_NO_CONTENTS)


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
        max_tokens=_gemini.max_output_tokens(body),
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
        return _gemini.response(
            c.model,
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
            _gemini.field(body, "systemInstruction", "system_instruction"),
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
