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
import logging
from collections.abc import Callable, Sequence

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
from asgi_llmguard.middleware import _websocket
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
from asgi_llmguard.ratelimit.admission import (
    AdmitMany,
    Check,
    admit_each,
    admit_now,
    admit_together,
    costs,
    outcome,
    reserving,
    settle_later,
    settle_now,
)
from asgi_llmguard.ratelimit.buckets import (
    LimitSet,
    Plan,
    bucket_name,
    client_owner,
    dedupe,
    key_bucket_prefix,
    key_owner,
)
from asgi_llmguard.ratelimit.headers import HEADER_NAMES, rate_headers, retry_after
from asgi_llmguard.routes import OPENAI, Dialect
from asgi_llmguard.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger("asgi_llmguard.ratelimit")

_SCOPE_TEXT = {
    "key": "for this key",
    "key_model": "for this key and model",
    "model": "for this model",
    "global": "on this gateway",
}


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
        self._limits = dedupe(tuple(parse_limit(spec) for spec in limits))
        self._defaults = LimitSet(self._limits)
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
        self._together: AdmitMany | None = getattr(self.limiter, "admit", None)
        self._reserve = bool(reserve_tokens)
        self._default_output = default_max_output_tokens
        self._identity = identity or ClientIdentity(trusted_proxies)
        # A key's limits, parsed and planned once per distinct tuple of specs.
        self._specs: dict[tuple[RateLimit, ...], LimitSet] = {}
        self._last_specs: tuple[tuple[RateLimit, ...], LimitSet] | None = None
        # (plan, key id, model) -> the checks of the key's buckets; bounded like _specs.
        self._checks_memo: dict[tuple[Plan, str, str | None], list[Check]] = {}
        self._max_specs = max_key_specs
        # Token settlements that must outlive a cancelled request; held so they are not GC'd.
        self._background: set[asyncio.Task[None]] = set()

    async def aclose(self) -> None:
        """Close the limiter's store connections (on lifespan shutdown when used alone; the
        `Gateway` closes it otherwise)."""
        await self.limiter.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":  # counted per turn
                send = _websocket.limit_turns(self, scope, send)
            await self._not_http(scope, receive, send)
            return
        ctx: RequestContext = scope.get(SCOPE_KEY) or get_context(scope)
        # 1. What applies: the limits of the request's key (or the gateway's) on its route.
        try:
            plan = self._plan(ctx)
        except ConfigurationError as exc:
            await self._misconfigured(ctx, send, exc)
            return
        if plan is None:  # no limit applies to this request on this route
            await self.app(scope, receive, send)
            return

        # 2. Where it counts: its buckets, named after the model if a limit needs it.
        model: str | None = None
        if plan.needs_model:
            route = ctx.route
            if ctx.body is None and route is not None and route.endpoint.json_body:
                try:
                    await read_body(ctx, receive)
                except ClientDisconnected:
                    ctx.disconnected = True
                    return
                receive = replay_receive(ctx, receive)
            try:
                model = ctx.model
            except InvalidBody as exc:
                await send_error(send, 400, str(exc), dialect=_dialect(ctx))
                return
        key = ctx.key  # a key's buckets are named once per plan and model: look them up here
        checks = None if key is None else self._checks_memo.get((plan, key.key_id, model))
        if checks is None:
            checks = self._checks(plan, ctx, model, scope)
        if not checks:
            await self.app(scope, receive, send)
            return
        estimate = 0
        if plan.wants_tokens:
            estimate = self._estimate(ctx)
            if self._reserve:
                checks = reserving(checks, estimate)

        # 3. Admit its request units and token reserves, one bucket at a time or all together.
        together = self._together if len(checks) > 1 else None
        decisions: Sequence[Decision | None]
        try:
            if together is None:
                limiter = self.limiter
                if limiter.immediate:
                    decisions = admit_now(limiter, checks)
                else:
                    decisions = await admit_each(limiter, checks)
            else:
                decisions = await admit_together(together, checks)
        except StoreUnavailable:
            self.stats.fail_closed += 1
            await self._unavailable(send, _dialect(ctx))
            return
        requests, tokens, settle, refused, failed_open = outcome(
            checks, decisions, together is not None
        )
        if refused is not None:
            self.stats.rejected += 1
            await self._refuse(send, refused, requests, tokens, _dialect(ctx))
            return
        if failed_open:  # counted once per request, and only if it is admitted
            self.stats.fail_open += 1

        # 4. Call the app, our headers on its answer; then settle the tokens it used.
        headers = rate_headers(requests, tokens)  # never empty when there is something to settle
        if headers:
            await self._call(scope, receive, send, ctx, headers, settle, estimate)
        else:
            await self.app(scope, receive, send)

    def key_buckets(
        self, key: KeyPolicy, models: Sequence[str] = ()
    ) -> list[tuple[ParsedLimit, str, str | None]]:
        """``(limit, bucket, model)`` for the buckets this key's requests are counted in: its
        per-key ones (model ``None``), and its per-(key, model) ones for each of ``models``.
        An operator's view (the admin API), named by the same `bucket_name` as requests'."""
        owner = key_owner(key.key_id)
        buckets: list[tuple[ParsedLimit, str, str | None]] = []
        for lim in self._limits_for(key).limits:
            if lim.per == "key":
                buckets.append((lim, bucket_name(lim, owner, None), None))
            elif lim.per == "key_model":
                buckets.extend(
                    (lim, bucket_name(lim, owner, model), model)
                    for model in models
                    if lim.matches_model(model)
                )
        return buckets

    @staticmethod
    def key_bucket_prefix(key_id: str) -> str:
        """What every bucket of this key's own starts with (per key and per key and model)."""
        return key_bucket_prefix(key_id)

    # -- the steps of a request ----------------------------------------------------------------

    def _plan(self, ctx: RequestContext) -> Plan | None:
        """What the request's limits (its key's, or the gateway's) ask of it on its route;
        ``None`` when none applies. Raises `ConfigurationError` for a key's invalid limit."""
        key = ctx.key
        if key is None:
            limits = self._defaults
        else:
            last = self._last_specs  # most requests come with the same policy as the last one
            limits = (
                last[1]
                if last is not None and last[0] is key.rate_limits
                else self._limits_for(key)
            )
        route = ctx.route
        if route is not None:
            endpoint = route.endpoint
            if endpoint.billable and endpoint.json_body:  # LLM tokens are counted here
                return limits.metered
        return limits.unmetered

    def _limits_for(self, key: KeyPolicy) -> LimitSet:
        """The key's own limits and the gateway's, parsed and planned once per distinct specs."""
        specs = key.rate_limits
        if not specs:
            return self._defaults
        # Hashing the specs costs a dataclass hash per limit: remember the last tuple seen.
        last = self._last_specs
        if last is not None and last[0] is specs:
            return last[1]
        parsed = self._specs.get(specs)
        if parsed is None:
            parsed = LimitSet(dedupe(tuple(parse_limit(spec) for spec in specs) + self._limits))
            if len(self._specs) >= self._max_specs:
                del self._specs[next(iter(self._specs))]
            self._specs[specs] = parsed
        self._last_specs = (specs, parsed)
        return parsed

    def _checks(
        self, plan: Plan, ctx: RequestContext, model: str | None, scope: Scope
    ) -> list[Check]:
        """The buckets the request counts in, each with what to take from it, named now (and
        for a key, kept for its next requests)."""
        key = ctx.key
        if key is None:
            identity = self._identity
            return costs(plan.buckets(model, None, lambda: client_owner(identity(scope))))
        # The same key asking for the same model finds the same buckets (`__call__` looks in
        # the memo first): named once.
        checks = costs(plan.buckets(model, key_owner(key.key_id)))
        if len(self._checks_memo) >= self._max_specs:
            del self._checks_memo[next(iter(self._checks_memo))]
        self._checks_memo[(plan, key.key_id, model)] = checks
        return checks

    def _estimate(self, ctx: RequestContext) -> int:
        """Prompt bytes / 4 plus the output the request allows: cheap, and on the high side."""
        body = ctx.body
        if body is None:
            return self._default_output
        output = ctx.fields().max_output
        if output is None or output < 0:
            output = self._default_output
        return len(body) // 4 + 1 + output

    async def _call(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        ctx: RequestContext,
        headers: list[tuple[bytes, bytes]],
        settle: list[Check],
        estimate: int,
    ) -> None:
        """Call the app with our ``headers`` on its response; then charge the token buckets in
        ``settle`` what the request used, less what they reserved."""
        status = 0

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                kept = [h for h in message.get("headers", ()) if h[0].lower() not in HEADER_NAMES]
                kept += headers
                message["headers"] = kept
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            if settle:
                used = ctx.usage_tokens
                if used is None:
                    # The usage layer did not say. A refusal or an upstream error used nothing we
                    # could know of; otherwise (success, a cancel mid-answer) assume the estimate.
                    used = 0 if status >= 400 else estimate
                limiter = self.limiter
                if limiter.immediate:
                    settle_now(limiter, settle, used)
                else:
                    done = settle_later(limiter, settle, used)
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        # Awaiting here would be cancelled again: finish the charge on its own.
                        background = asyncio.get_running_loop().create_task(done)
                        self._background.add(background)
                        background.add_done_callback(self._background.discard)
                    else:
                        await done

    # -- everything else -----------------------------------------------------------------------

    async def _not_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await pass_lifespan(self.app, self, scope, receive, send)
        else:
            await self.app(scope, receive, send)

    @staticmethod
    async def _misconfigured(ctx: RequestContext, send: Send, exc: ConfigurationError) -> None:
        key = ctx.key
        logger.error("key %s has an invalid rate limit: %s", key.key_id if key else "-", exc)
        await send_error(
            send, 500, "This key's rate limits are misconfigured.", dialect=_dialect(ctx)
        )

    @staticmethod
    async def _unavailable(send: Send, dialect: Dialect) -> None:
        await send_error(
            send,
            503,
            "Rate limits cannot be checked right now; please try again shortly.",
            dialect=dialect,
            code="rate_limit_unavailable",
            headers=[(b"retry-after", b"1")],
        )

    @staticmethod
    async def _refuse(
        send: Send,
        refused: tuple[Check, Decision],
        requests: Decision | None,
        tokens: Decision | None,
        dialect: Dialect,
    ) -> None:
        (_, lim, _, _), decision = refused
        wait = decision.retry_after
        message = (
            f"Rate limit reached: {lim} {_SCOPE_TEXT.get(lim.per, '')}. "
            f"Please try again in {format_reset(wait)}."
        )
        await send_error(
            send,
            429,
            message,
            dialect=dialect,
            type=dialect.specific(lim.kind),
            code="rate_limit_exceeded",
            headers=[(b"retry-after", retry_after(wait)), *rate_headers(requests, tokens)],
        )

    def __repr__(self) -> str:
        return f"<RateLimitMiddleware limits={len(self._limits)} limiter={self.limiter!r}>"


def _dialect(ctx: RequestContext) -> Dialect:
    route = ctx.route
    return route.endpoint.dialect if route is not None else OPENAI
