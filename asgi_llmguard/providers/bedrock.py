"""Amazon Bedrock Runtime: ``/model/{modelId}/{operation}`` paths, signed per request.

The base URL is the runtime endpoint (``https://bedrock-runtime.us-east-1.amazonaws.com``); the
route path (``/model/anthropic.claude-sonnet-4-5-20250929-v1:0/converse``) is appended, its model
replaced by the one routing chose. The model id, or an inference-profile ARN, is percent-encoded
in the path (``/`` as ``%2F``; ``:`` is left as it is, as the HTTP client would send it anyway, so
the path sent is the path signed).

The upstream credential is applied per request (`sign`): with ``api_key``, a Bedrock API key sent
as ``Authorization: Bearer``; without, a SigV4 signature with the credentials of botocore's chain
(environment, shared files and profiles, container and instance metadata), or of the upstream's
``profile``, renewed in the background ahead of their expiry (`SigV4Signer`). The region is the
upstream's ``region``, else the one in the base URL (``bedrock-runtime.{region}.amazonaws.com``),
else ``AWS_REGION`` / ``AWS_DEFAULT_REGION``, else ``us-east-1``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any, cast
from urllib.parse import quote, urlsplit

import orjson

from asgi_llmguard.context import RequestContext, RequestFields
from asgi_llmguard.providers import anthropic_usage, bedrock_usage, eventstream
from asgi_llmguard.providers.aws_auth import AwsCredentialsError, SigV4Signer
from asgi_llmguard.providers.base import ResetParser, StreamMeter, StrHeaders, Upstream
from asgi_llmguard.providers.thinking import Thinking
from asgi_llmguard.routes import Api, Endpoint
from asgi_llmguard.tokens import TokenUsage

_REGION = re.compile(r"bedrock-runtime(?:-fips)?\.([a-z0-9-]+)\.amazonaws\.com")
#: The request headers a signature covers; every other header is sent unsigned.
_SIGNED = frozenset({"content-type", "accept"})


def region_of(base_url: str) -> str:
    """The region of a Bedrock Runtime base URL, else the environment's, else ``us-east-1``."""
    m = _REGION.search(urlsplit(base_url).netloc)
    if m:
        return m.group(1)
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


class BedrockProvider:
    name = "bedrock"
    serves: frozenset[Api] = frozenset({"bedrock"})
    owns: frozenset[Api] = frozenset({"bedrock"})
    key_env: tuple[str, ...] = ()
    default_url = "https://bedrock-runtime.us-east-1.amazonaws.com"
    signs = True
    hints_in_body = False

    def __init__(self) -> None:
        #: The signer of each configured SigV4 upstream (by the object: a gateway built again, or
        #: a second gateway in the process, has its own), shared by all its requests.
        self._signers: dict[int, tuple[Upstream, SigV4Signer]] = {}

    def token_source(self, upstream: Upstream) -> _OwnedSigner | None:
        """The signer of a SigV4 upstream (``None`` for an API key), its credential chain
        resolved now so that none found is a configuration error; the forwarder starts it (the
        background renewal of temporary credentials) and closes it with itself."""
        if upstream.api_key:
            return None
        signer = SigV4Signer(
            region=upstream.region or region_of(upstream.base_url), profile=upstream.profile
        )
        signer.resolve()  # the chain, once (environment, files, IMDS): at start-up
        self._signers[id(upstream)] = (upstream, signer)
        return _OwnedSigner(self._signers, upstream, signer)

    def static_headers(self, upstream: Upstream) -> StrHeaders:
        return list(upstream.headers.items())

    def default_headers(self, upstream: Upstream) -> StrHeaders:
        return []

    def target(self, upstream: Upstream, ctx: RequestContext, query: bytes) -> str:
        route = ctx.route
        model = ctx.upstream_model or (route.model if route is not None else None) or ""
        operation = route.endpoint.operation if route is not None else "converse"
        url = f"{upstream.base_url.rstrip('/')}/model/{quote(model, safe=':')}/{operation}"
        return url + "?" + query.decode("latin-1") if query else url

    def sign(
        self, upstream: Upstream, method: str, url: str, headers: StrHeaders, body: bytes
    ) -> str:
        """A Bedrock API key as ``Authorization: Bearer``, else a SigV4 signature with the
        signer's cached credentials; raises `AwsCredentialsError` when it has none valid (the
        forwarder answers 503 with ``Retry-After``: nothing was sent)."""
        if upstream.api_key:
            headers.append(("authorization", f"Bearer {upstream.api_key}"))
            return url
        entry = self._signers.get(id(upstream))
        if entry is None:
            raise AwsCredentialsError(f"AWS credentials of {upstream.credential_id}: no signer")
        signed = [(k, v) for k, v in headers if k.lower() in _SIGNED]
        headers.extend(entry[1].sign(method, url, signed, body))
        return url

    def stream_meter(self, endpoint: Endpoint) -> StreamMeter | None:
        if endpoint.operation == "converse-stream":
            return bedrock_usage.ConverseStreamMeter()
        if endpoint.operation == "invoke-with-response-stream":
            # Its fields are read-only properties over the Claude events' meter: the usage
            # layer only reads them.
            return cast("StreamMeter", bedrock_usage.InvokeStreamMeter())
        return None

    @staticmethod
    def usage_from_json(body: bytes) -> tuple[TokenUsage | None, str | None, dict[str, int]]:
        """Converse's ``usage`` (``inputTokens``), else an InvokeModel answer of a Claude model
        (Anthropic's message)."""
        if b'"inputTokens"' in body:
            return bedrock_usage.usage_from_converse_json(body)
        return anthropic_usage.usage_from_json(body)

    def warmup(self, api: Api, model: str, max_tokens: int, prompt: str) -> tuple[str, bytes]:
        document = {
            "messages": [{"role": "user", "content": [{"text": prompt}]}],
            "inferenceConfig": {"maxTokens": max_tokens},
        }
        return f"/model/{quote(model, safe=':')}/converse", orjson.dumps(document)

    def retry_hint(self, body: bytes) -> float | None:
        return None

    reset_headers: Mapping[bytes, ResetParser] = {}

    def apply_thinking(
        self, operation: str, body: dict[str, Any], thinking: Thinking, model: str
    ) -> None:
        return None  # not mapped yet: the suffix is only taken off the model id

    def ask_stream_usage(
        self, endpoint: Endpoint, fields: RequestFields, body: bytes
    ) -> bytes | None:
        return None  # a stream's ``metadata`` event carries its usage unasked

    @staticmethod
    def strip_stream_usage(data: bytes) -> bytes:
        return data

    first_event = staticmethod(eventstream.first_event)

    def warmup_operation(self, api: Api) -> str:
        return "converse"

    def pool_models(self, upstream: Upstream, api: Api, native: bool) -> Sequence[str] | None:
        return None


PROVIDER = BedrockProvider()


class _OwnedSigner:
    """A registered signer: started with the forwarder, unregistered when closed."""

    __slots__ = ("_registry", "_signer", "_upstream")

    def __init__(
        self,
        registry: dict[int, tuple[Upstream, SigV4Signer]],
        upstream: Upstream,
        signer: SigV4Signer,
    ) -> None:
        self._registry = registry
        self._upstream = upstream
        self._signer = signer

    async def start(self) -> None:
        await self._signer.start()

    async def aclose(self) -> None:
        entry = self._registry.get(id(self._upstream))
        if entry is not None and entry[1] is self._signer:
            del self._registry[id(self._upstream)]
        await self._signer.aclose()

    def __repr__(self) -> str:
        return f"<signer of {self._upstream.credential_id}: {self._signer!r}>"
