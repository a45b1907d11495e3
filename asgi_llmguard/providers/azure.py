"""Azure OpenAI: deployment paths, the ``api-key`` header and the ``api-version`` parameter.

Azure serves both dialects a client may speak:

- Azure's own paths, ``/openai/deployments/{deployment}/chat/completions?api-version=...``, as the
  ``AzureOpenAI`` SDK client sends them, are forwarded to the same path on the resource;
- OpenAI-style paths, ``/v1/chat/completions`` with a ``model`` in the body, are sent to the
  deployment that ``deployments`` maps the model to (or the deployment named like the model).

When the upstream has an ``api_version`` it replaces the client's; otherwise the client's is kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import parse_qsl, quote, urlencode

from asgi_llmguard.context import InvalidBody, RequestContext
from asgi_llmguard.providers.base import StrHeaders, Upstream, join
from asgi_llmguard.providers.openai import OpenAIProvider
from asgi_llmguard.routes import Api

DEFAULT_API_VERSION = "2024-10-21"

# OpenAI-style operations that Azure serves under a deployment.
_DEPLOYMENT_OPERATIONS = {
    "/v1/chat/completions": "/chat/completions",
    "/v1/completions": "/completions",
    "/v1/embeddings": "/embeddings",
    "/v1/images/generations": "/images/generations",
    "/v1/audio/speech": "/audio/speech",
    "/v1/audio/transcriptions": "/audio/transcriptions",
    "/v1/audio/translations": "/audio/translations",
}


class AzureProvider(OpenAIProvider):
    """OpenAI's wire (meters, thinking, stream usage, first events, reset headers, warm-up) on
    Azure's paths, header and ``api-version``."""

    name = "azure"
    serves: frozenset[Api] = frozenset({"azure", "openai"})
    owns: frozenset[Api] = frozenset({"azure"})
    key_env: tuple[str, ...] = ()
    default_url = ""

    def static_headers(self, upstream: Upstream) -> StrHeaders:
        headers = list(upstream.headers.items())
        if upstream.api_key:
            headers.append(("api-key", upstream.api_key))
        return headers

    def target(self, upstream: Upstream, ctx: RequestContext, query: bytes) -> str:
        route = ctx.route
        path = ctx.path
        if route is not None and route.deployment is not None:
            deployment = upstream.deployments.get(route.deployment, route.deployment)
            operation = path.split("/", 4)[4]
            path = f"/openai/deployments/{quote(deployment, safe='')}/{operation}"
        elif path in _DEPLOYMENT_OPERATIONS:
            model = ctx.upstream_model or ctx.model
            if not model:
                raise InvalidBody("Azure OpenAI needs a 'model' to pick the deployment")
            deployment = upstream.deployments.get(model, model)
            path = (
                f"/openai/deployments/{quote(deployment, safe='')}" + _DEPLOYMENT_OPERATIONS[path]
            )
        elif path == "/v1/realtime":
            # The Realtime API over a WebSocket: the model names the deployment.
            return _realtime(upstream, ctx, query)
        elif path.startswith("/v1/"):
            path = "/openai" + path[3:]
        return join(upstream.base_url, path, _with_version(query, upstream.api_version))

    def pool_models(self, upstream: Upstream, api: Api, native: bool) -> Sequence[str] | None:
        """Azure answers OpenAI-style routes only through its deployments: it joins their pools
        for the models it maps, or for every model when no OpenAI upstream is configured."""
        if api == "openai" and not upstream.models:
            if upstream.deployments:
                return list(upstream.deployments)
            if native:
                return []
        return None


def _realtime(upstream: Upstream, ctx: RequestContext, query: bytes) -> str:
    """``/v1/realtime?model=<model>`` as Azure serves it:
    ``/openai/realtime?deployment=<deployment>&api-version=...``."""
    pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
    model = next((v for k, v in pairs if k == "model"), "")
    if not model:
        raise InvalidBody("Azure OpenAI needs a 'model' to pick the Realtime deployment")
    pairs = [(k, v) for k, v in pairs if k not in ("model", "deployment")]
    pairs.append(("deployment", upstream.deployments.get(model, model)))
    rest = urlencode(pairs).encode("latin-1")
    return join(upstream.base_url, "/openai/realtime", _with_version(rest, upstream.api_version))


def _with_version(query: bytes, version: str | None) -> bytes:
    pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
    has_version = any(k == "api-version" for k, _ in pairs)
    if version is None:
        if has_version:
            return query
        version = DEFAULT_API_VERSION
    pairs = [(k, v) for k, v in pairs if k != "api-version"]
    pairs.append(("api-version", version))
    return urlencode(pairs).encode("latin-1")


PROVIDER = AzureProvider()
