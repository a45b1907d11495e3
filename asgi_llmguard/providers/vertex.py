"""Vertex AI: Gemini and Claude models under a Google Cloud project, a Google OAuth token per
request.

The base URL is a Vertex AI endpoint's root: ``https://us-east5-aiplatform.googleapis.com``
(a region) or ``https://aiplatform.googleapis.com`` (location ``global``). The caller's path,
``/v1beta1/projects/{project}/locations/{location}/publishers/google/models/{model}:{method}``, is
forwarded with the model routing chose and, when the upstream names them (``Upstream.project``,
``Upstream.location``), with the upstream's own project and location in place of the caller's:
callers such as Claude Code put their own project in the path, and each credential of a pool may
belong to another project or region. An upstream that names a project and no location uses its
base URL's (``us-east5``, or ``global``).

The upstream credential is a Google access token from a `GoogleTokenSource` (a service-account
key file, ``credentials_file``, or the application default credentials), set per request by
`sign` as ``Authorization: Bearer``; the source is started with the gateway and refreshes its
token in the background before it expires. The answers are the Gemini API's (its meters, its
error shape and its ``RetryInfo`` cooldowns) or, under ``publishers/anthropic``, Claude's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import orjson

from asgi_llmguard.context import RequestContext, RequestFields
from asgi_llmguard.errors import ConfigurationError
from asgi_llmguard.providers import anthropic_usage, gemini_usage
from asgi_llmguard.providers.anthropic import anthropic_thinking
from asgi_llmguard.providers.base import ResetParser, StreamMeter, StrHeaders, Upstream, join
from asgi_llmguard.providers.gemini import GENERATE_OPERATIONS, gemini_thinking, google_first_event
from asgi_llmguard.providers.gemini import PROVIDER as GEMINI
from asgi_llmguard.providers.google_auth import GoogleCredentialsError, GoogleTokenSource
from asgi_llmguard.providers.thinking import Thinking
from asgi_llmguard.routes import Api, Endpoint
from asgi_llmguard.tokens import TokenUsage

#: The ``anthropic_version`` Google documents for Claude on Vertex AI.
ANTHROPIC_VERSION = "vertex-2023-10-16"
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}")
_REGIONAL_HOST = re.compile(r"([a-z0-9][a-z0-9-]*)-aiplatform\.googleapis\.com")
_GLOBAL_HOST = "aiplatform.googleapis.com"


@dataclass(frozen=True, slots=True)
class _Place:
    """Where an upstream's requests go: its project and location (``None``: the caller's), and
    the location its base URL names, if it names one."""

    project: str | None
    location: str | None
    host_location: str | None

    @classmethod
    def of(cls, upstream: Upstream) -> _Place:
        host = (urlsplit(upstream.base_url).hostname or "").lower()
        regional = _REGIONAL_HOST.fullmatch(host)
        host_location = regional[1] if regional else ("global" if host == _GLOBAL_HOST else None)
        where = f"Vertex AI upstream {upstream.credential_id}"
        for label, value in (("project", upstream.project), ("location", upstream.location)):
            if value is not None and not _SEGMENT.fullmatch(value):
                raise ConfigurationError(
                    f"{where}: {label} {value!r} is not a Google Cloud {label} id"
                )
        location = upstream.location
        if location is not None and regional is not None and location != host_location:
            raise ConfigurationError(
                f"{where}: location {location!r} is not the region of its base URL "
                f"({host}); use https://{location}-aiplatform.googleapis.com, or "
                "https://aiplatform.googleapis.com for location 'global'"
            )
        if location is None and upstream.project is not None:
            location = host_location
        return cls(upstream.project, location, host_location)

    def relocate(self, path: str) -> str:
        """``path`` (``/{v}/projects/{p}/locations/{l}/...``, as the routes match it) with this
        place's project and location."""
        parts = path.split("/", 6)
        if len(parts) < 7:
            return path
        if self.project is not None:
            parts[3] = self.project
        if self.location is not None:
            parts[5] = self.location
        return "/".join(parts)


@dataclass(frozen=True, slots=True)
class _Entry:
    upstream: Upstream
    source: GoogleTokenSource
    place: _Place


class VertexProvider:
    name = "vertex"
    serves: frozenset[Api] = frozenset({"vertex", "vertex_anthropic"})
    owns: frozenset[Api] = frozenset({"vertex", "vertex_anthropic"})
    key_env: tuple[str, ...] = ()
    default_url = "https://aiplatform.googleapis.com"
    signs = True
    hints_in_body = True

    def __init__(self) -> None:
        #: The token source and place of each configured upstream (the object: a gateway built
        #: again, or a second gateway in the process, has its own), shared by all its requests.
        self._sources: dict[int, _Entry] = {}

    def token_source(self, upstream: Upstream) -> _OwnedSource:
        """A new token source for ``upstream``'s credential, used by its requests until it is
        closed (the forwarder starts and closes it with itself: see `Target.resource`)."""
        place = _Place.of(upstream)  # a ConfigurationError before any credential is read
        if upstream.credentials_file:
            source = GoogleTokenSource.from_service_account_file(
                upstream.credentials_file, name=upstream.credential_id
            )
        else:
            source = GoogleTokenSource.application_default(name=upstream.credential_id)
        # The upstream is kept with its source, so its id is not reused while registered.
        self._sources[id(upstream)] = _Entry(upstream, source, place)
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
        entry = self._sources.get(id(upstream))
        if entry is not None and (entry.place.project or entry.place.location):
            path = entry.place.relocate(path)
        return join(upstream.base_url, path, query)

    def sign(
        self, upstream: Upstream, method: str, url: str, headers: StrHeaders, body: bytes
    ) -> str:
        """``Authorization: Bearer <token>``; raises `GoogleCredentialsError` when the credential
        has no valid token (nothing is sent: the forwarder tries another credential or answers
        503, with ``Retry-After`` when the failure is temporary)."""
        entry = self._sources.get(id(upstream))
        if entry is None:
            raise GoogleCredentialsError(
                f"Google credential {upstream.credential_id}: not started", retryable=True
            )
        source = entry.source
        token = source.token()
        if token is None:
            raise source.unavailable()
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
        """The warm-up request, in project ``-`` and location ``global``: `warmup_for` puts the
        upstream's own in (the forwarder asks it)."""
        return _warmup(api, model, max_tokens, prompt, "-", "global")

    def warmup_for(
        self, upstream: Upstream, api: Api, model: str, max_tokens: int, prompt: str
    ) -> tuple[str, bytes] | None:
        """The warm-up request for ``upstream``: its project (else its credential's, from the
        key file or the application default credentials) and its location (else its base
        URL's, else ``global``); ``None`` when no project is known."""
        entry = self._sources.get(id(upstream))
        if entry is None:
            return None
        place = entry.place
        project = place.project or entry.source.project_id
        if not project:
            return None
        location = place.location or place.host_location or "global"
        return _warmup(api, model, max_tokens, prompt, project, location)

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
        return "rawPredict" if api == "vertex_anthropic" else "generateContent"

    def pool_models(self, upstream: Upstream, api: Api, native: bool) -> Sequence[str] | None:
        return None


def _warmup(
    api: Api, model: str, max_tokens: int, prompt: str, project: str, location: str
) -> tuple[str, bytes]:
    """One-token ``generateContent`` (Gemini) or ``rawPredict`` (Claude) for ``model``."""
    head = f"/v1/projects/{project}/locations/{location}/publishers"
    name = quote(model, safe="@")
    if api == "vertex_anthropic":
        claude = {
            "anthropic_version": ANTHROPIC_VERSION,
            "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": prompt}],
        }
        return f"{head}/anthropic/models/{name}:rawPredict", orjson.dumps(claude)
    document = {
        "contents": [{"role": "user", "parts": [{"text": prompt}]}],
        "generationConfig": {"maxOutputTokens": max_tokens},
    }
    return f"{head}/google/models/{name}:generateContent", orjson.dumps(document)


class _OwnedSource:
    """A registered token source: started with the forwarder, unregistered when closed."""

    __slots__ = ("_registry", "_source", "_upstream")

    def __init__(
        self, registry: dict[int, _Entry], upstream: Upstream, source: GoogleTokenSource
    ) -> None:
        self._registry = registry
        self._upstream = upstream
        self._source = source

    async def start(self) -> None:
        await self._source.start()

    async def aclose(self) -> None:
        entry = self._registry.get(id(self._upstream))
        if entry is not None and entry.source is self._source:
            del self._registry[id(self._upstream)]
        await self._source.aclose()

    def __repr__(self) -> str:
        return repr(self._source)


PROVIDER = VertexProvider()
