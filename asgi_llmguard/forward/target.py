"""`Target`: one upstream credential with everything about it computed before the first request."""

from __future__ import annotations

from asgi_llmguard.forward.headers import request_drop_set
from asgi_llmguard.lifecycle import Closable
from asgi_llmguard.providers.base import Provider, Upstream


class Target:
    """An upstream and everything about it that can be computed before the first request."""

    __slots__ = (
        "credential_id",
        "defaults",
        "drop",
        "first_event",
        "provider",
        "resets",
        "resource",
        "signs",
        "static",
        "upstream",
    )

    def __init__(self, upstream: Upstream, provider: Provider) -> None:
        self.upstream = upstream
        self.provider = provider
        self.static = provider.static_headers(upstream)
        self.defaults = provider.default_headers(upstream)
        self.drop = request_drop_set(self.static)
        self.credential_id = upstream.credential_id
        #: The provider applies the credential per request (`Provider.sign`).
        self.signs = provider.signs
        #: What the credential needs started with the gateway and closed with it (a Google
        #: token source), if anything: the provider's ``token_source(upstream)``.
        make = getattr(provider, "token_source", None)
        self.resource: Closable | None = make(upstream) if make is not None else None
        #: How its streamed answers' first event is read (`Provider.first_event`).
        self.first_event = provider.first_event
        #: Its rate-limit reset headers and their parsers (`Provider.reset_headers`).
        self.resets = provider.reset_headers
