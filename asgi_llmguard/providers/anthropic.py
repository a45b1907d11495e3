"""Anthropic's Messages API: ``x-api-key`` and ``anthropic-version`` headers.

The base URL is the API's root (``https://api.anthropic.com``) as the Anthropic SDK takes it, and
the route path (``/v1/messages``) is appended unchanged.
"""

from __future__ import annotations

import orjson

from asgi_llmguard.context import RequestContext
from asgi_llmguard.providers import anthropic_usage
from asgi_llmguard.providers.base import StaticCredential, StreamMeter, StrHeaders, Upstream, join
from asgi_llmguard.routes import Api, Endpoint

DEFAULT_VERSION = "2023-06-01"


class AnthropicProvider(StaticCredential):
    name = "anthropic"
    serves: frozenset[Api] = frozenset({"anthropic"})
    owns: frozenset[Api] = frozenset({"anthropic"})
    key_env = ("ANTHROPIC_API_KEY",)
    default_url = "https://api.anthropic.com"

    def static_headers(self, upstream: Upstream) -> StrHeaders:
        headers = list(upstream.headers.items())
        if upstream.api_key:
            headers.append(("x-api-key", upstream.api_key))
        return headers

    def default_headers(self, upstream: Upstream) -> StrHeaders:
        return [("anthropic-version", upstream.api_version or DEFAULT_VERSION)]

    def target(self, upstream: Upstream, ctx: RequestContext, query: bytes) -> str:
        return join(upstream.base_url, ctx.path, query)

    def stream_meter(self, endpoint: Endpoint) -> StreamMeter | None:
        if endpoint.operation == "messages":
            return anthropic_usage.MessagesStreamMeter()
        return None

    usage_from_json = staticmethod(anthropic_usage.usage_from_json)

    def warmup(self, api: Api, model: str, max_tokens: int, prompt: str) -> tuple[str, bytes]:
        document = {
            "model": model,
            "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": prompt}],
        }
        return "/v1/messages", orjson.dumps(document)


PROVIDER = AnthropicProvider()
