"""Credential pools and the selectors that order them.

A *pool* is every credential that speaks a route's API and serves the model asked for
(``Upstream.models``, names or globs; empty: every model); it keeps the selector's state.
A *selector* orders the pool for each request:

- ``round-robin`` (default): each request starts one step further along the pool;
- ``weighted``: smooth weighted round-robin on ``Upstream.weight`` (nginx's algorithm: the
  spread is even, never bursts of the heavy member);
- ``fill-first``: configuration order, always; the first credential takes all the traffic until
  it cools down, then the next -- which staggers providers' rolling quota windows;
- ``priority``: groups by ``Upstream.priority`` (lowest first), round-robin inside a group.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Sequence

from asgi_llmguard.providers.base import Upstream


class Candidate:
    """One credential able to serve a route: the forwarder's per-upstream target plus the
    routing facts about it. ``target`` is opaque here (the forwarder's prepared headers)."""

    __slots__ = (
        "credential_id",
        "index",
        "lists",
        "matches",
        "priority",
        "target",
        "translation",
        "upstream",
        "weight",
    )

    def __init__(
        self,
        upstream: Upstream,
        index: int,
        target: object,
        models: Sequence[str] | None = None,
        translation: object | None = None,
    ) -> None:
        self.upstream = upstream
        #: ``None``: the credential speaks the route's format. Else the forwarder's translation
        #: to the credential's format (opaque here): it serves only models it lists, and only
        #: when no credential of the route's format lists them.
        self.translation = translation
        self.index = index
        self.target = target
        self.credential_id = upstream.credential_id
        self.weight = upstream.weight
        self.priority = upstream.priority
        models = upstream.models if models is None else models
        #: The credential names the models it serves (else it serves every model).
        self.lists = bool(models)
        if not models:
            self.matches: Callable[[str], bool] = _any
        else:
            pattern = re.compile("|".join(f"(?:{fnmatch.translate(m)})" for m in models))
            self.matches = lambda model: pattern.fullmatch(model) is not None

    def __repr__(self) -> str:
        return f"<Candidate {self.credential_id}>"


def _any(model: str) -> bool:
    return True


class Pool:
    """The credentials for one (API, set of models): selection state lives here."""

    __slots__ = ("current", "members", "position")

    def __init__(self, members: tuple[Candidate, ...]) -> None:
        self.members = members
        self.position = 0
        # Smooth weighted round-robin: each member's current weight.
        self.current = [0] * len(members)


def order(pool: Pool, selector: str, advance: bool = True) -> list[Candidate]:
    """The pool in this request's order; ``advance=False`` peeks without moving rotation."""
    members = pool.members
    n = len(members)
    if n == 1:
        return [members[0]]
    if selector == "fill-first":
        return list(members)
    if selector == "round-robin":
        start = pool.position
        if advance:
            pool.position = (start + 1) % n
        return [*members[start:], *members[:start]]
    if selector == "priority":
        groups: dict[int, list[Candidate]] = {}
        for c in members:
            groups.setdefault(c.priority, []).append(c)
        start = pool.position
        if advance:
            pool.position = start + 1
        ordered: list[Candidate] = []
        for level in sorted(groups):
            group = groups[level]
            s = start % len(group)
            ordered += (*group[s:], *group[:s])
        return ordered
    # weighted: smooth weighted round-robin picks the first; the rest follow by weight.
    current = pool.current if advance else list(pool.current)
    total = 0
    best = 0
    for i, c in enumerate(members):
        current[i] += c.weight
        total += c.weight
        if current[i] > current[best]:
            best = i
    current[best] -= total
    first = members[best]
    rest = sorted((c for c in members if c is not first), key=lambda c: -c.weight)
    return [first, *rest]
