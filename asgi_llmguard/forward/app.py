"""`ForwardingApp`: the thin ASGI app at the bottom of the stack that relays to the upstream.

It reads the request body once (or takes the one a layer above already read), asks the `Router`
which credentials may serve it and in which order, sends it to the first, and relays the answer
chunk by chunk (`relay`). A credential that fails before the answer started -- it could not be
reached, or it answered 429/5xx -- cools down and the next one is tried, within the retry policy;
once a byte went to the client, nothing is retried. A client that leaves cancels the upstream
exchange at once.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import orjson

from asgi_llmguard.context import (
    SCOPE_KEY,
    Attempt,
    ClientDisconnected,
    InvalidBody,
    RequestContext,
    read_body,
)
from asgi_llmguard.errors import (
    ConfigurationError,
    send_error,
    send_route_error,
    worth_waiting,
)
from asgi_llmguard.forward.config import PoolLimits, Timeouts, WebSocketLimits
from asgi_llmguard.forward.cooldowns import retry_after_hint
from asgi_llmguard.forward.engines import (
    AiohttpEngine,
    Engine,
    HttpxEngine,
    UpstreamConnectError,
    UpstreamError,
)
from asgi_llmguard.forward.headers import request_headers
from asgi_llmguard.forward.pools import Candidate
from asgi_llmguard.forward.relay import (
    STATUS_FOR,
    ReadBody,
    Watch,
    end_interrupted,
    hold_first_event,
    relay,
)
from asgi_llmguard.forward.resilience import (
    backoff_delay,
    sent_nothing,
)
from asgi_llmguard.forward.router import Cooldowns, Plan, Router, Routing, Step
from asgi_llmguard.forward.target import Target
from asgi_llmguard.forward.translation import PAIRS, Translation, identity_target
from asgi_llmguard.forward.warmup import Warmer, warm_request
from asgi_llmguard.forward.websocket import WebSocketRelay
from asgi_llmguard.lifecycle import Closable, Resource, close_all, serve_lifespan, start_all
from asgi_llmguard.providers import OWNERS, provider_for
from asgi_llmguard.providers.aws_auth import AwsCredentialsError
from asgi_llmguard.providers.base import StrHeaders, Upstream
from asgi_llmguard.providers.google_auth import GoogleCredentialsError
from asgi_llmguard.providers.translate.model import Untranslatable
from asgi_llmguard.routes import Api, Dialect
from asgi_llmguard.types import Receive, Scope, Send

if TYPE_CHECKING:
    import httpx

logger = logging.getLogger("asgi_llmguard.forward")

#: Called with each warm-up attempt, its route API and operation (its usage is recorded as
#: ``warmup``, charged to no key).
WarmupListener = Callable[[Attempt, Api, str], None]


async def _watch_disconnect(receive: Receive, task: asyncio.Task[object], watch: Watch) -> None:
    # Once the body is read, the next message a server sends is http.disconnect, when the client
    # goes away (or when the response is complete). Servers only report a disconnect through
    # receive(): uvicorn's send() goes quiet instead of raising.
    while (await receive())["type"] != "http.disconnect":
        pass
    if not watch.finished:
        watch.disconnected = True
        task.cancel()


class _Failure:
    """An attempt that ended before any byte reached the client: the exchange failed
    (``error``), or the upstream answered with a status worth retrying elsewhere."""

    __slots__ = ("began", "credential", "error", "started_at", "status")

    def __init__(
        self,
        credential: str,
        status: int,
        error: UpstreamError | None,
        started_at: float,
        began: float,
    ) -> None:
        self.credential = credential
        self.status = status
        self.error = error
        self.started_at = started_at
        self.began = began


class ForwardingApp(Resource):
    """Relay requests to the configured upstreams.

    ``upstreams``: one `Upstream` per credential. A route is served by the upstreams that speak
    its API (OpenAI routes: ``openai`` and ``azure`` upstreams; Azure deployment routes: ``azure``;
    Anthropic routes: ``anthropic``) and serve the model asked for (``Upstream.models``). With
    several, ``routing`` (a `Routing`) says how to choose: selector, aliases, affinity,
    cooldowns, circuit breaker, retries, warm-up.

    ``client``: an ``httpx.AsyncClient`` to use instead of the default pooled aiohttp session
    (custom transports, ``httpx.MockTransport`` in tests). It stays the caller's to close.

    ``timeouts``, ``limits``: see `Timeouts` and `PoolLimits`. ``trust_env``: honour
    ``HTTP(S)_PROXY``/``NO_PROXY`` (aiohttp engine; an httpx client has its own setting).

    ``on_warmup``: receives each warm-up attempt, so its cost can be recorded.

    ``websockets``: the `WebSocketLimits` of the WebSocket relay (the Responses API's WebSocket
    mode, the Realtime API; see `asgi_llmguard.forward.websocket`).

    The aiohttp session is opened on the first request and closed by `aclose`: on lifespan
    shutdown when the forwarder is the app served, by the `Gateway` that holds it, or by
    ``async with`` (lifespan does not reach an app mounted inside another).
    """

    def __init__(
        self,
        upstreams: Sequence[Upstream],
        *,
        client: httpx.AsyncClient | None = None,
        timeouts: Timeouts = Timeouts(),
        limits: PoolLimits = PoolLimits(),
        trust_env: bool = True,
        routing: Routing | None = None,
        on_warmup: WarmupListener | None = None,
        websockets: WebSocketLimits = WebSocketLimits(),
    ) -> None:
        if not upstreams:
            raise ConfigurationError("ForwardingApp needs at least one Upstream")
        candidates: dict[Api, list[Candidate]] = {}
        routing = routing if routing is not None else Routing()
        #: What the credentials need started with the gateway (Google token sources).
        self.credential_resources: list[Closable] = []
        seen: set[str] = set()
        # The route APIs some upstream speaks natively (its provider owns them).
        native = {
            api
            for u in upstreams
            if isinstance(u, Upstream)
            for api in provider_for(u.provider).owns
        }
        for index, upstream in enumerate(upstreams):
            if not isinstance(upstream, Upstream):
                raise ConfigurationError(f"upstreams must be Upstream objects, got {upstream!r}")
            if upstream.credential_id in seen:
                raise ConfigurationError(
                    f"Two upstreams share the credential id {upstream.credential_id!r}; give "
                    "each a distinct name."
                )
            seen.add(upstream.credential_id)
            provider = provider_for(upstream.provider)
            target = Target(upstream, provider)
            if target.resource is not None:
                self.credential_resources.append(target.resource)
            for api in sorted(provider.serves):
                models = provider.pool_models(upstream, api, api in native)
                if models is not None and not models:
                    continue
                candidates.setdefault(api, []).append(Candidate(upstream, index, target, models))
            if not routing.translate:
                continue
            for (api, provider_name), _ in PAIRS.items():
                # A credential that lists its models may serve the other format's route for
                # them, translated (see `Router.pool`).
                if provider_name == upstream.provider and upstream.models:
                    translation = Translation(api, upstream, provider, routing.translate_drop)
                    candidates.setdefault(api, []).append(
                        Candidate(upstream, index, identity_target(target), None, translation)
                    )
        self.routing = routing if routing is not None else Routing()
        #: Each route API's thinking rewrite, by the provider that owns its wire.
        self._thinking = {api: owner.apply_thinking for api, owner in OWNERS.items()}
        self.router = Router(candidates, self.routing)
        self.upstreams = tuple(upstreams)
        self.engine: Engine = (
            HttpxEngine(client, timeouts=timeouts)
            if client is not None
            else AiohttpEngine(timeouts=timeouts, limits=limits, trust_env=trust_env)
        )
        warmup = self.routing.warmup
        self.warmer = Warmer(warmup) if warmup is not None else None
        self._on_warmup = on_warmup
        engine = self.engine
        self.websockets = WebSocketRelay(
            self.router,
            engine.session if isinstance(engine, AiohttpEngine) else None,
            websockets,
        )

    @property
    def cooldowns(self) -> object | None:
        """The cooldown store (``snapshot()``, ``reset()``), or ``None`` when cooldowns are off."""
        return self.router.cooldowns

    @property
    def breaker(self) -> object | None:
        return self.router.breaker

    def cooldowns_active(self) -> int:
        cooldowns = self.router.cooldowns
        return len(cooldowns.snapshot()) if cooldowns is not None else 0

    async def start(self) -> None:
        """Start the upstream pool and the cooldown store (a shared one learns its cluster's
        layout); idempotent. Connections open on first use."""
        await self.engine.start()
        if self.router.cooldowns is not None:
            await self.router.cooldowns.start()
        await start_all(self.credential_resources)

    async def aclose(self) -> None:
        if self.warmer is not None:
            await self.warmer.aclose()
        if self.router.cooldowns is not None:
            await self.router.cooldowns.aclose()
        await self.websockets.aclose()
        await self.engine.aclose()
        await close_all(self.credential_resources)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http":
            if kind == "lifespan":
                await serve_lifespan(self, receive, send)
            elif kind == "websocket":
                await self.websockets(scope, receive, send)
            return
        ctx: RequestContext | None = scope.get(SCOPE_KEY)
        if ctx is None:  # no classifier in front (`get_context`, inlined)
            ctx = scope[SCOPE_KEY] = RequestContext.from_scope(scope)
        route = ctx.route
        if route is None:
            await send_route_error(send, ctx.method, ctx.path, ctx.route_error)
            return
        endpoint = route.endpoint
        api = endpoint.api
        dialect = endpoint.dialect
        try:
            body = ctx.body if ctx.body is not None else await read_body(ctx, receive)
            model = ctx.model if endpoint.json_body or route.model is not None else None
        except ClientDisconnected:
            ctx.disconnected = True
            return
        except InvalidBody as exc:
            await send_error(send, 400, str(exc), dialect=dialect)
            return
        plan = self.router.plan(
            api, model, scope["headers"], deployment=route.deployment is not None
        )
        if not plan.steps:
            await self._unroutable(send, plan, model, api, dialect)
            return
        if (
            self.warmer is not None
            and not plan.pinned
            and not endpoint.read_only
            and self.router.selector == "fill-first"
        ):
            self._warm_secondaries(plan, api)

        task: asyncio.Task[object] = asyncio.current_task()  # type: ignore[assignment]
        watch = Watch()
        watcher = asyncio.get_running_loop().create_task(_watch_disconnect(receive, task, watch))
        try:
            # Try the planned credentials in order until one answers the client. Each `_attempt`
            # either answers it or returns the `_Failure` that ended it before any byte reached
            # the client; the loop decides what comes next: the next credential after a backoff,
            # or the error to send when no retry is left.
            router = self.router
            retry = self.routing.retry
            cooldowns = None if plan.solo else router.cooldowns
            breaker = router.breaker
            deadline = ctx.start + retry.max_time
            steps = plan.steps
            last = len(steps) - 1
            made = 0
            for index, step in enumerate(steps):
                candidate = step.candidate
                if index:
                    model = step.model.base if step.model is not None else ""
                    if router.available(candidate, model, time.time()) is not None:
                        continue  # cooled down by a concurrent request since the plan was made
                if breaker is not None and not breaker.allow(candidate.credential_id):
                    continue
                made += 1
                final = (
                    index == last or made >= retry.max_attempts or time.perf_counter() >= deadline
                )
                failure = await self._attempt(
                    ctx, plan, step, body, scope, send, watch, final, cooldowns, dialect
                )
                if failure is None:
                    return
                if failure is _SKIPPED:
                    made -= 1  # nothing was sent: not an attempt
                    continue
                error = failure.error
                if error is not None and (final or not sent_nothing(error)):
                    ctx.upstream_error = error.kind
                    if isinstance(error, _NoCredential):
                        await _send_no_credential(send, error, dialect)
                        return
                    await send_error(
                        send,
                        STATUS_FOR[error.kind],
                        str(error),
                        dialect=dialect,
                        code="upstream_error",
                    )
                    return
                self._failed(ctx, failure)
                await asyncio.sleep(backoff_delay(retry, made))
            # Every planned credential was skipped (cooling, breaker half-open) before any attempt.
            await self._unroutable(
                send, Plan([], cooling_until=time.time() + 1), ctx.model, api, dialect
            )
        except asyncio.CancelledError:
            if watch.disconnected and task.uncancel() == 0:
                ctx.disconnected = True
                logger.debug("client disconnected: %s cancelled upstream", ctx.request_id)
                return
            # Cancelled from outside: the server's graceful-shutdown period is over. End the
            # answer cleanly rather than cutting it: the client learns why, and the usage layer
            # records what was produced.
            if not watch.disconnected and not watch.finished:
                ctx.upstream_error = "shutdown"
                await end_interrupted(send, watch, dialect)
            raise
        finally:
            watch.finished = True
            watcher.cancel()

    async def _unroutable(
        self, send: Send, plan: Plan, model: str | None, api: Api, dialect: Dialect
    ) -> None:
        if plan.error is not None:
            await send_error(send, plan.status, plan.error, dialect=dialect)
            return
        wait = max(1, math.ceil((plan.cooling_until or time.time()) - time.time()))
        await send_error(
            send,
            429,
            f"Every upstream credential for {model or api!s} is cooling down after errors or "
            f"rate limits; retry after {wait} s.",
            dialect=dialect,
            type=dialect.specific("rate_limit_exceeded"),
            code="upstream_cooling_down",
            headers=[(b"retry-after", str(wait).encode())],
            # a credential resting for an hour (after a 401) is not worth a client's wait
            should_retry=worth_waiting(wait),
        )

    def _body_for(self, ctx: RequestContext, step: Step, body: bytes) -> bytes:
        """The body for one attempt: unchanged unless routing changed the model."""
        parsed = step.model
        route = ctx.route
        if parsed is None or route is None or route.deployment is not None:
            ctx.upstream_model = None
            return body
        name = ctx.model
        if parsed.thinking is None and parsed.base == name:
            ctx.upstream_model = None
            return body
        ctx.upstream_model = parsed.base
        thinking = parsed.thinking
        if route.model is not None:
            # The model is in the path: the provider's `target` sends it there.
            if thinking is None:
                return body
            try:
                document = orjson.loads(body)
            except orjson.JSONDecodeError:
                document = None
            if not isinstance(document, dict):
                raise InvalidBody("A thinking suffix needs a JSON object as the request body")
        else:
            document = orjson.loads(body)
            document["model"] = parsed.base
        if thinking is not None:
            endpoint = route.endpoint
            self._thinking[endpoint.api](endpoint.operation, document, thinking, parsed.base)
        return orjson.dumps(document)

    async def _attempt(
        self,
        ctx: RequestContext,
        plan: Plan,
        step: Step,
        body: bytes,
        scope: Scope,
        send: Send,
        watch: Watch,
        final: bool,
        cooldowns: Cooldowns | None,
        dialect: Dialect,
    ) -> _Failure | None:
        """One request to ``step``'s credential, its outcome recorded (breaker, cooldowns).

        Returns ``None`` once the client has its answer: the upstream's, relayed (whatever its
        status when ``final``), or a 400 for a body this upstream cannot take. Otherwise returns
        the `_Failure` that ended the attempt before any byte reached the client: the exchange
        failed, or (not ``final``) the upstream answered with a retryable status.
        """
        router = self.router
        breaker = router.breaker
        candidate = step.candidate
        credential = candidate.credential_id
        model = step.model.base if step.model is not None else ""
        target: Target = candidate.target  # type: ignore[assignment]
        try:
            if candidate.translation is None:
                attempt_body = self._body_for(ctx, step, body)
                url = target.provider.target(target.upstream, ctx, scope["query_string"])
            else:
                translation: Translation = candidate.translation  # type: ignore[assignment]
                attempt_body, exchange = translation.prepare(ctx, step.model, body)
                url = translation.url
        except (InvalidBody, ValueError) as exc:
            if breaker is not None:
                breaker.release(credential)
            if not final and candidate.translation is not None:
                # This member cannot carry the request in its format; the next one may.
                return _SKIPPED
            await send_error(
                send,
                400,
                _refusal(exc),
                dialect=dialect,
            )
            return None
        headers = request_headers(scope["headers"], target.drop, target.defaults, target.static)
        # The caller's id (else ours) travels upstream so provider-side logs can be matched.
        headers.append(("x-request-id", ctx.client_request_id or ctx.request_id))
        ctx.credential_id = credential
        started_at = time.time()
        began = time.perf_counter()
        outcome_recorded = False
        try:
            try:
                if target.signs:  # a credential applied per request, after every header
                    url = _signed(target, ctx.method, url, headers, attempt_body)
                resp = await self.engine.send(ctx.method, url, headers, attempt_body)
            except UpstreamError as exc:
                outcome_recorded = True
                if breaker is not None:
                    breaker.record(credential, False)
                if cooldowns is not None and model:
                    await cooldowns.record_failure(
                        credential, model, status=None, kind=exc.kind, started=started_at
                    )
                logger.warning(
                    "upstream %s failed before answering %s: %s",
                    credential,
                    ctx.request_id,
                    exc,
                )
                return _Failure(credential, 0, exc, started_at, began)
            try:
                status = resp.status
                held = b""
                if (
                    status == 200
                    and self.routing.hold_first_event
                    and not final
                    and not plan.pinned
                ):
                    held, status = await hold_first_event(resp, target.first_event)
                retry_statuses = self.routing.retry.statuses
                failed = status in retry_statuses or status in (401, 402, 403)
                if breaker is not None:
                    outcome_recorded = True
                    breaker.record(credential, not failed)
                if cooldowns is not None and (model or status in (401, 402, 403)):
                    if failed:
                        hint = retry_after_hint(resp.headers, time.time(), target.resets)
                        if hint is None and status == 429 and target.provider.hints_in_body:
                            # The wait is in the (small) error body: read it, relay it as read.
                            body_read = await resp.read_all()
                            hint = target.provider.retry_hint(body_read)
                            resp = ReadBody(resp, body_read)
                        await cooldowns.record_failure(
                            credential,
                            model,
                            status=status,
                            retry_after=hint,
                            started=started_at,
                        )
                    elif status < 400:
                        await cooldowns.record_success(credential, model)
                if failed and not final and status in retry_statuses:
                    return _Failure(credential, status, None, started_at, began)
                if plan.session is not None and status < 400:
                    router.remember(plan.session, credential)
                if candidate.translation is not None:
                    aliases = router.aliases
                    rewrite = aliases is not None and aliases.rewrite_response_model
                    await exchange.relay(
                        ctx, resp, send, watch, dialect, plan.alias if rewrite else None, held
                    )
                    return None
                await relay(
                    ctx,
                    resp,
                    send,
                    watch,
                    dialect,
                    aliases=router.aliases,
                    alias=plan.alias,
                    held=held,
                )
                return None
            finally:
                await resp.aclose()
        finally:
            if breaker is not None and not outcome_recorded:
                breaker.release(credential)

    @staticmethod
    def _failed(ctx: RequestContext, failure: _Failure) -> None:
        """Keep the record of an attempt the next credential replaces (the usage layer's)."""
        error = failure.error
        attempt = Attempt(
            failure.credential,
            ctx.upstream_model or ctx.model,
            status=failure.status,
            error=error.kind if error is not None else None,
            started_at=failure.started_at,
            latency=time.perf_counter() - failure.began,
        )
        if ctx.attempts is None:
            ctx.attempts = [attempt]
        else:
            ctx.attempts.append(attempt)

    # ------------------------------------------------------------------ warm-up

    def _warm_secondaries(self, plan: Plan, api: Api) -> None:
        warmer = self.warmer
        assert warmer is not None
        pool = plan.pool
        if len(pool) < 2 or plan.steps[0].candidate is not pool[0]:
            return
        step = plan.steps[0]
        model = step.model.base if step.model is not None else None
        if not model:
            return
        now = time.time()
        for candidate in pool[1:]:
            upstream = candidate.upstream
            provider = f"{upstream.provider}:{upstream.base_url}"
            if warmer.is_warm(provider, candidate.credential_id):
                continue
            if self.router.available(candidate, model, now) is not None:
                continue
            warmer.maybe_warm(
                provider,
                candidate.credential_id,
                lambda c=candidate: self._warm(c, api, model),  # type: ignore[misc]
            )

    async def _warm(self, candidate: Candidate, api: Api, model: str) -> bool:
        policy = self.routing.warmup
        assert policy is not None
        target: Target = candidate.target  # type: ignore[assignment]
        translation = candidate.translation
        if isinstance(translation, Translation):
            api = translation.served_api  # warmed in its own format
        return await warm_request(
            self.engine, target, candidate.credential_id, api, model, policy, self._on_warmup
        )


#: `_attempt`'s answer for a member of another format that cannot take the request, when
#: another member follows: skipped, nothing sent, nothing recorded.
_SKIPPED = _Failure("", 0, None, 0.0, 0.0)


def _refusal(exc: Exception) -> str:
    """The message of a 400 for a body this attempt's upstream cannot take."""
    if isinstance(exc, Untranslatable):
        return (
            f"The request cannot be served: {exc.field!r} cannot be translated for this "
            f"model's upstream ({exc.reason})."
        )
    return str(exc)


class _NoCredential(UpstreamConnectError):
    """The upstream credential has nothing to sign with (no Google access token, no valid AWS
    credentials): nothing was sent. ``retry_after`` is set when the failure looks temporary."""

    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message, "credential")
        self.retry_after = retry_after


def _signed(target: Target, method: str, url: str, headers: StrHeaders, body: bytes) -> str:
    """The provider's `sign`; a credential with nothing to sign with fails the attempt before
    anything is sent (another credential may serve it)."""
    try:
        return target.provider.sign(target.upstream, method, url, headers, body)
    except GoogleCredentialsError as exc:
        raise _NoCredential(str(exc), exc.retry_after if exc.retryable else None) from None
    except AwsCredentialsError as exc:
        raise _NoCredential(str(exc), exc.retry_after) from None


async def _send_no_credential(send: Send, error: _NoCredential, dialect: Dialect) -> None:
    """503 in the caller's dialect: the gateway cannot authenticate upstream right now. Its
    message names neither the credential nor the reason (the gateway's log does)."""
    wait = error.retry_after
    if wait is None:
        await send_error(
            send,
            503,
            "The gateway's upstream credential was refused by its provider; the gateway's "
            "operator must replace it.",
            dialect=dialect,
            code="upstream_credential_unavailable",
            should_retry=False,
        )
        return
    seconds = max(1, math.ceil(wait))
    await send_error(
        send,
        503,
        f"The gateway has no valid upstream credential yet; retry after {seconds} s.",
        dialect=dialect,
        code="upstream_credential_unavailable",
        headers=[(b"retry-after", str(seconds).encode())],
        should_retry=worth_waiting(seconds),
    )
