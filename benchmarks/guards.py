"""The guard layers for `benchmarks.layers`: each alone, and the whole default stack.

Every configuration puts the classifier in front (as the stack does) and the stub-engine
forwarder behind, with one static key whose policy exercises the layer (a request limit and a
token limit for the rate limiter, a budget for the usage layer).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from asgi_llmguard import (
    Budget,
    ConcurrencyMiddleware,
    KeyPolicy,
    MemoryBudgetStore,
    RateLimit,
    RateLimitMiddleware,
    RedisBudgetStore,
    SizeLimitMiddleware,
    StaticKey,
    StaticKeyStore,
    hash_key,
)
from asgi_llmguard.middleware.auth import AuthMiddleware
from asgi_llmguard.middleware.classify import ClassifyMiddleware
from asgi_llmguard.middleware.usage import UsageMiddleware

REDIS = "redis://127.0.0.1:6379/0"
# Generous limits: the benchmark measures the cost of checking them, not of refusing.
LIMITS = (
    RateLimit("100000000/minute"),
    RateLimit("100000000000/minute", kind="tokens"),
)


class _Discard:
    def emit(self, event: object) -> None:
        pass


def _policy() -> KeyPolicy:
    return KeyPolicy(
        key_id="bench",
        rate_limits=LIMITS,
        max_concurrency=1000,
        budget=Budget(total=1e9),
    )


def configurations(
    forwarder: Callable[[], Any], key: str, redis: bool
) -> dict[str, Callable[[], Any]]:
    def keys() -> StaticKeyStore:
        return StaticKeyStore([StaticKey(_policy(), key_hash=hash_key(key))])

    def auth(app: Any) -> Any:
        return AuthMiddleware(app, store=keys())

    def size() -> Any:
        return ClassifyMiddleware(SizeLimitMiddleware(forwarder()))

    def only_auth() -> Any:
        return ClassifyMiddleware(auth(forwarder()))

    def ratelimit(storage: str) -> Callable[[], Any]:
        def build() -> Any:
            inner = RateLimitMiddleware(forwarder(), storage=storage, key_prefix="bench:rl:")
            return ClassifyMiddleware(auth(inner))

        return build

    def concurrency() -> Any:
        return ClassifyMiddleware(auth(ConcurrencyMiddleware(forwarder())))

    def usage_budget(store: Callable[[], Any]) -> Callable[[], Any]:
        def build() -> Any:
            inner = UsageMiddleware(forwarder(), pipeline=_Discard(), budgets=store())
            return ClassifyMiddleware(auth(inner))

        return build

    def guards(storage: str) -> Callable[[], Any]:
        def build() -> Any:
            app = RateLimitMiddleware(forwarder(), storage=storage, key_prefix="bench:rl:")
            return ClassifyMiddleware(SizeLimitMiddleware(auth(ConcurrencyMiddleware(app))))

        return build

    def stack(storage: str, budgets: Callable[[], Any]) -> Callable[[], Any]:
        def build() -> Any:
            app = forwarder()
            app = UsageMiddleware(app, pipeline=_Discard(), budgets=budgets())
            app = RateLimitMiddleware(app, storage=storage, key_prefix="bench:rl:")
            app = ConcurrencyMiddleware(app)
            app = auth(app)
            app = SizeLimitMiddleware(app)
            return ClassifyMiddleware(app)

        return build

    configs: dict[str, Callable[[], Any]] = {
        "classify+size_limit": size,
        "classify+auth": only_auth,
        "classify+auth+concurrency": concurrency,
        "classify+auth+rate_limit (memory)": ratelimit("memory://"),
        "classify+auth+usage+budget (memory)": usage_budget(MemoryBudgetStore),
        "all guards: size+auth+concurrency+rate_limit (memory)": guards("memory://"),
        "full stack (memory)": stack("memory://", MemoryBudgetStore),
    }
    if redis:
        configs.update(
            {
                "classify+auth+rate_limit (redis)": ratelimit(REDIS),
                "all guards (redis)": guards(REDIS),
                "classify+auth+usage+budget (redis)": usage_budget(
                    lambda: RedisBudgetStore.from_url(REDIS, prefix="bench:budget:")
                ),
                "full stack (redis)": stack(
                    REDIS, lambda: RedisBudgetStore.from_url(REDIS, prefix="bench:budget:")
                ),
            }
        )
    return configs
