"""Amazon Bedrock Runtime: ``/model/{modelId}/{operation}`` paths, signed per request.

The base URL is the runtime endpoint (``https://bedrock-runtime.us-east-1.amazonaws.com``); the
route path (``/model/anthropic.claude-sonnet-4-5-20250929-v1:0/converse``) is appended, its model
replaced by the one routing chose. The model id, or an inference-profile ARN, is percent-encoded
in the path (``/`` as ``%2F``; ``:`` is left as it is, as the HTTP client would send it anyway, so
the path sent is the path signed).

The upstream credential is applied per request (`sign`): with ``api_key``, a Bedrock API key sent
as ``Authorization: Bearer``; without, a SigV4 signature with the credentials of botocore's chain
(environment, shared files and profiles, container and instance metadata). The region is the
one in the base URL (``bedrock-runtime.{region}.amazonaws.com``), else ``AWS_REGION`` /
``AWS_DEFAULT_REGION``, else ``us-east-1``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import quote, urlsplit

import orjson

from asgi_llmguard.context import RequestContext, RequestFields
from asgi_llmguard.providers import anthropic_usage, bedrock_usage, sse
from asgi_llmguard.providers.aws_auth import SigV4Signer
from asgi_llmguard.providers.base import ResetParser, StreamMeter, StrHeaders, Upstream
from asgi_llmguard.providers.thinking import Thinking
from asgi_llmguard.routes import Api, Endpoint
from asgi_llmguard.tokens import TokenUsage

if TYPE_CHECKING:
    from botocore.credentials import Credentials  # type: ignore[import-untyped]

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
        # One signer per upstream (by base URL and name): resolved once, shared by every request.
        self._signers: dict[tuple[str, str | None], tuple[SigV4Signer, Credentials]] = {}

    def static_headers(self, upstream: Upstream) -> StrHeaders:
        if not upstream.api_key:
            self._signer(upstream)  # find the credentials at start-up: none is a config error
        return list(upstream.headers.items())

    def default_headers(self, upstream: Upstream) -> StrHeaders:
        return []

    def target(self, upstream: Upstream, ctx: RequestContext, query: bytes) -> str:
        route = ctx.route
        model = ctx.upstream_model or (route.model if route is not None else None) or ""
        operation = route.endpoint.operation if route is not None else "converse"
        url = f"{upstream.base_url.rstrip('/')}/model/{quote(model, safe=':')}/{operation}"
        return url + "?" + query.decode("latin-1") if query else url

    def _signer(self, upstream: Upstream) -> tuple[SigV4Signer, Credentials]:
        key = (upstream.base_url, upstream.name)
        found = self._signers.get(key)
        if found is None:
            signer = SigV4Signer(region=region_of(upstream.base_url))
            found = (signer, signer._resolve())  # the chain, once (environment, files, IMDS)
            self._signers[key] = found
        return found

    def sign(
        self, upstream: Upstream, method: str, url: str, headers: StrHeaders, body: bytes
    ) -> str:
        if upstream.api_key:
            headers.append(("authorization", f"Bearer {upstream.api_key}"))
            return url
        signer, credentials = self._signer(upstream)
        signed = [(k, v) for k, v in headers if k.lower() in _SIGNED]
        headers.extend(signer.sign(method, url, signed, body, credentials.get_frozen_credentials()))
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

    first_event = staticmethod(sse.no_first_event_check)

    def warmup_operation(self, api: Api) -> str:
        return "converse"

    def pool_models(self, upstream: Upstream, api: Api, native: bool) -> Sequence[str] | None:
        return None


PROVIDER = BedrockProvider()
