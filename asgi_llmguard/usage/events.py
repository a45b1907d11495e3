"""`UsageEvent`: one record per upstream attempt, the unit of the usage ledger."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import msgspec

from asgi_llmguard.tokens import TokenUsage

if TYPE_CHECKING:
    from asgi_llmguard.context import RequestContext

Outcome = Literal["ok", "cancelled", "upstream_error", "upstream_truncated", "rejected", "warmup"]
#: Why an attempt was ``cancelled``: the client went away, or the gateway was shutting down.
Reason = Literal["client_disconnected", "shutdown"]


class UsageEvent(msgspec.Struct, kw_only=True, omit_defaults=False):
    """One upstream attempt (or one request refused before any attempt: ``rejected``).

    ``(request_id, attempt)`` identifies it: sinks write it idempotently under that pair, so a
    replayed or re-queued event is stored once. Cost is in nano-dollars (1e-9 USD), an integer so
    that sums are exact; ``cost_usd`` converts.
    """

    request_id: str
    attempt: int = 0
    #: Wall-clock start of the request, seconds since the epoch.
    started_at: float
    #: The key's id (a hash prefix or the operator's name), never the key.
    key_id: str | None = None
    #: The model the caller asked for, and the one the upstream says it served.
    model: str | None = None
    served_model: str | None = None
    #: The route's API (``openai``, ``azure``, ``anthropic``, ``gemini``) and operation.
    provider: str
    endpoint: str
    #: The upstream credential that served the attempt (its configured name or hash prefix).
    credential_id: str | None = None
    status: int = 0
    outcome: Outcome = "ok"
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_creation_tokens: int = 0
    reasoning_tokens: int = 0
    cost_nanos: int = 0
    #: Seconds from arrival to the end of the response, and to its first byte.
    latency: float = 0.0
    ttfb: float | None = None
    stream: bool = False
    #: Some token counts were estimated by the gateway, not reported by the provider.
    estimated: bool = False
    #: Free-form labels from the key's policy (team, user, ...).
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    #: The id the caller sent (``x-request-id``), if any: recorded, never part of the identity.
    client_request_id: str | None = None
    #: Why a ``cancelled`` attempt ended (`Reason`); ``None`` for the other outcomes.
    reason: str | None = None
    #: The part of ``cache_creation_tokens`` written to Anthropic's 1-hour cache.
    cache_creation_1h_tokens: int = 0
    #: The service tier the provider says served the attempt (OpenAI's ``service_tier``:
    #: ``default``, ``flex``, ``priority``...; Anthropic's ``usage.service_tier``: ``standard``,
    #: ``priority``, ``batch``), as reported; ``None`` when it did not say.
    service_tier: str | None = None
    #: What the answer was billed in besides tokens: how many ``unit``s (``"minute"`` of audio,
    #: possibly fractional; ``"image"``). ``unit`` is ``None`` when there were none.
    units: float = 0.0
    unit: str | None = None
    #: The API whose wire format the upstream spoke when it was not the route's (``provider``):
    #: the request was translated (``anthropic`` for a Chat Completions request served by an
    #: Anthropic upstream). ``None``: served in the route's own format.
    served_api: str | None = None

    @property
    def cost_usd(self) -> float:
        return self.cost_nanos / 1e9

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


_NO_USAGE = TokenUsage()  # read only
#: The ``metadata`` key listing, comma-separated, the request fields a translation left out
#: (``routing.translate_drop``).
DROPPED_KEY = "llmguard.translation_dropped"


def attempt_event(
    ctx: RequestContext | None,
    provider: str,
    endpoint: str,
    model: str | None,
    attempt: int,
    started_at: float,
    served_model: str | None,
    credential_id: str | None,
    status: int,
    outcome: Outcome,
    latency: float,
    usage: TokenUsage | None = None,
    cost_nanos: int = 0,
    ttfb: float | None = None,
    stream: bool = False,
    estimated: bool = False,
    reason: Reason | None = None,
    units: float = 0.0,
    unit: str | None = None,
    request_id: str = "warmup",
) -> UsageEvent:
    """The record of one attempt (or refusal) of the request ``ctx``: its ids, key and key
    metadata come from the context. A warm-up has no request: ``ctx`` is ``None`` and
    ``request_id`` names it."""
    key = None
    client_request_id = None
    if ctx is not None:
        request_id = ctx.request_id
        client_request_id = ctx.client_request_id
        key = ctx.key
    if usage is None:
        usage = _NO_USAGE
    return UsageEvent(
        request_id=request_id,
        client_request_id=client_request_id,
        attempt=attempt,
        started_at=started_at,
        key_id=key.key_id if key else None,
        model=model,
        served_model=served_model,
        provider=provider,
        endpoint=endpoint,
        credential_id=credential_id,
        status=status,
        outcome=outcome,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cached_input_tokens=usage.cached_input_tokens,
        cache_creation_tokens=usage.cache_creation_tokens,
        reasoning_tokens=usage.reasoning_tokens,
        cost_nanos=cost_nanos,
        latency=latency,
        ttfb=ttfb,
        stream=stream,
        estimated=estimated,
        metadata=dict(key.metadata) if key else {},
        reason=reason,
        cache_creation_1h_tokens=usage.cache_creation_1h_tokens,
        service_tier=usage.service_tier,
        units=units,
        unit=unit,
    )
