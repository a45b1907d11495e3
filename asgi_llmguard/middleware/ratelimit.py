"""Requests and LLM tokens per period, per key, per model and globally: 429 past the limit.

Each request is checked against the gateway-wide limits (``limits=``) and its key's own
(``KeyPolicy.rate_limits``), each in its own bucket: per key, per (key, model), per model, or
one for the whole gateway. A request costs 1 against request limits at admission. Token limits
cannot know the cost up front: the request is admitted while the bucket still holds tokens (or,
with ``reserve_tokens``, when it holds the request's estimate), and once the downstream app has
returned, the tokens the usage layer counted (``ctx.usage_tokens``) are charged; that may put
the bucket into debt, so the next requests wait until it has refilled.

Refusals are 429s with ``Retry-After`` and OpenAI's ``x-ratelimit-*`` headers, in the route's
provider shape; admitted requests get the same headers on their response. When the store cannot
answer in time, each limit's ``on_error`` decides: ``"closed"`` refuses with 503, ``"open"``
admits; either way the failure is logged (once per burst) and counted in ``stats``.

The body is read only when a token limit or a per-model limit applies, and then only once
(``ctx.body``); requests no limit applies to pass through without a wrapped ``send``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable, Sequence

from asgi_llmguard.context import (
    SCOPE_KEY,
    ClientDisconnected,
    InvalidBody,
    RequestContext,
    get_context,
    read_body,
    replay_receive,
)
from asgi_llmguard.errors import ConfigurationError, send_error
from asgi_llmguard.lifecycle import Resource, pass_lifespan
from asgi_llmguard.policy import KeyPolicy, RateLimit
from asgi_llmguard.ratelimit import (
    ClientIdentity,
    Decision,
    Limiter,
    ParsedLimit,
    RateLimitConfig,
    StoreUnavailable,
    create_limiter,
    format_reset,
    parse_limit,
)
from asgi_llmguard.ratelimit.headers import HEADER_NAMES, rate_headers, retry_after, tighter
from asgi_llmguard.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger("asgi_llmguard.ratelimit")

_SCOPE_TEXT = {
    "key": "for this key",
    "key_model": "for this key and model",
    "model": "for this model",
    "global": "on this gateway",
}
# Model names come from the request body: long ones are hashed so keys stay short.
_MAX_MODEL_IN_KEY = 128


class RateLimitMiddleware(Resource):
    """Enforce request and token rate limits; see the module docstring and docs/rate-limits.md.

    - ``limits``: gateway-wide `RateLimit` specs, applied to every request (``per="key"`` ones
      to each key separately, or to each client address when no key layer runs in front).
    - ``storage``, ``algorithm``, ``redis_timeout``, ``key_prefix``, ``max_memory_keys``,
      ``redis_max_connections``: see `RateLimitConfig`; or pass a ready ``limiter`` (e.g. to
      share one between two stacks).
    - ``reserve_tokens``: admit a token-limited request only if the bucket holds its estimate
      (prompt bytes / 4 plus its max output tokens), instead of only needing a non-empty bucket.
    - ``default_max_output_tokens``: the output assumed when a request sets no maximum.
    - ``trusted_proxies``: peers whose ``X-Forwarded-For`` names the client, for the fallback
      identity of key-scoped limits when no key is resolved; ``identity``: your own
      ``(scope) -> str`` instead.
    - ``max_key_specs``: how many distinct per-key limit sets are kept parsed.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        limits: Sequence[RateLimit] = (),
        storage: str = "memory://",
        algorithm: str = "gcra",
        redis_timeout: float = 0.25,
        key_prefix: str = "llmguard:rl:",
        max_memory_keys: int = 100_000,
        redis_max_connections: int = 64,
        limiter: Limiter | None = None,
        reserve_tokens: bool = False,
        default_max_output_tokens: int = 1024,
        trusted_proxies: Sequence[str] = (),
        identity: Callable[[Scope], str] | None = None,
        max_key_specs: int = 10_000,
    ) -> None:
        if isinstance(limits, RateLimit):
            limits = (limits,)
        self._limits = _dedupe(tuple(parse_limit(spec) for spec in limits))
        if not (isinstance(default_max_output_tokens, int) and default_max_output_tokens >= 0):
            raise ConfigurationError("default_max_output_tokens must be an integer >= 0")
        if not (isinstance(max_key_specs, int) and max_key_specs >= 1):
            raise ConfigurationError("max_key_specs must be a positive integer")
        self.app = app
        self.limiter = limiter or create_limiter(
            RateLimitConfig(
                algorithm=algorithm,
                storage=storage,
                redis_timeout=redis_timeout,
                key_prefix=key_prefix,
                max_memory_keys=max_memory_keys,
                redis_max_connections=redis_max_connections,
            )
        )
        self.stats = self.limiter.stats
        # Stores that check all of a request's buckets in one round trip (Redis) say so.
        self._admit: (
            Callable[[Sequence[tuple[str, ParsedLimit, float, bool]]], Awaitable[list[Decision]]]
            | None
        ) = getattr(self.limiter, "admit", None)
        self._reserve = bool(reserve_tokens)
        self._default_output = default_max_output_tokens
        self._identity = identity or ClientIdentity(trusted_proxies)
        self._specs: dict[tuple[RateLimit, ...], tuple[ParsedLimit, ...]] = {}
        self._last_specs: tuple[tuple[RateLimit, ...], tuple[ParsedLimit, ...]] | None = None
        self._shapes: dict[tuple[int, bool], _Shape] = {}
        # (key id, model, metered) -> (the key's limits, its buckets); bounded like _specs.
        self._buckets_memo: dict[
            tuple[str, str | None, bool],
            tuple[tuple[ParsedLimit, ...], list[tuple[ParsedLimit, str]]],
        ] = {}
        self._max_specs = max_key_specs
        # Token settlements that must outlive a cancelled request; held so they are not GC'd.
        self._background: set[asyncio.Task[None]] = set()

    async def aclose(self) -> None:
        """Close the limiter's store connections (on lifespan shutdown when used alone; the
        `Gateway` closes it otherwise)."""
        await self.limiter.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http":
            if kind == "lifespan":
                await pass_lifespan(self.app, self, scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        ctx: RequestContext = scope.get(SCOPE_KEY) or get_context(scope)
        key = ctx.key
        try:
            limits = self._limits_for(key) if key is not None else self._limits
        except ConfigurationError as exc:
            logger.error("key %s has an invalid rate limit: %s", key.key_id if key else "-", exc)
            await send_error(
                send, 500, "This key's rate limits are misconfigured.", anthropic=_anthropic(ctx)
            )
            return
        route = ctx.route
        endpoint = route.endpoint if route is not None else None
        metered = endpoint is not None and endpoint.billable and endpoint.json_body
        shape = self._shape(limits, metered)
        if shape is None:
            await self.app(scope, receive, send)
            return
        anthropic = endpoint is not None and endpoint.anthropic_errors

        model: str | None = None
        wants_tokens = shape.wants_tokens
        if shape.needs_model:
            if endpoint is not None and endpoint.json_body and ctx.body is None:
                try:
                    await read_body(ctx, receive)
                except ClientDisconnected:
                    ctx.disconnected = True
                    return
                receive = replay_receive(ctx, receive)
            try:
                model = ctx.model
            except InvalidBody as exc:
                await send_error(send, 400, str(exc), anthropic=anthropic)
                return

        if key is not None:
            # The same key asking for the same model finds the same buckets: named once.
            memo = (key.key_id, model, metered)
            cached = self._buckets_memo.get(memo)
            if cached is not None and cached[0] is limits:
                buckets = cached[1]
            else:
                buckets = _buckets(shape, model, f"k={key.key_id}")
                if len(self._buckets_memo) >= self._max_specs:
                    del self._buckets_memo[next(iter(self._buckets_memo))]
                self._buckets_memo[memo] = (limits, buckets)
        else:
            buckets = _buckets(shape, model, None, lambda: f"c={self._identity(scope)}")
        if not buckets:
            await self.app(scope, receive, send)
            return

        estimate = self._estimate(ctx) if wants_tokens else 0
        limiter = self.limiter
        stats = self.stats
        requests: Decision | None = None
        tokens: Decision | None = None
        taken: list[tuple[ParsedLimit, str, float]] = []  # given back if a later limit refuses
        settle: list[tuple[ParsedLimit, str, float]] = []  # token limits charged at the end
        failed_open = False
        admit = self._admit
        if admit is not None and len(buckets) > 1:
            # The store checks every bucket in one round trip, all or nothing.
            checks = []
            for lim, bucket in buckets:
                if lim.kind != "tokens":
                    checks.append((bucket, lim, 1.0, True))
                elif self._reserve:
                    checks.append((bucket, lim, float(min(estimate, lim.burst)), True))
                else:
                    checks.append((bucket, lim, 0.0, False))
            try:
                decisions = await admit(checks)
            except StoreUnavailable:
                if not all(lim.fail_open for lim, _ in buckets):
                    stats.fail_closed += 1
                    await self._unavailable(send, anthropic)
                    return
                failed_open = True
                decisions = []
            refused: tuple[ParsedLimit, Decision] | None = None
            for (bucket, lim, cost, _), decision in zip(checks, decisions, strict=False):
                if lim.kind == "tokens":
                    tokens = tighter(tokens, decision)
                    settle.append((lim, bucket, cost))
                else:
                    requests = tighter(requests, decision)
                if not decision.allowed and refused is None:
                    refused = (lim, decision)
            if refused is not None:
                stats.rejected += 1
                await self._refuse(send, refused[0], refused[1], requests, tokens, anthropic)
                return
        else:
            immediate = limiter.immediate
            for lim, bucket in buckets:
                is_tokens = lim.kind == "tokens"
                cost = 1.0
                try:
                    take = not is_tokens or self._reserve
                    if is_tokens:
                        # More than a full bucket could never pass: reserve at most a full bucket,
                        # the rest is charged after the fact like any token overrun.
                        cost = float(min(estimate, lim.burst)) if take else 0.0
                    if immediate:  # in memory: no coroutine per bucket
                        decision = (
                            limiter.acquire_now(bucket, lim, cost)
                            if take
                            else limiter.peek_now(bucket, lim)
                        )
                    elif take:
                        decision = await limiter.acquire(bucket, lim, cost)
                    else:
                        decision = await limiter.peek(bucket, lim)
                except StoreUnavailable:
                    if lim.fail_open:
                        failed_open = True
                        continue
                    stats.fail_closed += 1
                    await self._give_back(taken)
                    await self._unavailable(send, anthropic)
                    return
                if not decision.allowed:
                    stats.rejected += 1
                    await self._give_back(taken)
                    if is_tokens:
                        tokens = decision
                    else:
                        requests = decision
                    await self._refuse(send, lim, decision, requests, tokens, anthropic)
                    return
                if cost:
                    taken.append((lim, bucket, cost))
                if is_tokens:
                    settle.append((lim, bucket, cost))
                    tokens = tighter(tokens, decision)
                else:
                    requests = tighter(requests, decision)

        if failed_open:  # counted once per request, and only if it is admitted
            stats.fail_open += 1
        headers = rate_headers(requests, tokens)
        if not headers and not settle:
            await self.app(scope, receive, send)
            return
        status = 0

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *(h for h in message.get("headers", ()) if h[0].lower() not in HEADER_NAMES),
                    *headers,
                ]
            await send(message)

        if not settle:
            await self.app(scope, receive, send_with_headers)
            return
        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            used = ctx.usage_tokens
            if used is None:
                # The usage layer did not say. A refusal or an upstream error used nothing we
                # could know of; otherwise (success, a cancel mid-answer) assume the estimate.
                used = 0 if status >= 400 else estimate
            if limiter.immediate:
                for lim, bucket, reserved in settle:
                    if used != reserved:
                        limiter.charge_now(bucket, lim, used - reserved)
            else:
                done = self._settle(settle, used)
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # Awaiting here would be cancelled again: finish the charge on its own.
                    background = asyncio.get_running_loop().create_task(done)
                    self._background.add(background)
                    background.add_done_callback(self._background.discard)
                else:
                    await done

    def key_buckets(
        self, key: KeyPolicy, models: Sequence[str] = ()
    ) -> list[tuple[ParsedLimit, str, str | None]]:
        """``(limit, bucket, model)`` for the buckets this key's requests are counted in: its
        per-key ones (model ``None``), and its per-(key, model) ones for each of ``models``.
        An operator's view (the admin API), named exactly as `__call__` names them."""
        who = f"k={key.key_id}"
        buckets: list[tuple[ParsedLimit, str, str | None]] = []
        for lim in self._limits_for(key):
            if lim.per == "key":
                buckets.append((lim, f"{who}|{lim.ident}", None))
            elif lim.per == "key_model":
                buckets.extend(
                    (lim, f"{who}|m={_model_part(model)}|{lim.ident}", model)
                    for model in models
                    if lim.matches_model(model)
                )
        return buckets

    @staticmethod
    def key_bucket_prefix(key_id: str) -> str:
        """What every bucket of this key's own starts with (per key and per key and model)."""
        return f"k={key_id}|"

    def _limits_for(self, key: KeyPolicy) -> tuple[ParsedLimit, ...]:
        specs = key.rate_limits
        if not specs:
            return self._limits
        # Hashing the specs costs a dataclass hash per limit: remember the last tuple seen.
        last = self._last_specs
        if last is not None and last[0] is specs:
            return last[1]
        parsed = self._specs.get(specs)
        if parsed is None:
            parsed = _dedupe(tuple(parse_limit(spec) for spec in specs) + self._limits)
            if len(self._specs) >= self._max_specs:
                del self._specs[next(iter(self._specs))]
            self._specs[specs] = parsed
        self._last_specs = (specs, parsed)
        return parsed

    def _shape(self, limits: tuple[ParsedLimit, ...], metered: bool) -> _Shape | None:
        """What a set of limits asks of a request (cached per limit set and route kind)."""
        memo = (id(limits), metered)
        cached = self._shapes.get(memo)
        if cached is not None and cached.limits is limits:
            return cached if cached.candidates else None
        shape = _Shape(limits, metered)
        if len(self._shapes) >= self._max_specs:
            del self._shapes[next(iter(self._shapes))]
        self._shapes[memo] = shape
        return shape if shape.candidates else None

    def _estimate(self, ctx: RequestContext) -> int:
        """Prompt bytes / 4 plus the output the request allows: cheap, and on the high side."""
        body = ctx.body
        if body is None:
            return self._default_output
        output = ctx.fields().max_output
        if output is None or output < 0:
            output = self._default_output
        return len(body) // 4 + 1 + output

    async def _give_back(self, taken: list[tuple[ParsedLimit, str, float]]) -> None:
        # A refused request should not count against the limits it passed before the refusal.
        for lim, bucket, cost in taken:
            # A store failure is counted and logged by the limiter; the units expire anyway.
            with contextlib.suppress(StoreUnavailable):
                await self.limiter.charge(bucket, lim, -cost)

    async def _settle(self, settle: list[tuple[ParsedLimit, str, float]], used: int) -> None:
        for lim, bucket, reserved in settle:
            delta = used - reserved
            if delta:
                with contextlib.suppress(StoreUnavailable):  # counted and logged by the limiter
                    await self.limiter.charge(bucket, lim, delta)

    @staticmethod
    async def _unavailable(send: Send, anthropic: bool) -> None:
        await send_error(
            send,
            503,
            "Rate limits cannot be checked right now; please try again shortly.",
            anthropic=anthropic,
            code="rate_limit_unavailable",
            headers=[(b"retry-after", b"1")],
        )

    async def _refuse(
        self,
        send: Send,
        lim: ParsedLimit,
        decision: Decision,
        requests: Decision | None,
        tokens: Decision | None,
        anthropic: bool,
    ) -> None:
        wait = decision.retry_after
        message = (
            f"Rate limit reached: {lim} {_SCOPE_TEXT.get(lim.per, '')}. "
            f"Please try again in {format_reset(wait)}."
        )
        await send_error(
            send,
            429,
            message,
            anthropic=anthropic,
            type=None if anthropic else lim.kind,
            code="rate_limit_exceeded",
            headers=[(b"retry-after", retry_after(wait)), *rate_headers(requests, tokens)],
        )

    def __repr__(self) -> str:
        return f"<RateLimitMiddleware limits={len(self._limits)} limiter={self.limiter!r}>"


class _Shape:
    """What one set of limits asks of a request on a metered (or unmetered) route: the limits
    that apply (token limits only on metered routes), whether it needs the body's token
    estimate, and whether it needs the model to name its buckets."""

    __slots__ = ("candidates", "limits", "needs_model", "wants_tokens")

    def __init__(self, limits: tuple[ParsedLimit, ...], metered: bool) -> None:
        self.limits = limits
        self.candidates = tuple(lim for lim in limits if metered or lim.kind == "requests")
        self.wants_tokens = any(lim.kind == "tokens" for lim in self.candidates)
        self.needs_model = self.wants_tokens or any(lim.needs_model for lim in self.candidates)


def _buckets(
    shape: _Shape,
    model: str | None,
    who: str | None,
    identity: Callable[[], str] | None = None,
) -> list[tuple[ParsedLimit, str]]:
    """The buckets a request for ``model`` is counted in, named as the store knows them.
    ``who``: ``k=<key id>``; without a key, ``identity`` names the client when needed."""
    buckets: list[tuple[ParsedLimit, str]] = []
    for lim in shape.candidates:
        if not lim.matches_model(model):
            continue
        per = lim.per
        if per == "global":
            buckets.append((lim, f"g|{lim.ident}"))
            continue
        if per != "key" and model is None:
            continue  # a per-model limit has no bucket for a request without a model
        if per != "model" and who is None:
            assert identity is not None
            who = identity()
        if per == "key":
            buckets.append((lim, f"{who}|{lim.ident}"))
        elif per == "model":
            buckets.append((lim, f"m={_model_part(model)}|{lim.ident}"))
        else:
            buckets.append((lim, f"{who}|m={_model_part(model)}|{lim.ident}"))
    return buckets


def _anthropic(ctx: RequestContext) -> bool:
    route = ctx.route
    return route is not None and route.endpoint.anthropic_errors


def _model_part(model: str | None) -> str:
    model = model or ""
    if len(model) <= _MAX_MODEL_IN_KEY:
        return model
    return "#" + hashlib.sha256(model.encode()).hexdigest()[:32]


def _dedupe(limits: tuple[ParsedLimit, ...]) -> tuple[ParsedLimit, ...]:
    """Drop limits that would share a bucket with an earlier one (same size, scope and models):
    a key's own limit equal to a gateway-wide one must not count each request twice."""
    seen: set[tuple[str, str]] = set()
    kept: list[ParsedLimit] = []
    for lim in limits:
        mark = (lim.per, lim.ident)
        if mark not in seen:
            seen.add(mark)
            kept.append(lim)
    return tuple(kept)
