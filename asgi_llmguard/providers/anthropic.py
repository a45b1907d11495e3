"""Anthropic's Messages API: ``x-api-key`` and ``anthropic-version`` headers.

The base URL is the API's root (``https://api.anthropic.com``) as the Anthropic SDK takes it, and
the route path (``/v1/messages``) is appended unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from asgi_llmguard.context import RequestContext, RequestFields
from asgi_llmguard.providers import anthropic_usage, resets, sse
from asgi_llmguard.providers.base import (
    ResetParser,
    StaticCredential,
    StreamMeter,
    StrHeaders,
    Upstream,
    join,
)
from asgi_llmguard.providers.thinking import ANTHROPIC_MIN_BUDGET, EFFORT_BUDGETS, Thinking
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

    reset_headers: Mapping[bytes, ResetParser] = {
        b"anthropic-ratelimit-requests-reset": resets.rfc3339_time,
        b"anthropic-ratelimit-tokens-reset": resets.rfc3339_time,
        b"anthropic-ratelimit-input-tokens-reset": resets.rfc3339_time,
        b"anthropic-ratelimit-output-tokens-reset": resets.rfc3339_time,
    }

    def apply_thinking(
        self, operation: str, body: dict[str, Any], thinking: Thinking, model: str
    ) -> None:
        if operation in ("messages", "messages.count_tokens"):
            anthropic_thinking(body, thinking, counting=operation != "messages")

    def ask_stream_usage(
        self, endpoint: Endpoint, fields: RequestFields, body: bytes
    ) -> bytes | None:
        return None  # every Messages stream reports its usage

    @staticmethod
    def strip_stream_usage(data: bytes) -> bytes:
        return data

    first_event = staticmethod(sse.first_sse_event)

    def warmup_operation(self, api: Api) -> str:
        return "messages"


def anthropic_thinking(body: dict[str, Any], thinking: Thinking, *, counting: bool) -> None:
    """A thinking suffix on the Messages API (Anthropic's, and Claude on Vertex AI): ``thinking``.

    A budget below 1024 is raised to 1024 (Anthropic's minimum); an effort uses `EFFORT_BUDGETS`.
    ``(none)`` sets ``{"type": "disabled"}``. ``(auto)`` removes ``thinking`` -- the provider
    default -- rather than sending ``{"type": "adaptive"}``, which only the newest models accept.
    Anthropic requires ``budget_tokens < max_tokens``: when an integer ``max_tokens`` is not above
    the budget it becomes ``budget + max_tokens``, so the answer keeps the room the caller asked
    for on top of the thinking (not when ``counting`` tokens). A missing ``max_tokens`` is left
    missing.
    """
    if thinking.mode == "auto":
        body.pop("thinking", None)
        return
    if thinking.mode == "none":
        body["thinking"] = {"type": "disabled"}
        return
    if thinking.mode == "effort":
        assert thinking.effort is not None
        budget = EFFORT_BUDGETS[thinking.effort]
    else:
        assert thinking.budget is not None
        budget = max(thinking.budget, ANTHROPIC_MIN_BUDGET)
    body["thinking"] = {"type": "enabled", "budget_tokens": budget}
    max_tokens = body.get("max_tokens")
    # bool is an int subclass; a JSON true is not a token count.
    if (
        not counting
        and isinstance(max_tokens, int)
        and not isinstance(max_tokens, bool)
        and max_tokens <= budget
    ):
        body["max_tokens"] = budget + max(max_tokens, 1)


PROVIDER = AnthropicProvider()
