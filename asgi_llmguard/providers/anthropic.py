"""Anthropic's Messages API: ``x-api-key`` and ``anthropic-version`` headers.

The base URL is the API's root (``https://api.anthropic.com``) as the Anthropic SDK takes it, and
the route path (``/v1/messages``) is appended unchanged.
"""

from __future__ import annotations

from asgi_llmguard.context import RequestContext
from asgi_llmguard.providers.base import StrHeaders, Upstream, join
from asgi_llmguard.routes import Api

DEFAULT_VERSION = "2023-06-01"


class AnthropicProvider:
    serves: frozenset[Api] = frozenset({"anthropic"})

    def static_headers(self, upstream: Upstream) -> StrHeaders:
        headers = list(upstream.headers.items())
        if upstream.api_key:
            headers.append(("x-api-key", upstream.api_key))
        return headers

    def default_headers(self, upstream: Upstream) -> StrHeaders:
        return [("anthropic-version", upstream.api_version or DEFAULT_VERSION)]

    def target(self, upstream: Upstream, ctx: RequestContext, query: bytes) -> str:
        return join(upstream.base_url, ctx.path, query)


PROVIDER = AnthropicProvider()
