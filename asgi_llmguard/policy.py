"""What a virtual key may do: its `KeyPolicy` and the `RateLimit` specs it carries.

Plain msgspec structs, so the config file, the key stores and the admin API decode and encode
them the same way, and the middlewares read them without conversion. A leaf module: it imports no
layer, and every layer may import it.
"""

from __future__ import annotations

from typing import Literal

import msgspec

RateKind = Literal["requests", "tokens"]
RateScope = Literal["key", "key_model", "model", "global"]
FailurePolicy = Literal["open", "closed"]


class RateLimit(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """One rate limit.

    - ``limit``: an amount per period, as the ``limits`` library writes it: ``"600/minute"``,
      ``"100000/minute"``, ``"2000000/day"``, ``"10/second"``.
    - ``kind``: ``"requests"`` counts requests; ``"tokens"`` counts LLM tokens (prompt +
      completion), charged when the response's usage is known.
    - ``per``: whose bucket it is: each ``"key"``, each (key, model) pair (``"key_model"``), each
      ``"model"`` across all keys, or one ``"global"`` bucket.
    - ``burst``: for the token-bucket algorithm, how much may be spent at once (default: the
      whole ``limit`` amount, i.e. a full bucket).
    - ``models``: only requests for these models (exact names or globs) count against it.
    - ``on_error``: when the shared store (Redis) cannot be reached in time, ``"closed"`` refuses
      the request (503) and ``"open"`` admits it; either way the failure is logged and counted.
    """

    limit: str
    kind: RateKind = "requests"
    per: RateScope = "key"
    burst: int | None = None
    models: tuple[str, ...] | None = None
    on_error: FailurePolicy = "closed"


class Budget(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """Spending limits in US dollars; each ``None`` means no limit of that kind.

    ``total`` never resets; ``hourly``, ``daily`` and ``monthly`` reset at the start of each UTC
    hour, day and calendar month.
    """

    total: float | None = None
    hourly: float | None = None
    daily: float | None = None
    monthly: float | None = None


class KeyPolicy(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """What one virtual key may do. ``None`` for an allow-list means "no restriction".

    ``key_id`` names the key in logs, records and metrics: a short hash prefix of the key unless
    the operator chose a name. The key itself is never part of a policy.
    """

    key_id: str
    name: str | None = None
    #: Provider APIs this key may call: ``"openai"``, ``"azure"``, ``"anthropic"``, ``"gemini"``.
    providers: frozenset[str] | None = None
    #: Operations this key may call, e.g. ``"chat.completions"``, ``"messages"``.
    endpoints: frozenset[str] | None = None
    #: Models this key may ask for: exact names or globs (``"gpt-4o*"``).
    models: tuple[str, ...] | None = None
    #: Responses-API / Messages tool types this key may use (``"web_search"``, ``"function"``).
    tool_types: frozenset[str] | None = None
    #: Remote MCP servers this key may reach (Anthropic ``mcp_servers``, Responses ``mcp`` tools):
    #: an entry matches the same URL, or every URL under it when it ends with ``/``.
    mcp_servers: tuple[str, ...] | None = None
    #: Whether ``background: true`` (Responses API) is allowed.
    allow_background: bool = True
    rate_limits: tuple[RateLimit, ...] = ()
    #: Requests of this key in flight at once (per process unless the limiter is shared).
    max_concurrency: int | None = None
    #: A lower request-body limit than the route's for this key.
    max_body_bytes: int | None = None
    #: Spending limits for this key (see `Budget`).
    budget: Budget | None = None
    #: Capture this key's request and response bodies (see `CaptureMiddleware`).
    capture: bool = False
    #: Free-form labels (team, user, environment), copied to usage records.
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    #: Revoked keys are refused like unknown ones (kept for the record).
    revoked: bool = False
    #: Request fields a translation to another wire format may leave out for this key, besides
    #: the gateway's ``[routing] translate_drop`` (``logprobs``, ``cache_control``, ...).
    translate_drop: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        for url in self.mcp_servers or ():
            if not url.startswith(("https://", "http://")) or len(url) <= len("https://"):
                raise ValueError(f"mcp_servers: {url[:80]!r} is not an http(s) URL")


def mcp_server_allowed(allowed: tuple[str, ...], url: str) -> bool:
    """Whether ``url`` is one of ``allowed``: equal to an entry, or under an entry ending in
    ``/`` (``https://mcp.example.com/`` allows ``https://mcp.example.com/sse``, while
    ``https://mcp.example.com`` allows only itself, not ``https://mcp.example.com.evil``)."""
    return any(url == a or (a.endswith("/") and url.startswith(a)) for a in allowed)
