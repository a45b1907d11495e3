"""The Gemini API (Google AI Studio): ``models/{model}:{method}`` paths and ``x-goog-api-key``.

The base URL is the API's root (``https://generativelanguage.googleapis.com``) as the
``google-genai`` SDK takes it (``http_options.base_url``); the route path (``/v1beta/models/
gemini-2.5-flash:generateContent``) is appended, its model replaced by the one routing chose
(an alias resolved). The upstream key goes in ``x-goog-api-key``; a caller's key sent in the
``key`` query parameter was taken out of the URL before any layer saw it (`take_query_key`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import orjson

from asgi_llmguard.context import RequestContext, RequestFields
from asgi_llmguard.providers import gemini_usage, sse
from asgi_llmguard.providers.base import (
    ResetParser,
    StaticCredential,
    StreamMeter,
    StrHeaders,
    Upstream,
    join,
)
from asgi_llmguard.providers.thinking import EFFORT_BUDGETS, Effort, Thinking
from asgi_llmguard.routes import Api, Endpoint

#: ``google.rpc.RetryInfo``'s ``retryDelay`` in a 429's ``error.details``: ``"30s"``, ``"1.5s"``.
_RETRY_DELAY = re.compile(rb'"retryDelay"\s*:\s*"(\d{1,6}(?:\.\d{1,9})?)s"')


def google_first_event(content_type: bytes, held: bytes) -> int | None:
    """`Provider.first_event` of the Gemini API's streams (``alt=sse``; Vertex AI's too): an
    error sent as the first event stands for its ``error.code`` (429 for
    ``RESOURCE_EXHAUSTED``, 503 for ``UNAVAILABLE``), so the credential cools down for the right
    reason; any other answer is 200 (a JSON-array stream is not checked)."""
    status = sse.first_sse_event(content_type, held)
    if status is None or status == 200:
        return status
    _, data = sse.event_fields(held[: sse.first_event_end(held)])
    try:
        error = orjson.loads(data)["error"]
        code = error["code"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return status
    if isinstance(code, int) and not isinstance(code, bool) and 400 <= code <= 599:
        return code
    return status


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

    reset_headers: Mapping[bytes, ResetParser] = {}  # a 429's wait is in its body (`retry_hint`)

    def apply_thinking(
        self, operation: str, body: dict[str, Any], thinking: Thinking, model: str
    ) -> None:
        if operation in GENERATE_OPERATIONS:
            gemini_thinking(body, thinking, model)

    def ask_stream_usage(
        self, endpoint: Endpoint, fields: RequestFields, body: bytes
    ) -> bytes | None:
        return None  # every chunk of a stream carries ``usageMetadata``

    @staticmethod
    def strip_stream_usage(data: bytes) -> bytes:
        return data

    first_event = staticmethod(google_first_event)

    def warmup_operation(self, api: Api) -> str:
        return "generateContent"


#: The operations whose body takes ``generationConfig.thinkingConfig``.
GENERATE_OPERATIONS = frozenset({"generateContent", "streamGenerateContent"})
#: Gemini 3 and later take a ``thinkingLevel`` (Gemini 3 Pro: ``low`` or ``high``); earlier
#: models a ``thinkingBudget``.
_GENERATION = re.compile(r"gemini-(\d+)")
#: Effort -> ``thinkingLevel``: the two levels every Gemini 3 model accepts.
THINKING_LEVELS: Mapping[Effort, str] = {
    "minimal": "low",
    "low": "low",
    "medium": "high",
    "high": "high",
}
#: Gemini 2.5 Pro cannot turn thinking off: ``(none)`` asks for its smallest budget instead.
_PRO_MIN_BUDGET = 128


def gemini_thinking(body: dict[str, Any], thinking: Thinking, model: str) -> None:
    """A thinking suffix on the Gemini API's wire (AI Studio and Vertex AI):
    ``generationConfig.thinkingConfig``, its other members (``includeThoughts``) kept.

    - Gemini 2.5 and earlier: ``thinkingBudget``. A budget as it is; an effort through
      `EFFORT_BUDGETS`; ``(none)`` 0 (thinking off; 128, the smallest budget, on 2.5 Pro, which
      cannot turn it off); ``(auto)`` -1 (dynamic thinking).
    - Gemini 3 and later: ``thinkingLevel``, ``low`` or ``high`` (`THINKING_LEVELS`; a budget
      through `Thinking.openai_effort`); ``(none)`` ``low``, the least a Gemini 3 model thinks;
      ``(auto)`` removes it (the model's dynamic default).

    A request sets one of ``thinkingBudget`` and ``thinkingLevel`` (both is a 400): the other is
    removed. Fields spelled in snake case (``thinking_budget``), as protobuf's JSON form allows,
    keep that spelling.
    """
    config_key = "generation_config" if "generation_config" in body else "generationConfig"
    config = body.get(config_key)
    config = dict(config) if isinstance(config, Mapping) else {}
    thinking_key = "thinking_config" if "thinking_config" in config else "thinkingConfig"
    settings = config.get(thinking_key)
    settings = dict(settings) if isinstance(settings, Mapping) else {}
    # Spelled as the caller spelled it (google-genai writes the members in snake case).
    snake = thinking_key == "thinking_config" or any("_" in key for key in settings)
    for key in ("thinkingBudget", "thinking_budget", "thinkingLevel", "thinking_level"):
        settings.pop(key, None)
    generation = _GENERATION.match(model)
    if generation is not None and int(generation.group(1)) >= 3:
        effort = thinking.openai_effort
        if effort is not None:
            settings["thinking_level" if snake else "thinkingLevel"] = THINKING_LEVELS[effort]
    else:
        if thinking.mode == "auto":
            budget = -1
        elif thinking.mode == "none":
            budget = _PRO_MIN_BUDGET if model.startswith("gemini-2.5-pro") else 0
        elif thinking.mode == "effort":
            assert thinking.effort is not None
            budget = EFFORT_BUDGETS[thinking.effort]
        else:
            assert thinking.budget is not None
            budget = thinking.budget
        settings["thinking_budget" if snake else "thinkingBudget"] = budget
    if settings:
        config[thinking_key] = settings
    else:
        config.pop(thinking_key, None)
    if config:
        body[config_key] = config
    else:
        body.pop(config_key, None)


PROVIDER = GeminiProvider()
