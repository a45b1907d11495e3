"""asgi_llmguard: an LLM API gateway as composable pure-ASGI middlewares."""

from asgi_llmguard.admin import AdminApp
from asgi_llmguard.capture import CaptureRecord, CaptureSink, JSONLCaptureSink, SQLiteCaptureSink
from asgi_llmguard.context import RequestContext, RequestFields, get_context, read_body
from asgi_llmguard.errors import ConfigurationError
from asgi_llmguard.forward.app import ForwardingApp
from asgi_llmguard.forward.breaker import BreakerPolicy
from asgi_llmguard.forward.config import PoolLimits, Timeouts, WebSocketLimits
from asgi_llmguard.forward.cooldowns import CooldownPolicy, MemoryCooldowns, RedisCooldowns
from asgi_llmguard.forward.router import RetryPolicy, Routing, WarmupPolicy
from asgi_llmguard.keys import (
    CachedKeyStore,
    KeyStore,
    PostgresKeyStore,
    SQLiteKeyStore,
    StaticKey,
    StaticKeyStore,
    WritableKeyStore,
    generate_key,
    hash_key,
    issue_key,
)
from asgi_llmguard.middleware.access_log import AccessLogMiddleware
from asgi_llmguard.middleware.auth import AuthMiddleware
from asgi_llmguard.middleware.capture import CaptureMiddleware
from asgi_llmguard.middleware.classify import ClassifyMiddleware
from asgi_llmguard.middleware.concurrency import ConcurrencyMiddleware
from asgi_llmguard.middleware.drain import DrainMiddleware
from asgi_llmguard.middleware.health import HealthMiddleware, postgres_check, redis_check
from asgi_llmguard.middleware.metrics import MetricsMiddleware
from asgi_llmguard.middleware.overload import OverloadMiddleware
from asgi_llmguard.middleware.ratelimit import RateLimitMiddleware
from asgi_llmguard.middleware.size_limit import SizeLimitMiddleware, SizeLimits
from asgi_llmguard.middleware.usage import EventSink, UsageMiddleware
from asgi_llmguard.policy import Budget, KeyPolicy, RateLimit
from asgi_llmguard.providers.base import Upstream
from asgi_llmguard.ratelimit.config import RateLimitOptions
from asgi_llmguard.routes import Endpoint, Route, classify
from asgi_llmguard.stack import Gateway, build_stack
from asgi_llmguard.stores import budget_store, cooldown_store, rate_limiter, store_from_url
from asgi_llmguard.tokens import TokenUsage
from asgi_llmguard.usage.budgets import (
    BudgetOptions,
    BudgetStore,
    MemoryBudgetStore,
    RedisBudgetStore,
)
from asgi_llmguard.usage.events import UsageEvent
from asgi_llmguard.usage.pipeline import UsagePipeline
from asgi_llmguard.usage.pricing import ModelPrice, PriceTable, PriceTier, ServiceTierPrice
from asgi_llmguard.usage.sinks import CallableSink, JSONLSink, PostgresSink, Sink, SQLiteSink

__version__ = "0.1.0"

__all__ = [
    "AccessLogMiddleware",
    "AdminApp",
    "AuthMiddleware",
    "BreakerPolicy",
    "Budget",
    "BudgetOptions",
    "BudgetStore",
    "CachedKeyStore",
    "CallableSink",
    "CaptureMiddleware",
    "CaptureRecord",
    "CaptureSink",
    "ClassifyMiddleware",
    "ConcurrencyMiddleware",
    "ConfigurationError",
    "CooldownPolicy",
    "DrainMiddleware",
    "Endpoint",
    "EventSink",
    "ForwardingApp",
    "Gateway",
    "HealthMiddleware",
    "JSONLCaptureSink",
    "JSONLSink",
    "KeyPolicy",
    "KeyStore",
    "MemoryBudgetStore",
    "MemoryCooldowns",
    "MetricsMiddleware",
    "ModelPrice",
    "OverloadMiddleware",
    "PoolLimits",
    "PostgresKeyStore",
    "PostgresSink",
    "PriceTable",
    "PriceTier",
    "RateLimit",
    "RateLimitMiddleware",
    "RateLimitOptions",
    "RedisBudgetStore",
    "RedisCooldowns",
    "RequestContext",
    "RequestFields",
    "RetryPolicy",
    "Route",
    "Routing",
    "SQLiteCaptureSink",
    "SQLiteKeyStore",
    "SQLiteSink",
    "ServiceTierPrice",
    "Sink",
    "SizeLimitMiddleware",
    "SizeLimits",
    "StaticKey",
    "StaticKeyStore",
    "Timeouts",
    "TokenUsage",
    "Upstream",
    "UsageEvent",
    "UsageMiddleware",
    "UsagePipeline",
    "WarmupPolicy",
    "WebSocketLimits",
    "WritableKeyStore",
    "__version__",
    "budget_store",
    "build_stack",
    "classify",
    "cooldown_store",
    "generate_key",
    "get_context",
    "hash_key",
    "issue_key",
    "postgres_check",
    "rate_limiter",
    "read_body",
    "redis_check",
    "store_from_url",
]
