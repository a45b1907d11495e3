"""Vertex AI's routes as the fake serves them, and what each answers.

``/{v}/projects/{p}/locations/{l}/publishers/{publisher}/models/{m}:{method}``, ``{v}`` being
``v1`` or ``v1beta1``: Gemini under publisher ``google``, Claude under ``anthropic``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from asgi_llmguard.testing import _anthropic
from asgi_llmguard.testing import _vertex_gemini as gemini
from asgi_llmguard.testing._common import ApiError, Generation, StreamPlan
from asgi_llmguard.testing._knobs import Knobs

Family = Literal["google", "anthropic", "token", "none"]

_VERSIONS = frozenset({"v1", "v1beta1"})
_GEMINI_METHODS = frozenset({"generateContent", "streamGenerateContent", "countTokens"})
_CLAUDE_METHODS = frozenset({"rawPredict", "streamRawPredict"})


@dataclasses.dataclass(frozen=True)
class Call:
    """One request's endpoint: its family and the parts of its path."""

    family: Family
    project: str = ""
    location: str = ""
    model: str = ""
    method: str = ""


def parse(path: str) -> Call:
    """``/{v}/projects/{p}/locations/{l}/publishers/{pub}/models/{m}:{method}``."""
    if path == "/token":
        return Call("token")
    parts = path.split("/")
    if (
        len(parts) != 10
        or parts[0]
        or parts[1] not in _VERSIONS
        or parts[2] != "projects"
        or parts[4] != "locations"
        or parts[6] != "publishers"
        or parts[8] != "models"
        or parts[9].count(":") != 1
    ):
        return Call("none")
    publisher, (model, method) = parts[7], parts[9].split(":")
    if not (parts[3] and parts[5] and model):
        return Call("none")
    if publisher == "google" and method in _GEMINI_METHODS:
        return Call("google", parts[3], parts[5], model, method)
    if publisher == "anthropic" and method in _CLAUDE_METHODS:
        return Call("anthropic", parts[3], parts[5], model, method)
    return Call("none")


def dispatch(
    call: Call, body: dict[str, Any], knobs: Knobs, tool_use: int, sse: bool
) -> dict[str, Any] | StreamPlan:
    """The answer to a model call: a JSON object, or the events of a stream.

    Claude calls need ``anthropic_version`` in the body (any value: Google documents
    ``vertex-2023-10-16``, the SDKs may send their own); a body's ``stream`` must agree with the
    method (``true`` only on ``:streamRawPredict``), and the model is the path's.
    """
    if call.family == "google":
        if call.method == "countTokens":
            return gemini.count(body)
        usage = gemini.Usage(knobs.cached_tokens, knobs.reasoning_tokens, tool_use)
        stream = None
        if call.method == "streamGenerateContent":
            stream = "sse" if sse else "json"
        return gemini.generate(
            call.model, body, reply=knobs.reply, chunks=knobs.chunks, usage=usage, stream=stream
        )
    if body.get("anthropic_version") is None:
        raise ApiError(400, "anthropic_version: Field required")
    if call.model == "count-tokens":
        return _anthropic.count_tokens(body)
    streaming = call.method == "streamRawPredict"
    if body.get("stream") is not None and bool(body.get("stream")) != streaming:
        method = "streamRawPredict" if body.get("stream") else "rawPredict"
        raise ApiError(400, f"stream: {body.get('stream')} needs :{method}")
    generation = Generation(
        reply=knobs.reply,
        chunks=knobs.chunks,
        model=call.model,
        cache_write_5m=knobs.cache_write_5m,
        cache_write_1h=knobs.cache_write_1h,
        service_tier=knobs.service_tier,
    )
    return _anthropic.messages({**body, "stream": streaming}, generation)
