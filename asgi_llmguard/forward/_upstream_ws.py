"""Opening the upstream side of a WebSocket session: the router's plan, the credential, the
headers, the subprotocols, and what a refused or failed handshake means for the client.

The router picks the credentials in order as for an HTTP request; one that cannot be reached,
times out, or refuses the handshake with 401/403/429/5xx counts as a failed attempt (circuit
breaker, cooldowns) and the next is tried. A refusal of the request itself (another 4xx) is
passed on at once. The client is refused with the last failure (502, 504, 429) when none accepts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from asgi_llmguard.context import InvalidBody, RequestContext
from asgi_llmguard.errors import send_error
from asgi_llmguard.forward.config import WebSocketLimits
from asgi_llmguard.forward.headers import RESPONSE_DROP, request_headers
from asgi_llmguard.forward.target import Target
from asgi_llmguard.wsession import WebSocketSession

if TYPE_CHECKING:
    import aiohttp

    from asgi_llmguard.forward.router import Router
    from asgi_llmguard.types import Scope, Send

logger = logging.getLogger("asgi_llmguard.forward")

#: The handshake's own headers: aiohttp writes the upstream's, uvicorn the client's.
HANDSHAKE = frozenset(
    {
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"sec-websocket-extensions",
        b"sec-websocket-protocol",
        b"sec-websocket-accept",
    }
)
_ACCEPT_DROP = RESPONSE_DROP | HANDSHAKE | {b"content-length", b"content-type"}
#: Subprotocols that carry a key (browsers cannot set headers): never sent upstream.
KEY_PROTOCOL_PREFIXES = ("openai-insecure-api-key.",)


async def connect_upstream(
    router: Router,
    client: aiohttp.ClientSession,
    limits: WebSocketLimits,
    ctx: RequestContext,
    session: WebSocketSession,
    scope: Scope,
    send: Send,
) -> tuple[aiohttp.ClientWebSocketResponse, str | None, list[tuple[bytes, bytes]]] | None:
    """Open the upstream socket on the first planned credential that accepts it; on failure
    refuse the client and return ``None``."""
    import aiohttp

    route = ctx.route
    assert route is not None
    api = route.endpoint.api
    plan = router.plan(api, session.model, scope["headers"])
    steps = [s for s in plan.steps if s.candidate.translation is None]
    if plan.steps and not steps:  # WebSocket sessions are never translated
        await send_error(
            send, 400, f"No upstream serves {session.model!r} over this API's WebSocket."
        )
        return None
    if not plan.steps:
        await send_error(
            send, plan.status if plan.error else 503, plan.error or "No upstream available."
        )
        return None
    offered = [
        p.strip()
        for name, value in scope["headers"]
        if name == b"sec-websocket-protocol"
        for p in value.decode("latin-1").split(",")
        if p.strip() and not p.strip().startswith(KEY_PROTOCOL_PREFIXES)
    ]
    breaker = router.breaker
    cooldowns = None if plan.solo else router.cooldowns
    status, message = 502, "Could not connect to the upstream."
    for index, step in enumerate(steps):
        candidate = step.candidate
        credential = candidate.credential_id
        model = step.model.base if step.model is not None else ""
        if index and model and router.available(candidate, model, time.time()) is not None:
            continue  # cooled down since the plan was made
        if breaker is not None and not breaker.allow(credential):
            continue
        target: Target = candidate.target  # type: ignore[assignment]
        try:
            url = target.provider.target(target.upstream, ctx, scope.get("query_string", b""))
        except InvalidBody as exc:
            if breaker is not None:
                breaker.release(credential)
            await send_error(send, 400, str(exc))
            return None
        headers = request_headers(
            scope["headers"], target.drop | HANDSHAKE, target.defaults, target.static
        )
        headers.append(("x-request-id", ctx.client_request_id or ctx.request_id))
        ctx.credential_id = credential
        started = time.time()
        refused = 0
        try:
            async with asyncio.timeout(limits.connect_timeout):
                ws = await client.ws_connect(
                    url,
                    headers=headers,
                    protocols=offered,
                    max_msg_size=limits.max_message_bytes,
                    autoping=True,
                    heartbeat=limits.heartbeat,
                    compress=0,
                )
        except TimeoutError:
            status, message = 504, "The upstream did not accept the WebSocket in time."
            ctx.upstream_error = "timeout"
        except aiohttp.WSServerHandshakeError as exc:
            refused = exc.status
            ctx.upstream_error = "refused"
            if 400 <= refused < 500 and refused not in (401, 402, 403, 429):
                # The request itself was refused (a bad model, a bad query): no other
                # credential would take it either.
                if breaker is not None:
                    breaker.record(credential, True)
                await send_error(
                    send,
                    refused,
                    f"The upstream refused the WebSocket ({refused}).",
                    code="upstream_error",
                )
                return None
            # The gateway's own credential refused, rate limited, or a server error.
            status = 429 if refused == 429 else 502
            message = f"The upstream refused the WebSocket ({refused})."
        except (aiohttp.ClientError, OSError):
            ctx.upstream_error = "connect"
        else:
            if breaker is not None:
                breaker.record(credential, True)
            if cooldowns is not None and model:
                await cooldowns.record_success(credential, model)
            break
        if breaker is not None:
            breaker.record(credential, False)
        if cooldowns is not None and (model or refused in (401, 402, 403)):
            await cooldowns.record_failure(
                credential,
                model,
                status=refused or None,
                kind=None if refused else (ctx.upstream_error or "connect"),
                started=started,
            )
    else:
        logger.warning("websocket %s: no upstream accepted (%s)", ctx.request_id, message)
        await send_error(send, status, message, code="upstream_error")
        return None
    ctx.upstream_error = None
    if plan.session is not None:
        router.remember(plan.session, ctx.credential_id or "")
    answer = getattr(ws, "_response", None)
    accept_headers: list[tuple[bytes, bytes]] = []
    if answer is not None:
        for name, value in answer.raw_headers:
            lowered = name.lower()
            if lowered not in _ACCEPT_DROP:
                accept_headers.append((lowered, value))
    return ws, ws.protocol, accept_headers
