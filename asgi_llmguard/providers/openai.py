"""OpenAI and OpenAI-compatible servers (vLLM, DeepInfra, any custom base URL).

The gateway's OpenAI routes are ``/v1/<operation>``; the upstream's base URL already ends in its
version prefix (``https://api.openai.com/v1``, ``https://api.deepinfra.com/v1/openai``), so the
route's ``/v1`` is replaced by the base URL.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from asgi_llmguard.context import RequestContext
from asgi_llmguard.providers import include_usage, openai_usage, resets, sse
from asgi_llmguard.providers.base import (
    ResetParser,
    StaticCredential,
    StreamMeter,
    StrHeaders,
    Upstream,
    join,
)
from asgi_llmguard.providers.thinking import Thinking
from asgi_llmguard.routes import Api, Endpoint


def openai_stream_meter(endpoint: Endpoint) -> StreamMeter | None:
    """The meter of an OpenAI-shaped stream (OpenAI's routes and Azure's)."""
    operation = endpoint.operation
    if operation in ("chat.completions", "completions"):
        return openai_usage.ChatStreamMeter()
    if operation == "responses":
        return openai_usage.ResponsesStreamMeter()
    if operation == "audio.transcriptions":
        return openai_usage.TranscriptionStreamMeter()
    return None


def chat_warmup(model: str, max_tokens: int, prompt: str) -> tuple[str, bytes]:
    """A one-message chat completion: the warm-up of every OpenAI-shaped upstream."""
    document = {
        "model": model,
        "max_completion_tokens": max_tokens,
        "messages": [{"role": "user", "content": prompt}],
    }
    return "/v1/chat/completions", orjson.dumps(document)


class OpenAIProvider(StaticCredential):
    name = "openai"
    serves: frozenset[Api] = frozenset({"openai"})
    owns: frozenset[Api] = frozenset({"openai"})
    key_env: tuple[str, ...] = ("OPENAI_API_KEY",)
    default_url = "https://api.openai.com/v1"

    def static_headers(self, upstream: Upstream) -> StrHeaders:
        headers = list(upstream.headers.items())
        if upstream.api_key:
            headers.append(("Authorization", f"Bearer {upstream.api_key}"))
        return headers

    def default_headers(self, upstream: Upstream) -> StrHeaders:
        return []

    def target(self, upstream: Upstream, ctx: RequestContext, query: bytes) -> str:
        path = ctx.path
        if path.startswith("/v1/"):
            path = path[3:]
        return join(upstream.base_url, path, query)

    stream_meter = staticmethod(openai_stream_meter)
    usage_from_json = staticmethod(openai_usage.usage_from_json)

    def warmup(self, api: Api, model: str, max_tokens: int, prompt: str) -> tuple[str, bytes]:
        return chat_warmup(model, max_tokens, prompt)

    reset_headers: Mapping[bytes, ResetParser] = {
        b"x-ratelimit-reset-requests": resets.seconds_or_duration,
        b"x-ratelimit-reset-tokens": resets.seconds_or_duration,
    }

    def apply_thinking(
        self, operation: str, body: dict[str, Any], thinking: Thinking, model: str
    ) -> None:
        openai_thinking(operation, body, thinking)

    ask_stream_usage = staticmethod(include_usage.ask_stream_usage)
    strip_stream_usage = staticmethod(include_usage.strip_usage)
    first_event = staticmethod(sse.first_sse_event)

    def warmup_operation(self, api: Api) -> str:
        return "chat.completions"


def openai_thinking(operation: str, body: dict[str, Any], thinking: Thinking) -> None:
    """A thinking suffix on the OpenAI-shaped wire (OpenAI's routes and Azure's).

    - ``chat.completions``: ``reasoning_effort`` (see `Thinking.openai_effort`); ``(auto)``
      removes it.
    - ``responses``: ``reasoning.effort``, keeping other ``reasoning`` members (``summary``);
      ``(auto)`` removes ``effort``, and ``reasoning`` if nothing else is left.
    - Any other operation (legacy ``completions``, embeddings, ...) has no reasoning parameter.
    """
    if operation == "chat.completions":
        effort = thinking.openai_effort
        if effort is None:
            body.pop("reasoning_effort", None)
        else:
            body["reasoning_effort"] = effort
    elif operation == "responses":
        reasoning = body.get("reasoning")
        reasoning = dict(reasoning) if isinstance(reasoning, Mapping) else {}
        effort = thinking.openai_effort
        if effort is None:
            reasoning.pop("effort", None)
        else:
            reasoning["effort"] = effort
        if reasoning:
            body["reasoning"] = reasoning
        else:
            body.pop("reasoning", None)


PROVIDER = OpenAIProvider()
