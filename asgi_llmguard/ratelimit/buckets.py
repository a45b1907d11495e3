"""Which buckets a request is counted in, and the one place their store keys are written.

Each limit counts in its own buckets, named by whose they are and by the limit's ``ident``
(kind, amount, period, burst, models), so two limits of different sizes never share one:

- ``g|<ident>``: ``per="global"``, one bucket for the whole gateway;
- ``k=<key id>|<ident>``: ``per="key"``; without a key, ``c=<client>|<ident>`` (the client's
  address, or what the ``identity`` callable says);
- ``m=<model>|<ident>``: ``per="model"``, all keys together;
- ``k=<key id>|m=<model>|<ident>``: ``per="key_model"``.

`bucket_name` writes them, for the middleware that counts requests in them and for the admin API
that shows and resets them, so the two cannot drift apart. A `LimitSet` is one set of parsed
limits (the gateway's, or a key's own plus the gateway's) with its two `Plan`s worked out once:
what the set asks of a request on a metered route and on any other route.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from asgi_llmguard.ratelimit.spec import ParsedLimit

# Model names come from the request body: long ones are hashed so keys stay short.
_MAX_MODEL_IN_KEY = 128


def bucket_name(limit: ParsedLimit, owner: str | None, model: str | None) -> str:
    """The store key of ``limit``'s bucket for ``owner`` (`key_owner` / `client_owner`; unused
    by global and per-model limits) and ``model`` (used by per-model limits only)."""
    per = limit.per
    if per == "global":
        return f"g|{limit.ident}"
    if per == "key":
        return f"{owner}|{limit.ident}"
    if per == "model":
        return f"m={_model_part(model)}|{limit.ident}"
    return f"{owner}|m={_model_part(model)}|{limit.ident}"


def key_owner(key_id: str) -> str:
    """Whose buckets a virtual key's requests count in."""
    return f"k={key_id}"


def client_owner(identity: str) -> str:
    """Whose buckets a request without a key counts in: the client ``identity`` names."""
    return f"c={identity}"


def key_bucket_prefix(key_id: str) -> str:
    """What every bucket of a key's own (per key, per key and model) starts with."""
    return key_owner(key_id) + "|"


def _model_part(model: str | None) -> str:
    model = model or ""
    if len(model) <= _MAX_MODEL_IN_KEY:
        return model
    return "#" + hashlib.sha256(model.encode()).hexdigest()[:32]


class Plan:
    """What a set of limits asks of a request on one kind of route: the limits that apply
    (``candidates``; token limits only on metered routes), whether the request's token estimate
    is needed, and whether its model is needed to name its buckets."""

    __slots__ = ("candidates", "needs_model", "wants_tokens")

    def __init__(self, candidates: tuple[ParsedLimit, ...]) -> None:
        self.candidates = candidates
        self.wants_tokens = any(lim.kind == "tokens" for lim in candidates)
        self.needs_model = self.wants_tokens or any(lim.needs_model for lim in candidates)

    def buckets(
        self, model: str | None, owner: str | None, client: Callable[[], str] | None = None
    ) -> list[tuple[ParsedLimit, str]]:
        """The buckets a request for ``model`` counts in, in the order of the limits. ``owner``:
        `key_owner`; without a key, ``client`` names the owner, called only if a bucket needs it.
        """
        buckets: list[tuple[ParsedLimit, str]] = []
        for lim in self.candidates:
            if not lim.matches_model(model):
                continue
            per = lim.per
            if model is None and per in ("model", "key_model"):
                continue  # a per-model limit has no bucket for a request without a model
            if owner is None and per in ("key", "key_model"):
                assert client is not None
                owner = client()
            buckets.append((lim, bucket_name(lim, owner, model)))
        return buckets


class LimitSet:
    """One set of parsed limits, with its `Plan` for metered routes (the LLM endpoints whose
    tokens are counted) and for every other route; a plan is ``None`` when no limit applies."""

    __slots__ = ("limits", "metered", "unmetered")

    def __init__(self, limits: tuple[ParsedLimit, ...]) -> None:
        self.limits = limits
        self.metered = Plan(limits) if limits else None
        requests = tuple(lim for lim in limits if lim.kind == "requests")
        self.unmetered = Plan(requests) if requests else None


def dedupe(limits: tuple[ParsedLimit, ...]) -> tuple[ParsedLimit, ...]:
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
