"""App factory for the multi-process tests (``uvicorn --factory``).

``uvicorn --factory tests.ratelimit.gateway_app:create_app``: each process builds classify ->
rate limit (shared Redis) -> forwarder. The test passes the
upstream, Redis URL, key prefix and limit through the environment, as an operator's process
manager would.
"""

from __future__ import annotations

import os

from asgi_llmguard.forward.app import ForwardingApp
from asgi_llmguard.middleware.classify import ClassifyMiddleware
from asgi_llmguard.middleware.ratelimit import RateLimitMiddleware
from asgi_llmguard.policy import RateLimit
from asgi_llmguard.providers.base import Upstream
from asgi_llmguard.types import ASGIApp


def create_app() -> ASGIApp:
    env = os.environ
    forwarder = ForwardingApp(
        [
            Upstream(
                "openai", env["LLMGUARD_TEST_UPSTREAM"] + "/v1", api_key=env["LLMGUARD_TEST_KEY"]
            )
        ]
    )
    limited = RateLimitMiddleware(
        forwarder,
        limits=[RateLimit(env.get("LLMGUARD_TEST_LIMIT", "20/minute"), per="global")],
        storage=env["LLMGUARD_TEST_REDIS"],
        key_prefix=env["LLMGUARD_TEST_PREFIX"],
        # generous: this test is about sharing, not about a slow machine failing closed
        redis_timeout=2.0,
    )
    return ClassifyMiddleware(limited)
