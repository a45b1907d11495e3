"""What the key, rate-limit and usage layers do for a WebSocket session.

The upgrade request is judged from its headers, as any request is (the key, the endpoint, the
Realtime model named in the URL), before the socket is accepted; a refusal is the layer's usual
HTTP answer, sent as the WebSocket denial response (`denial_send`). What a session then does, it
does per turn (`asgi_llmguard.wsession`): each layer registers hooks that check, count and record
every ``response.create`` and every response the upstream finishes.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import msgspec

from asgi_llmguard.context import SCOPE_KEY, RequestContext, RequestFields, get_context
from asgi_llmguard.errors import send_body, send_error
from asgi_llmguard.providers.openai_usage import usage_from_event
from asgi_llmguard.ratelimit import Decision, StoreUnavailable
from asgi_llmguard.ratelimit.admission import (
    admit_each,
    admit_now,
    admit_together,
    outcome,
    reserving,
    settle_later,
)
from asgi_llmguard.ratelimit.headers import format_reset
from asgi_llmguard.routes import OPENAI
from asgi_llmguard.tokens import TokenUsage
from asgi_llmguard.types import Receive, Scope, Send
from asgi_llmguard.usage.budgets import BudgetExceeded
from asgi_llmguard.usage.events import Outcome, Reason, attempt_event
from asgi_llmguard.wsession import (
    ResponseDone,
    Turn,
    TurnHook,
    TurnRefusal,
    WebSocketSession,
    denial_send,
    realtime_model,
    session_of,
)

if TYPE_CHECKING:
    from asgi_llmguard.middleware.auth import AuthMiddleware
    from asgi_llmguard.middleware.ratelimit import RateLimitMiddleware
    from asgi_llmguard.middleware.usage import UsageMiddleware
    from asgi_llmguard.usage.budgets import Reservation

logger = logging.getLogger("asgi_llmguard")

#: The subprotocol through which browsers (and the SDKs' browser paths) present a key.
KEY_PROTOCOL = b"openai-insecure-api-key."
_fields = msgspec.json.Decoder(RequestFields)


def _session(scope: Scope, ctx: RequestContext) -> WebSocketSession:
    route = ctx.route
    session = session_of(scope, route.endpoint.operation if route is not None else "responses")
    if session.model is None and session.kind == "realtime" and route is not None:
        session.model = realtime_model(scope, route.endpoint.api)
    return session


# -- keys -----------------------------------------------------------------------------------------


def _key(mw: AuthMiddleware, scope: Scope) -> bytes | Literal[False] | None:
    """The key of an upgrade: from the layer's headers, else from the key subprotocol. ``None``:
    none sent; ``False``: malformed or ambiguous."""
    from asgi_llmguard.middleware.auth import _KEY_CHARS

    found: set[bytes] = set()
    rank = len(mw._names)
    best: bytes | None = None
    for name, value in scope["headers"]:
        named = mw._names.get(name)
        if named is not None:
            index, bearer = named
            if bearer:
                if value[:7].lower() != b"bearer ":
                    continue
                value = value[7:]
            value = value.strip(b" \t")
            if index < rank:
                best, rank = value, index
                found = {value}
            elif index == rank:
                found.add(value)
        elif name == b"sec-websocket-protocol" and best is None:
            for offered in value.split(b","):
                offered = offered.strip()
                if offered.startswith(KEY_PROTOCOL):
                    found.add(offered[len(KEY_PROTOCOL) :])
    if best is None and found:
        best = next(iter(found))
    if best is None:
        return None
    if len(found) > 1 or not 0 < len(best) <= mw._max_key_length:
        return False
    if best.translate(None, _KEY_CHARS):
        return False
    return best


async def authorize(mw: AuthMiddleware, scope: Scope, receive: Receive, send: Send) -> None:
    """The key layer for a WebSocket upgrade: 401/403 before the socket is accepted; the model
    and tool restrictions of the key checked again on every turn."""
    send = denial_send(scope, send)
    ctx: RequestContext = scope.get(SCOPE_KEY) or get_context(scope)
    key = _key(mw, scope)
    if not key:
        await send_body(
            send, 401, mw._missing[OPENAI] if key is None else mw._invalid[OPENAI], _CHALLENGE
        )
        return
    try:
        policy = await mw.store.lookup(hashlib.sha256(key).hexdigest())
    except Exception as exc:
        logger.warning("%s: key store failed (%s)", ctx.request_id, type(exc).__name__)
        await send_error(
            send,
            503,
            "The gateway cannot check API keys right now; try again shortly.",
            code="key_store_unavailable",
            headers=[(b"retry-after", b"1")],
        )
        return
    del key
    if policy is None or policy.revoked:
        await send_body(send, 401, mw._invalid[OPENAI], _CHALLENGE)
        return
    ctx.key = policy
    route = ctx.route
    if route is not None:
        endpoint = route.endpoint
        refusal = None
        if policy.providers is not None and endpoint.api not in policy.providers:
            refusal = f"This API key may not call the {endpoint.api} API."
            code = "provider_not_allowed"
        elif policy.endpoints is not None and endpoint.operation not in policy.endpoints:
            refusal = f"This API key may not call {endpoint.operation}."
            code = "endpoint_not_allowed"
        else:
            session = _session(scope, ctx)
            if policy.models is not None and session.kind == "realtime":
                model = session.model
                if model is None or not _allowed(mw, policy.models, model):
                    refusal = "This API key may not use this model."
                    code = "model_not_allowed"
            if refusal is None and (
                policy.models is not None
                or policy.tool_types is not None
                or policy.mcp_servers is not None
            ):
                session.turn_hooks.append(_turn_policy(mw, ctx))
        if refusal is not None:
            await send_error(send, 403, refusal, code=code)
            return
    await mw.app(scope, receive, send)


_CHALLENGE = [(b"www-authenticate", b"Bearer")]


def _allowed(mw: AuthMiddleware, models: tuple[str, ...] | list[str], model: str) -> bool:
    matcher = mw._matcher(models if type(models) is tuple else tuple(models))
    return bool(matcher(model))


def _turn_policy(mw: AuthMiddleware, ctx: RequestContext) -> TurnHook:
    from asgi_llmguard.middleware.auth import _refused_mcp_server

    async def check(turn: Turn) -> TurnRefusal | None:
        policy = ctx.key
        assert policy is not None
        if policy.models is not None and (
            turn.model is None or not _allowed(mw, policy.models, turn.model)
        ):
            return TurnRefusal(403, "This API key may not use this model.", "model_not_allowed")
        if (policy.tool_types is not None or policy.mcp_servers is not None) and turn.frame:
            try:
                fields = _fields.decode(turn.frame)
            except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
                return TurnRefusal(400, "The event is not valid JSON.", "invalid_request_body")
            if policy.tool_types is not None and fields.tools:
                used = {tool.type or "custom" for tool in fields.tools}
                if not used <= policy.tool_types:
                    return TurnRefusal(
                        403, "This API key may not use these tools.", "tool_not_allowed"
                    )
            if policy.mcp_servers is not None and _refused_mcp_server(policy.mcp_servers, fields):
                return TurnRefusal(
                    403, "This API key may not use this MCP server.", "mcp_server_not_allowed"
                )
        return None

    return check


# -- rate limits ----------------------------------------------------------------------------------


def limit_turns(mw: RateLimitMiddleware, scope: Scope, send: Send) -> Send:
    """Count every turn of the session against the key's (or the gateway's) limits, as one
    request to the Responses API would be counted; tokens are settled from the turn's usage."""
    send = denial_send(scope, send)
    ctx: RequestContext = scope.get(SCOPE_KEY) or get_context(scope)
    session = _session(scope, ctx)

    async def admit(turn: Turn) -> TurnRefusal | None:
        key = ctx.key
        limits = mw._defaults if key is None else mw._limits_for(key)
        plan = limits.metered
        if plan is None:
            return None
        checks = mw._checks(plan, ctx, turn.model, scope)
        if not checks:
            return None
        estimate = 0
        if plan.wants_tokens:
            estimate = turn.prompt_bytes // 4 + 1 + (turn.max_output or 0)
            if mw._reserve:
                checks = reserving(checks, estimate)
        together = mw._together if len(checks) > 1 else None
        decisions: Sequence[Decision | None]
        try:
            if together is None:
                limiter = mw.limiter
                decisions = (
                    admit_now(limiter, checks)
                    if limiter.immediate
                    else await admit_each(limiter, checks)
                )
            else:
                decisions = await admit_together(together, checks)
        except StoreUnavailable:
            mw.stats.fail_closed += 1
            return TurnRefusal(503, "Rate limits cannot be checked right now.", "store_unavailable")
        _, _, settle, refused, _ = outcome(checks, decisions, together is not None)
        if refused is not None:
            mw.stats.rejected += 1
            (_, lim, _, _), decision = refused
            wait = decision.retry_after
            return TurnRefusal(
                429,
                f"Rate limit reached: {lim}. Please try again in {format_reset(wait)}.",
                "rate_limit_exceeded",
                kind=lim.kind,
                retry_after=max(1, math.ceil(wait)),
            )
        if settle:
            turn.state["ratelimit"] = (settle, estimate)
        return None

    async def done(turn: Turn, event: ResponseDone) -> None:
        await _settle(turn)

    async def end(turns: list[Turn], why: str) -> None:
        for turn in turns:
            await _settle(turn)

    async def _settle(turn: Turn) -> None:
        held = turn.state.pop("ratelimit", None)
        if held is None:
            return
        settle, estimate = held
        used = turn.state.get("tokens")
        await settle_later(mw.limiter, settle, estimate if used is None else used)

    session.turn_hooks.append(admit)
    session.done_hooks.append(done)
    session.end_hooks.append(end)
    return send


# -- usage ----------------------------------------------------------------------------------------


def meter_turns(mw: UsageMiddleware, scope: Scope, send: Send) -> Send:
    """Price every turn before it runs (a budget reservation per turn) and record one
    `UsageEvent` per response from its terminal event's usage; a turn cut by either side is
    recorded ``cancelled``, with what was produced, estimated."""
    send = denial_send(scope, send)
    ctx: RequestContext = scope.get(SCOPE_KEY) or get_context(scope)
    session = _session(scope, ctx)
    route = ctx.route
    if route is None:
        return send
    endpoint = route.endpoint

    async def start(turn: Turn) -> TurnRefusal | None:
        price = mw._price(turn.model, None) if endpoint.billable else None
        if endpoint.billable and price is None:
            _record(turn, "rejected", 400, None, 0, False, None)
            if turn.model:
                return TurnRefusal(
                    400,
                    f"The model {turn.model!r} has no price configured on this gateway.",
                    "model_not_priced",
                )
            return TurnRefusal(400, "The event names no model.", "missing_model")
        reservations: list[Reservation] = []
        if mw._budgets is not None and price is not None and ctx.key is not None:
            fields = RequestFields(max_output_tokens=turn.max_output)
            refused = await mw._reserve(
                ctx, fields, price, reservations, prompt_bytes=turn.prompt_bytes
            )
            if refused is not None:
                _record(turn, "rejected", 429 if refused else 503, None, 0, False, None)
                if isinstance(refused, BudgetExceeded):
                    resets = refused.resets_at
                    wait = None if resets is None else max(1, math.ceil(resets - time.time()))
                    return TurnRefusal(
                        429,
                        "This key's budget is exhausted: you exceeded your current quota.",
                        "insufficient_quota",
                        kind="insufficient_quota",
                        retry_after=wait,
                    )
                return TurnRefusal(
                    503, "Budgets cannot be checked right now.", "budget_unavailable"
                )
        turn.state["usage"] = (price, reservations)
        return None

    async def done(turn: Turn, event: ResponseDone) -> None:
        if event.status == "error":  # the upstream refused the turn: nothing was produced
            held = turn.state.pop("usage", None)
            if held is not None:
                await mw._release_all(held[1])
            _record(turn, "upstream_error", event.http_status, None, 0, False, None)
            turn.state["tokens"] = 0
            return
        usage, served, tool_calls = usage_from_event(event.frame)
        estimated = usage is None
        if usage is None:
            usage = TokenUsage(input_tokens=turn.prompt_bytes // 4, output_tokens=turn.deltas)
        status = event.status
        result: Outcome = (
            "ok"
            if status in ("completed", "incomplete")
            else "cancelled"
            if status == "cancelled"
            else "upstream_error"
        )
        await _finish(turn, result, usage, served, tool_calls, estimated, None)

    async def end(turns: list[Turn], why: str) -> None:
        for turn in turns:
            if why == "refused":
                held = turn.state.pop("usage", None)
                if held is not None:
                    await mw._release_all(held[1])
                continue
            usage = TokenUsage(input_tokens=turn.prompt_bytes // 4 + 1, output_tokens=turn.deltas)
            reason: Reason | None = "shutdown" if why == "shutdown" else "client_disconnected"
            if why in ("upstream_closed", "upstream_error"):
                reason = None
            await _finish(turn, "cancelled", usage, None, {}, True, reason)

    async def _finish(
        turn: Turn,
        result: Outcome,
        usage: TokenUsage,
        served: str | None,
        tool_calls: dict[str, int],
        estimated: bool,
        reason: Reason | None,
    ) -> None:
        price, reservations = turn.state.pop("usage", (None, []))
        final = mw._price(served or turn.model, ctx.credential_id) if endpoint.billable else None
        final = final or price
        cost = final.cost_nanos(usage, tool_calls) if final is not None else 0
        turn.state["tokens"] = usage.total_tokens
        session.tokens += usage.total_tokens
        budgets = mw._budgets
        if budgets is not None:
            for reservation in reservations:
                try:
                    if cost:
                        await budgets.settle(reservation, cost)
                    else:
                        await budgets.release(reservation)
                except Exception:
                    logger.warning("could not settle a budget reservation; it expires by TTL")
        _record(turn, result, 200, usage, cost, estimated, reason, served)

    def _record(
        turn: Turn,
        result: Outcome,
        status: int,
        usage: TokenUsage | None,
        cost: int,
        estimated: bool,
        reason: Reason | None,
        served: str | None = None,
    ) -> None:
        emit = mw._emit
        if emit is None:
            return
        event = attempt_event(
            ctx,
            endpoint.api,
            endpoint.operation,
            turn.model,
            0,
            turn.started_at,
            served or turn.model,
            ctx.credential_id if result != "rejected" else None,
            status,
            result,
            time.perf_counter() - turn.start,
            usage,
            cost,
            None,
            True,
            estimated,
            reason,
        )
        emit(msgspec.structs.replace(event, request_id=turn.request_id))

    session.turn_hooks.append(start)
    # First among the done hooks: the rate limits settle the tokens it leaves on the turn.
    session.done_hooks.insert(0, done)
    session.end_hooks.insert(0, end)
    return send
