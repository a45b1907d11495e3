"""OpenAI and OpenAI-compatible servers (vLLM, DeepInfra, any custom base URL).

The gateway's OpenAI routes are ``/v1/<operation>``; the upstream's base URL already ends in its
version prefix (``https://api.openai.com/v1``, ``https://api.deepinfra.com/v1/openai``), so the
route's ``/v1`` is replaced by the base URL.
"""

from __future__ import annotations

import orjson

from asgi_llmguard.context import RequestContext
from asgi_llmguard.providers import openai_usage
from asgi_llmguard.providers.base import StaticCredential, StreamMeter, StrHeaders, Upstream, join
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
    key_env = ("OPENAI_API_KEY",)
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


PROVIDER = OpenAIProvider()
