"""OpenAI and OpenAI-compatible servers (vLLM, DeepInfra, any custom base URL).

The gateway's OpenAI routes are ``/v1/<operation>``; the upstream's base URL already ends in its
version prefix (``https://api.openai.com/v1``, ``https://api.deepinfra.com/v1/openai``), so the
route's ``/v1`` is replaced by the base URL.
"""

from __future__ import annotations

from asgi_llmguard.context import RequestContext
from asgi_llmguard.providers.base import StrHeaders, Upstream, join
from asgi_llmguard.routes import Api


class OpenAIProvider:
    serves: frozenset[Api] = frozenset({"openai"})

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


PROVIDER = OpenAIProvider()
