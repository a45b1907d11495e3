"""Meter every upstream answer, price it, hold the key's budget, and emit one `UsageEvent`.

Admission: the body's fields are decoded once; a billable request needs a price for its model
(an unpriced model follows the configured policy and is never silently free); a key with a budget
reserves the worst-case cost atomically, or is refused with 429 ``insufficient_quota``.

On the way back the response is metered as it streams past (`Meter`, in ``_usage_meter``), without
delaying the first byte. When the client did not ask for the usage chunk of an OpenAI-style
stream, the gateway asks the upstream for it and removes it again, so the client sees what it
would have seen without the gateway.

At the end, whatever happened (success, upstream error, truncation, client disconnect), the
actual cost settles the reservation, the tokens are left in ``ctx.usage_tokens`` for the token
rate limits above, and one event per upstream attempt (`attempt_event`) goes to the pipeline.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Protocol

from asgi_llmguard.context import (
    SCOPE_KEY,
    ClientDisconnected,
    InvalidBody,
    RequestContext,
    RequestFields,
    get_context,
    read_body,
)
from asgi_llmguard.errors import ConfigurationError, send_error, worth_waiting
from asgi_llmguard.middleware import _websocket
from asgi_llmguard.middleware._usage_meter import Meter
from asgi_llmguard.policy import Budget
from asgi_llmguard.providers import OWNERS
from asgi_llmguard.providers.metering import Served, stream_meter
from asgi_llmguard.routes import Endpoint
from asgi_llmguard.tokens import TokenUsage
from asgi_llmguard.types import ASGIApp, Receive, Scope, Send
from asgi_llmguard.usage.budgets import (
    BudgetExceeded,
    BudgetOptions,
    BudgetStore,
    BudgetStoreError,
    Reservation,
)
from asgi_llmguard.usage.estimate import estimate_prompt_tokens, heuristic_prompt_tokens
from asgi_llmguard.usage.events import (
    DROPPED_KEY,
    Outcome,
    Reason,
    UsageEvent,
    attempt_event,
)
from asgi_llmguard.usage.pricing import (
    MissingPrice,
    ModelPrice,
    PriceTable,
    estimate_nanos,
    usd_to_nanos,
)

logger = logging.getLogger("asgi_llmguard.usage")

# Audio minutes assumed per byte uploaded when an answer does not say how long the audio was
# (text, srt and vtt transcripts): one megabyte a minute, 128 kbit/s compressed audio.
_AUDIO_BYTES_PER_MINUTE = 1_000_000
# Audio tokens a minute of speech is taken to be, for a token-billed transcription whose answer
# reports no usage: OpenAI's per-minute estimates over its audio-token prices ($0.006 a minute at
# $6/M for gpt-4o-transcribe, $0.003 at $3/M for gpt-4o-mini-transcribe).
_AUDIO_TOKENS_PER_MINUTE = 1000


class EventSink(Protocol):
    def emit(self, event: UsageEvent) -> None: ...


class UsageMiddleware:
    """Meter, price and record every request that reaches an upstream.

    - ``pipeline``: where events go (`UsagePipeline`, or anything with ``emit(event)``);
      ``None`` keeps nothing (the tokens still reach the rate limits).
    - ``prices``: the `PriceTable` (default: the shipped prices); ``missing_price``:
      ``"reject"`` (400 naming the model) or a `ModelPrice` charged for unpriced models.
    - ``budgets``: a `BudgetStore` for keys whose policy has a ``budget``; ``budget_options``:
      how they are held (`BudgetOptions`: ``on_error``, ``reservation_ttl``,
      ``default_max_output_tokens``, tag budgets), the same struct as the config file's
      ``[budgets]``. ``budget_on_error``, ``reservation_ttl``, ``default_max_output_tokens`` and
      ``budget_tags`` are accepted as shorthands for its fields (not together with it).
    - ``stream_usage``: ask OpenAI-style upstreams for the usage chunk when the client did not,
      and remove it from what the client receives.
    - ``aliases``: the routing's model aliases (public name -> upstream models). A request for an
      alias is reserved at its dearest member's price and charged at the price of the member
      that served it.

    Failed attempts the forwarder made before the one that served the request (retries,
    failover) get a record each, so every upstream attempt is in the ledger exactly once.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        pipeline: EventSink | None = None,
        prices: PriceTable | None = None,
        missing_price: MissingPrice = "reject",
        budgets: BudgetStore | None = None,
        budget_options: BudgetOptions | None = None,
        stream_usage: bool = True,
        aliases: Mapping[str, Sequence[str]] | None = None,
        budget_on_error: Literal["open", "closed"] | None = None,
        budget_tags: Mapping[str, Budget] | None = None,
        default_max_output_tokens: int | None = None,
        reservation_ttl: float | None = None,
    ) -> None:
        if missing_price != "reject" and not isinstance(missing_price, ModelPrice):
            raise ConfigurationError("missing_price must be 'reject' or a ModelPrice")
        options = _budget_options(
            budget_options,
            on_error=budget_on_error,
            tags=dict(budget_tags) if budget_tags is not None else None,
            default_max_output_tokens=default_max_output_tokens,
            reservation_ttl=reservation_ttl,
        )
        self.app = app
        self._emit: Callable[[UsageEvent], None] | None = pipeline.emit if pipeline else None
        self._prices = prices if prices is not None else PriceTable.default()
        self._missing = missing_price
        self._budgets = budgets
        self.budget_options = options
        self._budget_open = options.on_error == "open"
        self._budget_tags = dict(options.tags)
        self._stream_usage = stream_usage
        self._default_max_output = options.default_max_output_tokens
        self._ttl = options.reservation_ttl
        self._alias_prices = _alias_prices(self._prices, aliases or {})
        # Settlements that had to outlive a cancelled request; kept so they are not collected.
        self._background: set[asyncio.Task[None]] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":  # metered per turn
                send = _websocket.meter_turns(self, scope, send)
            await self.app(scope, receive, send)
            return
        ctx: RequestContext = scope.get(SCOPE_KEY) or get_context(scope)
        route = ctx.route
        if route is None:
            await self.app(scope, receive, send)
            return
        endpoint = route.endpoint
        dialect = endpoint.dialect
        try:
            if ctx.body is None:  # an earlier layer may have read it already
                await read_body(ctx, receive)
            fields = ctx.fields()
        except ClientDisconnected:
            ctx.disconnected = True
            return
        except InvalidBody as exc:
            self._reject(ctx, endpoint, None, 400)
            await send_error(send, 400, str(exc), dialect=dialect)
            return
        model = ctx.model

        price: ModelPrice | None = None
        if endpoint.billable:
            price = self._price(model, None)
            if price is None:
                self._reject(ctx, endpoint, model, 400)
                await send_error(
                    send,
                    400,
                    f"The model {model!r} has no price configured on this gateway."
                    if model
                    else "The request names no model.",
                    dialect=dialect,
                    code="model_not_priced" if model else "missing_model",
                )
                return

        reservations: list[Reservation] = []
        if self._budgets is not None and price is not None and ctx.key is not None:
            refused = await self._reserve(ctx, fields, price, reservations)
            if refused is not None:
                self._reject(ctx, endpoint, model, 429 if refused else 503)
                if refused:
                    resets_at = refused.resets_at
                    wait = None if resets_at is None else max(1, math.ceil(resets_at - time.time()))
                    headers = [] if wait is None else [(b"retry-after", str(wait).encode())]
                    await send_error(
                        send,
                        429,
                        "This key's budget is exhausted: you exceeded your current quota.",
                        dialect=dialect,
                        type=dialect.specific("insufficient_quota"),
                        code="insufficient_quota",
                        headers=headers,
                        # a total budget never resets; clients should not sleep for hours
                        should_retry=worth_waiting(wait),
                    )
                else:
                    await send_error(
                        send,
                        503,
                        "Budgets cannot be checked right now; try again shortly.",
                        dialect=dialect,
                        headers=[(b"retry-after", b"1")],
                    )
                return

        streamed = bool(fields.stream) and endpoint.streamable
        strip = None
        if streamed and self._stream_usage:
            provider = OWNERS[endpoint.api]
            body = provider.ask_stream_usage(endpoint, fields, ctx.body or b"")
            if body is not None:
                ctx.body = body
                strip = provider.strip_stream_usage

        meter = Meter(ctx, endpoint, send, stream_meter(endpoint) if streamed else None, strip)
        failed = True
        try:
            await self.app(scope, receive, meter.send)
            failed = False
        finally:
            cancelling = _cancelling()
            done = self._finish(
                ctx, endpoint, model, price, meter, reservations, failed, failed and cancelling
            )
            if cancelling:
                # The settlement outlives the cancelled request; give the layers above (token
                # rate limits) the tokens now, estimated cheaply if the provider did not say.
                usage, _, _ = meter.result()
                ctx.usage_tokens = (
                    usage.total_tokens
                    if usage is not None
                    else heuristic_prompt_tokens(ctx.body or b"") + meter.deltas
                )
                task = asyncio.get_running_loop().create_task(done)
                self._background.add(task)
                task.add_done_callback(self._background.discard)
            else:
                await done

    def _price(self, model: str | None, credential_id: str | None) -> ModelPrice | None:
        if not model:
            return None
        price = self._prices.resolve(model, credential_id)
        if price is None:
            price = self._alias_prices.get(model)
        if price is None and model.endswith(")"):
            # A thinking suffix (``gpt-5(high)``) is not part of the model's name upstream.
            base = model[: model.rfind("(")]
            if base:
                price = self._price(base, credential_id)
        if price is None and self._missing != "reject":
            price = self._missing
        return price

    async def _reserve(
        self,
        ctx: RequestContext,
        fields: RequestFields,
        price: ModelPrice,
        reservations: list[Reservation],
        prompt_bytes: int | None = None,
    ) -> BudgetExceeded | Literal[False] | None:
        """Reserve the worst case on every budget that applies. ``None``: admitted; a
        `BudgetExceeded`: refused (429); ``False``: the store could not be reached (503)."""
        key = ctx.key
        budgets = self._budgets
        assert key is not None
        assert budgets is not None
        subjects: list[tuple[str, Budget]] = []
        if key.budget is not None:
            subjects.append((f"key:{key.key_id}", key.budget))
        for name, value in key.metadata.items():
            tagged = self._budget_tags.get(f"{name}:{value}")
            if tagged is not None:
                subjects.append((f"tag:{name}:{value}", tagged))
        if not subjects:
            return None
        endpoint = ctx.route.endpoint if ctx.route is not None else None
        multipart = endpoint is not None and endpoint.multipart
        # An upload's file is not prompt text: its unit price (if any) stands for it below.
        if prompt_bytes is None:  # a WebSocket turn's prompt is its frame, not the body
            prompt_bytes = len(ctx.body or b"")
        prompt = 1 if multipart else prompt_bytes // 4 + 1
        amount = estimate_nanos(price, prompt, fields.max_output or self._default_max_output)
        unit = endpoint.unit if endpoint is not None else None
        unit_price = price.unit_price(unit) if unit is not None else None
        if unit_price is not None:
            expected = _expected_units(ctx, fields, unit)
            amount += usd_to_nanos(unit_price) * math.ceil(expected)
        for subject, budget in subjects:
            try:
                outcome = await budgets.reserve(subject, budget, amount, ttl=self._ttl)
            except BudgetStoreError:
                logger.warning("budget store unavailable for %s (%s)", ctx.request_id, subject)
                if self._budget_open:
                    continue
                await self._release_all(reservations)
                return False
            if isinstance(outcome, BudgetExceeded):
                await self._release_all(reservations)
                return outcome
            reservations.append(outcome)
        return None

    async def _release_all(self, reservations: list[Reservation]) -> None:
        budgets = self._budgets
        assert budgets is not None
        for reservation in reservations:
            try:
                await budgets.release(reservation)
            except BudgetStoreError:
                logger.warning("could not release a budget reservation; it expires by TTL")
        reservations.clear()

    def _reject(
        self, ctx: RequestContext, endpoint: Endpoint, model: str | None, status: int
    ) -> None:
        if self._emit is None:
            return
        self._emit(
            attempt_event(
                ctx,
                endpoint.api,
                endpoint.operation,
                model,
                0,
                ctx.started_at,
                None,
                None,
                status,
                "rejected",
                time.perf_counter() - ctx.start,
            )
        )

    async def _finish(
        self,
        ctx: RequestContext,
        endpoint: Endpoint,
        model: str | None,
        price: ModelPrice | None,
        meter: Meter,
        reservations: list[Reservation],
        failed: bool,
        ended: bool,
    ) -> None:
        """Settle and record the attempt; ``ended``: the request was cancelled from outside (the
        server shutting down) rather than completed."""
        usage, served, tool_calls = meter.result()
        stream_meter = meter.meter  # `Meter.estimated`, inlined
        estimated = stream_meter is not None and stream_meter.estimated
        unit = endpoint.unit  # a read-only one's (tokens counted) is recorded, never priced
        outcome: Outcome
        reason: Reason | None = None
        if ctx.disconnected:
            outcome, reason = "cancelled", "client_disconnected"
        elif ended or ctx.upstream_error == "shutdown":
            outcome, reason = "cancelled", "shutdown"
        elif meter.truncated:
            outcome = "upstream_truncated"
        elif ctx.upstream_error is not None or failed or meter.stream_error or meter.status >= 400:
            outcome = "upstream_error"
        else:
            outcome = "ok"

        reached_upstream = ctx.credential_id is not None
        upstream_model = ctx.upstream_model
        served_as = upstream_model or model
        if upstream_model is not None:
            translated: Served | None = getattr(ctx, "translated", None)  # another format's
            if translated is not None:
                # Metered from the upstream's own format, not from the translation sent on.
                result = translated.result()
                if result is not None:
                    usage, served, tool_calls = result
                    estimated = translated.estimated
        final_price = (
            (self._price(served_as, ctx.credential_id) or price) if endpoint.billable else None
        )
        answered = reached_upstream and (meter.status < 400 or outcome == "cancelled")
        units = 0.0
        if unit is not None and answered:
            reported = meter.units(unit)
            if reported is not None:
                units = reported
            elif usage is None and endpoint.billable:
                # Nothing usable in the answer (a plain-text transcript, an answer too large to
                # count): the units asked for or uploaded, flagged as an estimate.
                units = _expected_units(ctx, None, unit)
                estimated = True
        priced_by_unit = (
            units > 0 and final_price is not None and final_price.unit_price(unit) is not None
        )
        if (
            usage is None
            and endpoint.multipart
            and unit == "minute"
            and units > 0
            and answered
            and not priced_by_unit
        ):
            # A transcript without usage from a token-billed model: the minutes as audio tokens,
            # the transcript's bytes as output tokens; the file itself is not prompt text.
            audio = math.ceil(units * _AUDIO_TOKENS_PER_MINUTE)
            usage = TokenUsage(
                input_tokens=audio,
                audio_input_tokens=audio,
                output_tokens=max(meter.deltas, meter.answer_bytes // 4),
            )
            estimated = True
        elif usage is None and endpoint.billable and answered and not priced_by_unit:
            # The provider did not say (cancelled, broken, truncated, or a server that sends no
            # usage): estimate, and say so on the record. Never silently free.
            usage = TokenUsage(
                input_tokens=await estimate_prompt_tokens(ctx.body),
                output_tokens=meter.deltas,
                service_tier=meter.service_tier,  # a stream says it before its usage
            )
            estimated = True

        cost = 0
        if final_price is not None and (usage is not None or priced_by_unit):
            cost = final_price.cost_nanos(usage or TokenUsage(), tool_calls, units=units, unit=unit)
        if usage is not None:
            ctx.usage_tokens = usage.total_tokens

        budgets = self._budgets
        if budgets is not None:
            for reservation in reservations:
                try:
                    if cost:
                        await budgets.settle(reservation, cost)
                    else:
                        await budgets.release(reservation)
                except BudgetStoreError:
                    logger.warning("could not settle a budget reservation; it expires by TTL")

        if self._emit is None or not reached_upstream:
            return
        attempts = ctx.attempts or ()
        if attempts:
            stream = bool(fields_stream(ctx))
            for number, failed_attempt in enumerate(attempts):
                self._emit(
                    attempt_event(
                        ctx,
                        endpoint.api,
                        endpoint.operation,
                        model,
                        number,
                        failed_attempt.started_at,
                        failed_attempt.model,
                        failed_attempt.credential_id,
                        failed_attempt.status,
                        "upstream_error",
                        failed_attempt.latency,
                        None,
                        0,
                        None,
                        stream,
                    )
                )
        if upstream_model is not None and (served is None or served == model):
            served = upstream_model
        event = attempt_event(
            ctx,
            endpoint.api,
            endpoint.operation,
            model,
            len(attempts),
            ctx.started_at,
            served,
            ctx.credential_id,
            meter.status,
            outcome,
            time.perf_counter() - ctx.start,
            usage,
            cost,
            meter.ttfb,
            meter.sse,
            estimated,
            reason,
            units,
            unit if units else None,
        )
        if upstream_model is not None and translated is not None:
            event.served_api = translated.api
            if translated.dropped:
                event.metadata[DROPPED_KEY] = ",".join(translated.dropped)
        self._emit(event)

    async def aclose(self) -> None:
        """Wait for settlements still running for cancelled requests."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)


def _budget_options(given: BudgetOptions | None, **shorthands: Any) -> BudgetOptions:
    """``budget_options``, or the struct the shorthand keyword arguments describe."""
    set_ = {name: value for name, value in shorthands.items() if value is not None}
    if given is not None and set_:
        raise ConfigurationError(
            "pass budget_options or its shorthands (budget_on_error, budget_tags, "
            "default_max_output_tokens, reservation_ttl), not both"
        )
    if given is not None:
        return given
    try:
        return BudgetOptions(**set_)
    except (TypeError, ValueError) as exc:
        name = "budget_on_error" if "on_error" in str(exc) else None
        raise ConfigurationError(str(exc) if name is None else f"{name}: {exc}") from None


def fields_stream(ctx: RequestContext) -> bool | None:
    try:
        return ctx.fields().stream
    except (InvalidBody, RuntimeError):
        return None


def _alias_prices(
    prices: PriceTable, aliases: Mapping[str, Sequence[str]]
) -> dict[str, ModelPrice]:
    """Each alias at its dearest member's price (by the cost of 1,000 tokens in and out), so a
    budget reservation covers whichever member serves it."""
    sample = TokenUsage(input_tokens=1000, output_tokens=1000)
    out: dict[str, ModelPrice] = {}
    for alias, members in aliases.items():
        best: ModelPrice | None = None
        for member in members:
            name = member[: member.rfind("(")] if member.endswith(")") else member
            price = prices.resolve(name)
            if price is not None and (
                best is None or price.cost_nanos(sample) > best.cost_nanos(sample)
            ):
                best = price
        if best is not None:
            out[alias] = best
    return out


def _expected_units(ctx: RequestContext, fields: RequestFields | None, unit: str | None) -> float:
    """The units a request will likely be billed before (or without) the answer saying: the
    images asked for (``n``, default 1), or the minutes of audio its upload size suggests."""
    if unit == "image":
        if fields is None:
            try:
                fields = ctx.fields()
            except InvalidBody:
                fields = None
        n = fields.n if fields is not None else None
        return float(n if n is not None and n > 0 else 1)
    if unit == "minute":
        return max(1, len(ctx.body or b"")) / _AUDIO_BYTES_PER_MINUTE
    return 0.0


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
