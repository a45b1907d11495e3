"""Credential routing: which upstream credential serves a request, and in which order the others
are tried when it fails.

Every configured `Upstream` is one credential. For a request, the *pool* is every credential
that speaks the route's API and serves the model; a *selector* orders it (`pools`: round-robin,
weighted, fill-first, priority).

Credentials cooling down (see `cooldowns`) or behind an open circuit breaker are skipped; the
rest form the attempt order the forwarder walks through on retryable failures.

A request may be *pinned* to one credential by name (a header), or belong to a *sticky session*
(another header): then it only ever goes to that credential, without fallback or warm-up, so a
conversation keeps its provider-side prompt cache.

Model aliases (`AliasTable`) are resolved here too: an alias pool is tried member by member, each
member with its own credential pool. All state is bounded by configuration, except the sessions
map, which is an LRU with a TTL and a size cap. Pure logic apart from the clock; no I/O.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import msgspec

from asgi_llmguard.errors import ConfigurationError
from asgi_llmguard.forward.aliases import AliasTable
from asgi_llmguard.forward.breaker import BreakerPolicy, CircuitBreaker
from asgi_llmguard.forward.cooldowns import CooldownPolicy, MemoryCooldowns, RedisCooldowns
from asgi_llmguard.forward.pools import Candidate, Pool, order
from asgi_llmguard.providers.thinking import ParsedModel, parse_model
from asgi_llmguard.routes import Api

Selector = Literal["round-robin", "weighted", "fill-first", "priority"]
SELECTORS: tuple[Selector, ...] = ("round-robin", "weighted", "fill-first", "priority")
Cooldowns = MemoryCooldowns | RedisCooldowns

# Statuses worth another credential: rate limited, overloaded, or a server-side failure.
DEFAULT_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504, 529})


class RetryPolicy(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How many attempts one request may make, and how long it may spend on them
    (``[routing.retry]``).

    Only failures that provably happened before the upstream accepted the request (a connection
    that could not be opened) or that the upstream answered with a retryable status are retried,
    and only before any byte reached the client.
    """

    #: Attempts in all, the first included (``1``: never retry).
    max_attempts: int = 3
    #: Seconds from the request's arrival after which no new attempt starts.
    max_time: float = 30.0
    #: Jittered exponential backoff between attempts: ``backoff * 2**n``, at most ``backoff_cap``.
    backoff: float = 0.05
    backoff_cap: float = 2.0
    statuses: frozenset[int] = DEFAULT_RETRY_STATUSES

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigurationError("retry max_attempts must be at least 1")
        if self.max_time <= 0 or self.backoff < 0 or self.backoff_cap < self.backoff:
            raise ConfigurationError(
                "retry max_time must be positive and 0 <= backoff <= backoff_cap"
            )
        msgspec.structs.force_setattr(self, "statuses", frozenset(self.statuses))


class WarmupPolicy(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Background warm-up of the secondary credentials while fill-first uses the primary
    (``[routing.warmup]``)."""

    #: A credential that answered a warm-up with 2xx is not warmed again for this long.
    ttl: float = 300.0
    #: Each warm-up request's own deadline, whatever happens to the request that started it.
    timeout: float = 15.0
    #: ``max_tokens`` of the warm-up request (the smallest answer a provider accepts).
    max_tokens: int = 1
    prompt: str = "ping"
    #: Bound of the TTL map (entries are pruned when they expire).
    max_entries: int = 10_000

    def __post_init__(self) -> None:
        if self.ttl <= 0 or self.timeout <= 0 or self.max_tokens < 1 or self.max_entries < 1:
            raise ConfigurationError("warmup ttl, timeout, max_tokens and max_entries must be > 0")


class Routing(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Routing options of `ForwardingApp` (``routing=``); every field has a working default.

    The config file's ``[routing]`` section decodes into this struct (plus the URL of a shared
    cooldown store, which only the config file resolves)."""

    selector: Selector = "round-robin"
    #: Public model name -> upstream model names (see `AliasTable`).
    aliases: Mapping[str, Sequence[str]] = msgspec.field(default_factory=dict)
    #: Put the alias back as the ``model`` of answers, so clients see the name they asked for.
    rewrite_response_model: bool = True
    #: A header naming the credential (its ``name``) a request must use; ``None`` (or ``""``,
    #: as a TOML file writes it): off.
    pin_header: str | None = "x-llmguard-credential"
    #: A header carrying a session id; requests of one session stay on one credential.
    session_header: str | None = None
    session_ttl: float = 3600.0
    max_sessions: int = 100_000
    #: Cooldown durations (or a ready store, e.g. `RedisCooldowns` shared by replicas).
    cooldowns: CooldownPolicy | MemoryCooldowns | RedisCooldowns | None = msgspec.field(
        default_factory=CooldownPolicy
    )
    #: A circuit breaker per credential; ``None``: off.
    breaker: BreakerPolicy | None = None
    retry: RetryPolicy = msgspec.field(default_factory=RetryPolicy)
    #: Warm the secondary credentials while fill-first serves from the primary; ``None``: off.
    warmup: WarmupPolicy | None = None
    #: Hold a stream's first event until it arrives, so an error sent inside an HTTP 200 stream
    #: can still fail over to another credential (costs that event's latency; off by default).
    hold_first_event: bool = False
    #: Serve a Chat Completions or Messages route from an upstream of the other format when
    #: only that upstream lists the model asked for (directly or as an alias member), through
    #: the translation layer; ``False``: never.
    translate: bool = True
    #: Request fields a translation may leave out rather than refuse the request with a 400,
    #: as the client's format names them (``cache_control``, ``logprobs``, ...); what was left
    #: out is recorded on the usage record.
    translate_drop: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        msgspec.structs.force_setattr(self, "translate_drop", frozenset(self.translate_drop))
        if self.pin_header == "":
            msgspec.structs.force_setattr(self, "pin_header", None)
        if self.selector not in SELECTORS:
            raise ConfigurationError(
                f"routing selector must be one of {', '.join(SELECTORS)}, not {self.selector!r}"
            )
        for name in (self.pin_header, self.session_header):
            if name is not None and (not name or name.lower() != name):
                raise ConfigurationError(f"routing header names must be lower-case: {name!r}")
        if self.session_ttl <= 0 or self.max_sessions < 1:
            raise ConfigurationError("routing session_ttl and max_sessions must be positive")


@dataclass(slots=True)
class Step:
    """One planned attempt: which credential, with which upstream model."""

    candidate: Candidate
    #: The upstream model with its thinking suffix parsed (``None`` when the request has none).
    model: ParsedModel | None


@dataclass(slots=True)
class Plan:
    """The attempt order for one request, or why there is none."""

    steps: list[Step]
    #: The caller's model when it was an alias (answers are rewritten back to it).
    alias: str | None = None
    #: The request is pinned (header or sticky session): no fallback elsewhere, no warm-up.
    pinned: bool = False
    #: The session id whose credential is remembered after a success.
    session: str | None = None
    #: When every credential is cooling: the earliest time one comes back (epoch seconds).
    cooling_until: float | None = None
    #: Not routable: the message for the client (unknown pinned credential, bad suffix, ...),
    #: and its status.
    error: str | None = None
    status: int = 400
    #: The first pool, in selector order (warm-up looks at its secondaries).
    pool: tuple[Candidate, ...] = ()
    #: One credential in all: nothing to fail over to, so no cooldowns are kept or applied
    #: (the upstream's own answer, ``Retry-After`` included, reaches the client every time).
    solo: bool = False


class Router:
    """Order credentials for requests. One per `ForwardingApp`; see the module docstring."""

    def __init__(
        self,
        candidates: Mapping[Api, Sequence[Candidate]],
        routing: Routing,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.routing = routing
        self.selector = routing.selector
        self._by_api = {api: tuple(c) for api, c in candidates.items()}
        self.aliases = (
            AliasTable(routing.aliases, rewrite_response_model=routing.rewrite_response_model)
            if routing.aliases
            else None
        )
        cooldowns = routing.cooldowns
        self.cooldowns: Cooldowns | None = (
            MemoryCooldowns(cooldowns) if isinstance(cooldowns, CooldownPolicy) else cooldowns
        )
        self.breaker = CircuitBreaker(routing.breaker) if routing.breaker is not None else None
        self._open_for = routing.breaker.open_for if routing.breaker is not None else 0.0
        self._clock = clock
        # (api, member ids) -> pool: bounded by the configuration's distinct model patterns.
        self._pools: dict[tuple[Api, tuple[int, ...]], Pool] = {}
        # (api, model) -> pool key; model names are the caller's, so this cache is capped.
        self._lookup: OrderedDict[tuple[Api, str], Pool] = OrderedDict()
        self._sessions: OrderedDict[str, tuple[str, float]] = OrderedDict()
        # Plans shared by every request for a model served by a single credential (read-only).
        self._solo: dict[tuple[Api, str | None, bool], Plan] = {}
        by_name: dict[str, Candidate] = {}
        for pool in self._by_api.values():
            for c in pool:
                if c.translation is None:  # a pin names a credential in its own format
                    by_name.setdefault(c.credential_id, c)
        self._by_name = by_name
        self._pin_b = routing.pin_header.encode() if routing.pin_header else None
        self._session_b = routing.session_header.encode() if routing.session_header else None

    # ------------------------------------------------------------------ pools and selection

    def pool(self, api: Api, model: str) -> Pool | None:
        key = (api, model)
        pool = self._lookup.get(key)
        if pool is not None:
            return pool
        matching = [c for c in self._by_api.get(api, ()) if c.matches(model)]
        members = tuple(c for c in matching if c.translation is None)
        if not any(c.lists for c in members):
            # No credential of the route's format lists the model: one of another format that
            # lists it serves it, translated (a catch-all credential never takes it from one).
            foreign = tuple(c for c in matching if c.translation is not None)
            if foreign:
                members = foreign
        if not members:
            return None
        pool_key = (api, tuple(c.index for c in members))
        pool = self._pools.setdefault(pool_key, Pool(members))
        self._lookup[key] = pool
        if len(self._lookup) > 4096:
            self._lookup.popitem(last=False)
        return pool

    def available(self, candidate: Candidate, model: str, now: float) -> float | None:
        """``None`` when the credential may be used for ``model`` now; else when it comes back."""
        cooldowns = self.cooldowns
        if cooldowns is not None:
            until = cooldowns.cooling_until(candidate.credential_id, model)
            if until is not None and until > now:
                return until
        breaker = self.breaker
        if breaker is not None and breaker.state(candidate.credential_id) == "open":
            return now + self._open_for
        return None

    # ------------------------------------------------------------------ the plan

    def plan(
        self,
        api: Api,
        model: str | None,
        headers: Iterable[tuple[bytes, bytes]] = (),
        *,
        deployment: bool = False,
    ) -> Plan:
        """The attempts for one request to ``api`` asking for ``model``.

        ``deployment``: the model comes from an Azure deployment path, so aliases and suffixes
        do not apply. Advances the selectors' rotation (once per request).
        """
        pin = session = None
        pin_b = self._pin_b
        if self._session_b is not None:
            pin, session = self._affinity(headers)
        elif pin_b is not None:  # the default: a pin header only, one comparison per header
            for name, value in headers:
                if name == pin_b:
                    pin = value.decode("latin-1").strip() or None
        if pin is None and session is None:
            # One credential for this (api, model): the same plan every time, computed once.
            cached = self._solo.get((api, model, deployment))
            if cached is not None:
                return cached
        requested: list[ParsedModel | None]
        alias: str | None = None
        if model is None or deployment:
            requested = [None if model is None else ParsedModel(model)]
        else:
            try:
                parsed = parse_model(model)
            except ValueError as exc:
                return Plan([], error=str(exc))
            if self.aliases is not None and parsed.base in self.aliases:
                alias = model
                requested = [parse_model(m) for m in self.aliases.next(model)]
            else:
                requested = [parsed]

        now = 0.0
        if pin is None and session is not None:
            now = self._clock()
            remembered = self._sessions.get(session)
            if remembered is not None and remembered[1] > now:
                pin = remembered[0]
                self._sessions.move_to_end(session)
        if pin is not None:
            return self._pinned(api, requested, pin, alias, session, now or self._clock())

        pools: list[tuple[ParsedModel | None, list[Candidate]]] = []
        distinct: set[int] = set()
        for member in requested:
            pool = self.pool(api, member.base if member is not None else "")
            if pool is not None:
                pools.append((member, order(pool, self.selector)))
                distinct.update(c.index for c in pool.members)
        if not pools:
            return Plan([], alias=alias, error=self._no_pool(api, requested), status=404)
        if len(distinct) == 1:
            member, ordered = pools[0]
            plan = Plan([Step(ordered[0], member)], alias=alias, session=session, solo=True)
            if session is None and alias is None and model is not None and len(model) <= 256:
                solo = self._solo
                solo[(api, model, deployment)] = plan
                if len(solo) > 4096:  # model names are the caller's: keep the cache bounded
                    solo.pop(next(iter(solo)))
            return plan
        now = now or self._clock()
        steps: list[Step] = []
        earliest: float | None = None
        for member, ordered in pools:
            base = member.base if member is not None else ""
            for c in ordered:
                until = self.available(c, base, now)
                if until is None:
                    steps.append(Step(c, member))
                elif earliest is None or until < earliest:
                    earliest = until
        return Plan(
            steps,
            alias=alias,
            session=session,
            cooling_until=earliest if not steps else None,
            pool=tuple(pools[0][1]),
        )

    def _pinned(
        self,
        api: Api,
        requested: list[ParsedModel | None],
        pin: str,
        alias: str | None,
        session: str | None,
        now: float,
    ) -> Plan:
        candidate = self._by_name.get(pin)
        if candidate is None or candidate not in self._by_api.get(api, ()):
            shown = pin if len(pin) <= 64 else pin[:64] + "..."
            return Plan([], error=f"No credential named {shown!r} serves this route.")
        for member in requested:
            base = member.base if member is not None else ""
            if not candidate.matches(base):
                continue
            until = self.available(candidate, base, now)
            if until is not None:
                return Plan([], alias=alias, pinned=True, session=session, cooling_until=until)
            return Plan([Step(candidate, member)], alias=alias, pinned=True, session=session)
        return Plan([], error=f"The credential {pin!r} does not serve this model.")

    def _affinity(self, headers: Iterable[tuple[bytes, bytes]]) -> tuple[str | None, str | None]:
        pin_b = self._pin_b
        session_b = self._session_b
        if pin_b is None and session_b is None:
            return None, None
        pin = session = None
        for name, value in headers:
            if name == pin_b:
                pin = value.decode("latin-1").strip() or None
            elif name == session_b:
                session = value.decode("latin-1").strip()[:256] or None
        return pin, session

    def remember(self, session: str, credential_id: str) -> None:
        """Keep a sticky session on the credential that served it (bounded LRU with a TTL)."""
        sessions = self._sessions
        sessions[session] = (credential_id, self._clock() + self.routing.session_ttl)
        sessions.move_to_end(session)
        while len(sessions) > self.routing.max_sessions:
            sessions.popitem(last=False)

    def sessions(self) -> int:
        return len(self._sessions)

    @staticmethod
    def _no_pool(api: Api, requested: list[ParsedModel | None]) -> str:
        names = ", ".join(repr(m.base) for m in requested if m is not None)
        if names:
            return f"This gateway has no upstream for {api} routes serving {names}."
        return f"This gateway has no upstream for {api} routes."
