"""Checking a request's buckets against a limiter, and charging them once its cost is known.

A request's buckets come as checks (`Check`): take one unit from each request limit; from each
token limit, either nothing (a look whether a unit is left) or, with a reserve, its estimate.
Two ways to check them give the same kind of answer, one decision per bucket (``None`` where the
store failed and the limit fails open):

- `admit_each`: one bucket after another, stopping at the first refusal and giving back what the
  buckets before it took (`admit_now` when the limiter answers without I/O);
- `admit_together`: every bucket in one round trip, all or nothing, where the store can (Redis).

`outcome` folds either's decisions into what the response reports and what is left to settle;
once the answer's tokens are known, `settle_later` (`settle_now` in memory) charges the token
buckets the difference from what they reserved.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator, Sequence

from asgi_llmguard.ratelimit.base import Limiter, StoreUnavailable
from asgi_llmguard.ratelimit.headers import tighter
from asgi_llmguard.ratelimit.spec import Decision, ParsedLimit

#: ``(bucket, limit, cost, take)``: take ``cost`` from the bucket where ``take``, else look
#: whether one unit is left. The shape a store's one-round-trip ``admit`` reads.
Check = tuple[str, ParsedLimit, float, bool]
#: A store's one-round-trip check of many buckets (`RedisGcra.admit`).
AdmitMany = Callable[[Sequence[Check]], Awaitable[Sequence[Decision]]]


def costs(buckets: list[tuple[ParsedLimit, str]]) -> list[Check]:
    """The checks of a request's buckets: take one unit of each request limit; of each token
    limit, only look whether a unit is left (see `reserving` for more)."""
    return [
        (bucket, lim, 1.0, True) if lim.kind != "tokens" else (bucket, lim, 0.0, False)
        for lim, bucket in buckets
    ]


def reserving(checks: list[Check], estimate: int) -> list[Check]:
    """``checks`` from `costs`, taking ``estimate`` tokens from each token limit instead of
    looking: at most a full bucket, since more could never pass (the rest is charged after the
    fact like any overrun)."""
    return [
        check if check[3] else (check[0], check[1], float(min(estimate, check[1].burst)), True)
        for check in checks
    ]


def admit_now(limiter: Limiter, checks: list[Check]) -> list[Decision | None]:
    """`admit_each` for a limiter that answers without I/O (``immediate``, in memory): the same
    steps with no coroutine at all."""
    decisions: list[Decision | None] = []
    for bucket, lim, cost, take in checks:
        decision: Decision | None
        try:
            if take:
                decision = limiter.acquire_now(bucket, lim, cost)
            else:
                decision = limiter.peek_now(bucket, lim)
        except StoreUnavailable:
            if not lim.fail_open:
                for bucket, lim, cost in _taken(checks, decisions):
                    limiter.charge_now(bucket, lim, -cost)
                raise
            decision = None
        decisions.append(decision)
        if decision is not None and not decision.allowed:
            for bucket, lim, cost in _taken(checks, decisions):
                limiter.charge_now(bucket, lim, -cost)
            break
    return decisions


async def admit_each(limiter: Limiter, checks: list[Check]) -> list[Decision | None]:
    """Check the buckets one after another: ``None`` for a limit that fails open when the store
    cannot answer; `StoreUnavailable` for one that fails closed. Stops at the first refusal, and
    then gives back what the buckets before it took."""
    decisions: list[Decision | None] = []
    for bucket, lim, cost, take in checks:
        decision: Decision | None
        try:
            if take:
                decision = await limiter.acquire(bucket, lim, cost)
            else:
                decision = await limiter.peek(bucket, lim)
        except StoreUnavailable:
            if not lim.fail_open:
                await _give_back(limiter, checks, decisions)
                raise
            decision = None
        decisions.append(decision)
        if decision is not None and not decision.allowed:
            await _give_back(limiter, checks, decisions)
            break
    return decisions


async def admit_together(admit: AdmitMany, checks: list[Check]) -> Sequence[Decision | None]:
    """Check every bucket in one round trip, all or nothing. When the store cannot answer:
    ``None`` for each if every limit fails open, else `StoreUnavailable`."""
    try:
        return await admit(checks)
    except StoreUnavailable:
        if not all(lim.fail_open for _, lim, _, _ in checks):
            raise
        return [None] * len(checks)


def _taken(
    checks: list[Check], decisions: Sequence[Decision | None]
) -> Iterator[tuple[str, ParsedLimit, float]]:
    """What the admitted ``decisions`` took, to give back: a refused request should not count
    against the limits it passed before the refusal."""
    for (bucket, lim, cost, _), decision in zip(checks, decisions, strict=False):
        if cost and decision is not None and decision.allowed:
            yield bucket, lim, cost


async def _give_back(
    limiter: Limiter, checks: list[Check], decisions: Sequence[Decision | None]
) -> None:
    for bucket, lim, cost in _taken(checks, decisions):
        # A store failure is counted and logged by the limiter; the units expire anyway.
        with contextlib.suppress(StoreUnavailable):
            await limiter.charge(bucket, lim, -cost)


def outcome(
    checks: list[Check], decisions: Sequence[Decision | None], together: bool
) -> tuple[Decision | None, Decision | None, list[Check], tuple[Check, Decision] | None, bool]:
    """What the decisions add up to: the binding request and token decisions (for the
    ``x-ratelimit-*`` headers), the token checks to settle once the answer is known, the first
    refusal, and whether a limit was let through unchecked (its store failed, it fails open).

    Checked ``together``, a refusal reports the binding decisions of every bucket; checked one
    after another, the buckets stop at the refusal, which is reported for its kind."""
    requests: Decision | None = None
    tokens: Decision | None = None
    settle: list[Check] = []
    refused: tuple[Check, Decision] | None = None
    failed_open = False
    for check, decision in zip(checks, decisions, strict=False):
        if decision is None:
            failed_open = True
            continue
        # (the first decision of a kind needs no comparison: most requests have one of each)
        if check[1].kind == "tokens":
            tokens = decision if tokens is None else tighter(tokens, decision)
            settle.append(check)
        else:
            requests = decision if requests is None else tighter(requests, decision)
        if not decision.allowed and refused is None:
            refused = (check, decision)
            if not together:
                if check[1].kind == "tokens":
                    tokens = decision
                else:
                    requests = decision
    return requests, tokens, settle, refused, failed_open


def settle_now(limiter: Limiter, settle: list[Check], used: int) -> None:
    """Charge each token bucket ``used`` less what it reserved, in memory (``immediate``)."""
    for bucket, lim, reserved, _ in settle:
        if used != reserved:
            limiter.charge_now(bucket, lim, used - reserved)


async def settle_later(limiter: Limiter, settle: list[Check], used: int) -> None:
    """Charge each token bucket ``used`` less what it reserved, through the store."""
    for bucket, lim, reserved, _ in settle:
        delta = used - reserved
        if delta:
            with contextlib.suppress(StoreUnavailable):  # counted and logged by the limiter
                await limiter.charge(bucket, lim, delta)
