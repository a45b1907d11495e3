"""Cap the requests a key has in flight at once: 429 past ``KeyPolicy.max_concurrency``.

Rate limits bound how often a key may start requests; they do not bound how many long streams
it holds open at once, which is what ties up upstream connections and a provider's concurrency
quota. This layer counts, per key, the requests that have entered and not yet left the layers
below, and refuses the next one while the count is at the cap.

The count is per process: with several workers or replicas each enforces the cap on its own,
so a key may hold up to ``cap x processes`` requests. A slot is released however the request
ends (answer sent, error, timeout, client disconnect cancelling the task), because the release
is a synchronous ``finally`` that cancellation cannot skip; keys with nothing in flight are
removed from the map, so it never holds more entries than there are requests in flight.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Mapping, Sequence

from asgi_llmguard.context import SCOPE_KEY, RequestContext, get_context
from asgi_llmguard.errors import ConfigurationError, error_body, send_body
from asgi_llmguard.ratelimit.identity import ClientIdentity
from asgi_llmguard.routes import DIALECTS, OPENAI
from asgi_llmguard.types import ASGIApp, Receive, Scope, Send
from asgi_llmguard.wsession import denial_send

_MESSAGE = (
    "Too many concurrent requests for this key: wait for one to finish before starting another."
)
_HEADERS = ((b"retry-after", b"1"),)


class ConcurrencyMiddleware:
    """Refuse a key's request with 429 while it already has its cap of requests in flight.

    - The cap is the key's ``max_concurrency``, else ``max_per_key_default`` (``None``: no cap).
    - Without a resolved key (no auth layer in front), requests are grouped by client address
      (``trusted_proxies`` as for `RateLimitMiddleware`) or your ``identity(scope)``, and
      ``max_per_key_default`` applies to each.

    The refusal is ``rate_limit_exceeded``-shaped: type ``"requests"``, code
    ``"concurrency_limit_exceeded"``, ``Retry-After: 1``; Anthropic's shape on its routes.
    ``in_flight`` is a read-only view of the counts and ``rejected`` the refusals so far, for
    metrics and tests.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_per_key_default: int | None = None,
        trusted_proxies: Sequence[str] = (),
        identity: Callable[[Scope], str] | None = None,
    ) -> None:
        if max_per_key_default is not None and (
            isinstance(max_per_key_default, bool)
            or not isinstance(max_per_key_default, int)
            or max_per_key_default < 1
        ):
            raise ConfigurationError(
                f"max_per_key_default must be a positive integer or None, "
                f"not {max_per_key_default!r}"
            )
        self.app = app
        self._default = max_per_key_default
        self._identity = identity or ClientIdentity(trusted_proxies)
        self._counts: dict[str, int] = {}
        self.in_flight: Mapping[str, int] = types.MappingProxyType(self._counts)
        self.rejected = 0
        # Prebuilt refusals: nothing to compute when refusing under load.
        self._bodies = {
            dialect: error_body(
                429,
                _MESSAGE,
                dialect=dialect,
                type=dialect.specific("requests"),
                code="concurrency_limit_exceeded",
            )
            for dialect in DIALECTS
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] != "websocket":
                await self.app(scope, receive, send)
                return
            # A WebSocket session holds its slot from the upgrade to the close.
            send = denial_send(scope, send)
        ctx: RequestContext = scope.get(SCOPE_KEY) or get_context(scope)
        key = ctx.key
        if key is not None:
            cap = key.max_concurrency if key.max_concurrency is not None else self._default
            who = f"k={key.key_id}" if cap is not None else ""
        else:
            cap = self._default
            who = f"c={self._identity(scope)}" if cap is not None else ""
        if cap is None:
            await self.app(scope, receive, send)
            return
        counts = self._counts
        held = counts.get(who, 0)
        if held >= cap:
            self.rejected += 1
            route = ctx.route
            body = self._bodies[route.endpoint.dialect if route is not None else OPENAI]
            await send_body(send, 429, body, _HEADERS)
            return
        counts[who] = held + 1
        try:
            await self.app(scope, receive, send)
        finally:
            left = counts[who] - 1
            if left:
                counts[who] = left
            else:
                del counts[who]

    def __repr__(self) -> str:
        return f"<ConcurrencyMiddleware default={self._default} keys_in_flight={len(self._counts)}>"
