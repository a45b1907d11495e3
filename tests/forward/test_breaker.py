"""The circuit breaker per credential, driven with an injected clock."""

from __future__ import annotations

import asyncio

import pytest

from asgi_llmguard.errors import ConfigurationError
from asgi_llmguard.forward.breaker import BreakerPolicy, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def breaker(**policy: float) -> tuple[CircuitBreaker, Clock]:
    clock = Clock()
    options = {"window": 10.0, "min_requests": 4, "failure_ratio": 0.5, "open_for": 5.0}
    options.update(policy)
    return CircuitBreaker(BreakerPolicy(**options), clock=clock), clock  # type: ignore[arg-type]


def test_opens_at_the_failure_ratio_not_below_min_requests() -> None:
    b, _ = breaker()
    for _ in range(3):
        b.record("a", False)
    assert b.state("a") == "closed"  # 3 outcomes < min_requests
    b.record("a", True)
    assert b.state("a") == "closed"  # 3/4 failed but the last outcome was a success
    b.record("a", False)
    assert b.state("a") == "open"  # 4/5 >= 0.5
    assert not b.allow("a")
    assert b.allow("other")
    assert b.snapshot() == {"a": "open"}


def test_a_healthy_ratio_stays_closed() -> None:
    b, _ = breaker()
    for i in range(100):
        b.record("a", i % 3 != 2)  # every third fails
    assert b.state("a") == "closed"


def test_half_open_lets_one_probe_through_and_success_closes() -> None:
    b, clock = breaker()
    for _ in range(4):
        b.record("a", False)
    clock.now += 5
    assert b.state("a") == "half_open"
    assert b.allow("a")
    assert not b.allow("a")  # one probe at a time
    b.record("a", True)
    assert b.state("a") == "closed"
    b.record("a", False)  # the old failures were cleared with the window
    assert b.state("a") == "closed"


def test_a_failed_probe_reopens() -> None:
    b, clock = breaker()
    for _ in range(4):
        b.record("a", False)
    clock.now += 5
    assert b.allow("a")
    b.record("a", False)
    assert b.state("a") == "open"
    clock.now += 4.9
    assert not b.allow("a")
    clock.now += 0.2
    assert b.allow("a")


def test_release_frees_the_probe_slot() -> None:
    b, clock = breaker()
    for _ in range(4):
        b.record("a", False)
    clock.now += 5
    assert b.allow("a")
    b.release("a")  # the probe's client left: no outcome
    assert b.allow("a")


def test_the_window_slides() -> None:
    b, clock = breaker(min_requests=4)
    for _ in range(3):
        b.record("a", False)
    clock.now += 11  # those failures are out of the window now
    b.record("a", False)
    for _ in range(3):
        b.record("a", True)
    assert b.state("a") == "closed"


def test_reset() -> None:
    b, _ = breaker()
    for name in ("a", "b"):
        for _ in range(4):
            b.record(name, False)
    assert b.reset("a") == 1
    assert b.state("a") == "closed"
    assert b.reset() == 1
    assert b.snapshot() == {}


def test_policy_is_validated() -> None:
    with pytest.raises(ConfigurationError):
        BreakerPolicy(failure_ratio=0)
    with pytest.raises(ConfigurationError):
        BreakerPolicy(min_requests=0)


async def test_concurrent_callers_in_half_open_get_one_probe() -> None:
    b, clock = breaker()
    for _ in range(4):
        b.record("a", False)
    clock.now += 5

    async def caller() -> bool:
        await asyncio.sleep(0)
        return b.allow("a")

    results = await asyncio.gather(*(caller() for _ in range(10)))
    assert sorted(results) == [False] * 9 + [True]
    b.release("a")
    assert b.allow("a")  # the freed slot goes to the next caller
    assert not b.allow("a")


def test_outcomes_of_requests_admitted_before_opening_do_not_decide_half_open() -> None:
    b, clock = breaker()
    for _ in range(4):
        b.record("a", False)
    b.record("a", True)  # open: a late success changes nothing
    assert b.state("a") == "open"
    clock.now += 5
    b.record("a", True)  # half-open, but no probe is out: not the probe's outcome
    assert b.state("a") == "half_open"
    assert b.allow("a")
    b.record("a", False)
    assert b.state("a") == "open"


def test_a_probe_that_never_reports_does_not_wedge_the_breaker() -> None:
    b, clock = breaker()
    for _ in range(4):
        b.record("a", False)
    clock.now += 5
    assert b.allow("a")  # this probe is lost: no record(), no release()
    clock.now += 4.9
    assert not b.allow("a")
    clock.now += 0.2
    assert b.allow("a")


def test_unknown_upstreams_are_closed_and_cost_nothing() -> None:
    b, _ = breaker()
    assert b.allow("never-seen")
    assert b.state("never-seen") == "closed"
    b.release("never-seen")
    assert b.snapshot() == {}
    assert b.reset("never-seen") == 0


@pytest.mark.parametrize(
    "bad",
    [
        {"window": 0},
        {"window": float("nan")},
        {"open_for": -1},
        {"open_for": float("inf")},
        {"failure_ratio": 1.5},
        {"failure_ratio": float("nan")},
        {"min_requests": 2.5},
    ],
)
def test_bad_policies_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        BreakerPolicy(**bad)  # type: ignore[arg-type]
