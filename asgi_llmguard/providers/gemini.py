"""The Gemini API (Google AI Studio): ``models/{model}:{method}`` paths and ``x-goog-api-key``.

The base URL is the API's root (``https://generativelanguage.googleapis.com``) as the
``google-genai`` SDK takes it (``http_options.base_url``); the route path (``/v1beta/models/
gemini-2.5-flash:generateContent``) is appended, its model replaced by the one routing chose
(an alias resolved). The upstream key goes in ``x-goog-api-key``; a caller's key sent in the
``key`` query parameter was taken out of the URL before any layer saw it (`take_query_key`).
"""

from __future__ import annotations

import re
from urllib.parse import quote

import orjson

from asgi_llmguard.context import RequestContext
from asgi_llmguard.providers import gemini_usage
from asgi_llmguard.providers.base import StaticCredential, StreamMeter, StrHeaders, Upstream, join
from asgi_llmguard.routes import Api, Endpoint

#: ``google.rpc.RetryInfo``'s ``retryDelay`` in a 429's ``error.details``: ``"30s"``, ``"1.5s"``.
_RETRY_DELAY = re.compile(rb'"retryDelay"\s*:\s*"(\d{1,6}(?:\.\d{1,9})?)s"')


class GeminiProvider(StaticCredential):
    name = "gemini"
    serves: frozenset[Api] = frozenset({"gemini"})
    owns: frozenset[Api] = frozenset({"gemini"})
    key_env = ("GEMINI_API_KEY", "GOOGLE_API_KEY")
    default_url = "https://generativelanguage.googleapis.com"
    hints_in_body = True

    def static_headers(self, upstream: Upstream) -> StrHeaders:
        headers = list(upstream.headers.items())
        if upstream.api_key:
            headers.append(("x-goog-api-key", upstream.api_key))
        return headers

    def default_headers(self, upstream: Upstream) -> StrHeaders:
        return []

    def target(self, upstream: Upstream, ctx: RequestContext, query: bytes) -> str:
        path = ctx.path
        route = ctx.route
        upstream_model = ctx.upstream_model
        if upstream_model is not None and route is not None and route.model is not None:
            version, _, rest = path[1:].partition("/models/")
            method = rest[len(route.model) :]  # ":generateContent", or "" for a model get
            path = f"/{version}/models/{quote(upstream_model, safe='')}{method}"
        return join(upstream.base_url, path, query)

    def stream_meter(self, endpoint: Endpoint) -> StreamMeter | None:
        if endpoint.operation == "streamGenerateContent":
            return gemini_usage.GenerateStreamMeter()
        return None

    usage_from_json = staticmethod(gemini_usage.usage_from_json)

    def warmup(self, api: Api, model: str, max_tokens: int, prompt: str) -> tuple[str, bytes]:
        document = {
            "contents": [{"role": "user", "parts": [{"text": prompt}]}],
            "generationConfig": {"maxOutputTokens": max_tokens},
        }
        return f"/v1beta/models/{quote(model, safe='')}:generateContent", orjson.dumps(document)

    def retry_hint(self, body: bytes) -> float | None:
        """Seconds a 429's ``RetryInfo`` asks to wait, or ``None``."""
        match = _RETRY_DELAY.search(body)
        return float(match.group(1)) if match else None


PROVIDER = GeminiProvider()
