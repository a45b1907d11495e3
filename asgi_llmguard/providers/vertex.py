"""Vertex AI: Gemini models under a Google Cloud project, a Google OAuth token per request.

The base URL is a Vertex AI endpoint's root: ``https://us-east5-aiplatform.googleapis.com``
(a region) or ``https://aiplatform.googleapis.com`` (location ``global``). The caller's path,
``/v1beta1/projects/{project}/locations/{location}/publishers/google/models/{model}:{method}``, is
forwarded as it is (project and location included; only the model is replaced by the one routing
chose), so the caller names the project and location its credential may use.

The upstream credential is a Google access token from a `GoogleTokenSource` (a service-account
key file, ``credentials_file``, or the application default credentials), set per request by
`sign` as ``Authorization: Bearer``; the source is started with the gateway and refreshes its
token in the background before it expires. The answers are the Gemini API's: its meters, its
error shape and its ``RetryInfo`` cooldowns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

import orjson

from asgi_llmguard.context import RequestContext, RequestFields
from asgi_llmguard.providers import anthropic_usage, gemini_usage
from asgi_llmguard.providers.anthropic import anthropic_thinking
from asgi_llmguard.providers.base import ResetParser, StreamMeter, StrHeaders, Upstream, join
from asgi_llmguard.providers.gemini import GENERATE_OPERATIONS, gemini_thinking, google_first_event
from asgi_llmguard.providers.gemini import PROVIDER as GEMINI
from asgi_llmguard.providers.google_auth import GoogleCredentialsError, GoogleTokenSource
from asgi_llmguard.providers.thinking import Thinking
from asgi_llmguard.routes import Api, Endpoint
from asgi_llmguard.tokens import TokenUsage


class VertexProvider:
    name = "vertex"
    serves: frozenset[Api] = frozenset({"vertex", "vertex_anthropic"})
    owns: frozenset[Api] = frozenset({"vertex", "vertex_anthropic"})
    key_env: tuple[str, ...] = ()
    default_url = "https://aiplatform.googleapis.com"
    signs = True
    hints_in_body = True

    def __init__(self) -> None:
        #: The token source of each configured upstream (the object: a gateway built again, or a
        #: second gateway in the process, has its own), shared by all its requests.
        self._sources: dict[int, tuple[Upstream, GoogleTokenSource]] = {}

    def token_source(self, upstream: Upstream) -> _OwnedSource:
        """A new token source for ``upstream``'s credential, used by its requests until it is
        closed (the forwarder starts and closes it with itself: see `Target.resource`)."""
        if upstream.credentials_file:
            source = GoogleTokenSource.from_service_account_file(
                upstream.credentials_file, name=upstream.credential_id
            )
        else:
            source = GoogleTokenSource.application_default(name=upstream.credential_id)
        # The upstream is kept with its source, so its id is not reused while registered.
        self._sources[id(upstream)] = (upstream, source)
        return _OwnedSource(self._sources, upstream, source)

    def static_headers(self, upstream: Upstream) -> StrHeaders:
        return list(upstream.headers.items())

    def default_headers(self, upstream: Upstream) -> StrHeaders:
        return []

    def target(self, upstream: Upstream, ctx: RequestContext, query: bytes) -> str:
        path = ctx.path
        route = ctx.route
        upstream_model = ctx.upstream_model
        if upstream_model is not None and route is not None and route.model is not None:
            head, _, rest = path.rpartition("/models/")
            method = rest[len(route.model) :]  # ":generateContent"
            path = f"{head}/models/{quote(upstream_model, safe='')}{method}"
        return join(upstream.base_url, path, query)

    def sign(
        self, upstream: Upstream, method: str, url: str, headers: StrHeaders, body: bytes
    ) -> str:
        """``Authorization: Bearer <token>``; raises `GoogleCredentialsError` when the credential
        has no valid token (the forwarder answers 503 or 502: nothing was sent)."""
        entry = self._sources.get(id(upstream))
        token = entry[1].token() if entry is not None else None
        if token is None:
            raise GoogleCredentialsError(
                f"Google credential {upstream.credential_id}: no valid access token",
                retryable=True,
            )
        headers.append(("authorization", f"Bearer {token}"))
        return url

    def stream_meter(self, endpoint: Endpoint) -> StreamMeter | None:
        if endpoint.operation == "streamGenerateContent":
            return gemini_usage.GenerateStreamMeter()
        if endpoint.operation == "streamRawPredict":
            return anthropic_usage.MessagesStreamMeter()
        return None

    def usage_from_json(self, body: bytes) -> tuple[TokenUsage | None, str | None, dict[str, int]]:
        """Gemini's ``usageMetadata``, or a Claude message's ``usage`` (the readers are by API
        and both APIs are Vertex's: the answer's shape tells which it is)."""
        if b'"usageMetadata"' in body:
            return gemini_usage.usage_from_json(body)
        return anthropic_usage.usage_from_json(body)

    def warmup(self, api: Api, model: str, max_tokens: int, prompt: str) -> tuple[str, bytes]:
        document = {
            "contents": [{"role": "user", "parts": [{"text": prompt}]}],
            "generationConfig": {"maxOutputTokens": max_tokens},
        }
        # Vertex paths name a project and location the gateway does not know: the
        # caller's path is forwarded as it is.
        return f"/v1/models/{quote(model, safe='')}:generateContent", orjson.dumps(document)

    def retry_hint(self, body: bytes) -> float | None:
        return GEMINI.retry_hint(body)

    reset_headers: Mapping[bytes, ResetParser] = {}  # a 429's wait is in its body (`retry_hint`)

    def apply_thinking(
        self, operation: str, body: dict[str, Any], thinking: Thinking, model: str
    ) -> None:
        """Gemini's ``thinkingConfig`` on a Gemini model; Claude's ``thinking`` on a Claude
        model (``rawPredict``: the Messages API's body)."""
        if operation in GENERATE_OPERATIONS:
            gemini_thinking(body, thinking, model)
        elif operation in ("rawPredict", "streamRawPredict"):
            anthropic_thinking(body, thinking, counting=False)

    def ask_stream_usage(
        self, endpoint: Endpoint, fields: RequestFields, body: bytes
    ) -> bytes | None:
        return None  # Gemini's chunks and Claude's events carry their usage unasked

    @staticmethod
    def strip_stream_usage(data: bytes) -> bytes:
        return data

    first_event = staticmethod(google_first_event)  # Claude's error events read as Anthropic's

    def warmup_operation(self, api: Api) -> str:
        return "generateContent"

    def pool_models(self, upstream: Upstream, api: Api, native: bool) -> Sequence[str] | None:
        return None


class _OwnedSource:
    """A registered token source: started with the forwarder, unregistered when closed."""

    __slots__ = ("_registry", "_source", "_upstream")

    def __init__(
        self,
        registry: dict[int, tuple[Upstream, GoogleTokenSource]],
        upstream: Upstream,
        source: GoogleTokenSource,
    ) -> None:
        self._registry = registry
        self._upstream = upstream
        self._source = source

    async def start(self) -> None:
        await self._source.start()

    async def aclose(self) -> None:
        entry = self._registry.get(id(self._upstream))
        if entry is not None and entry[1] is self._source:
            del self._registry[id(self._upstream)]
        await self._source.aclose()

    def __repr__(self) -> str:
        return repr(self._source)


PROVIDER = VertexProvider()
