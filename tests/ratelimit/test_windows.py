"""The ``limits`` window strategies behind the same interface, on memory and on the real Redis."""

from __future__ import annotations

import pytest

from asgi_llmguard.policy import RateLimit
from asgi_llmguard.ratelimit import RateLimitConfig, WindowLimiter, create_limiter, parse_limit

# Marked at import, not only by the root conftest's collection hook: anyio's plugin must see the
# mark while parametrizing, or parametrized async tests fail at setup.
pytestmark = pytest.mark.anyio

ALGORITHMS = ["fixed-window", "moving-window", "sliding-window-counter"]


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def store_uri(request, prefix):
    if request.param == "memory":
        return "memory://"
    request.getfixturevalue("shared_redis")
    return "async+redis://127.0.0.1:6379/0"


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_window_admits_the_limit_then_refuses_with_a_reset(algorithm, store_uri, prefix):
    limiter = create_limiter(
        RateLimitConfig(algorithm=algorithm, storage=store_uri, key_prefix=prefix)
    )
    assert isinstance(limiter, WindowLimiter)
    limit = parse_limit(RateLimit("5/minute"))
    try:
        got = [await limiter.acquire("w", limit, 1) for _ in range(7)]
        assert [d.allowed for d in got] == [True] * 5 + [False] * 2
        assert [d.remaining for d in got[:5]] == [4, 3, 2, 1, 0]
        refused = got[-1]
        assert refused.limit == 5
        assert refused.remaining == 0
        assert 0 < refused.retry_after <= 60
        assert not (await limiter.peek("w", limit)).allowed
        # Another bucket is untouched; a charge counts its cost (rounded up) without a check.
        assert (await limiter.peek("other", limit)).remaining == 5
        await limiter.charge("other", limit, 2.2)
        assert (await limiter.peek("other", limit)).remaining == 2
        await limiter.charge("other", limit, 50)  # more than is left: the window is full
        assert not (await limiter.peek("other", limit)).allowed
        await limiter.charge("other", limit, -3)  # windows cannot give units back: ignored
        assert not (await limiter.peek("other", limit)).allowed
    finally:
        await limiter.aclose()
