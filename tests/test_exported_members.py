"""The public API is what __all__ says: adding or removing a name must be a deliberate change."""

import asgi_llmguard
import asgi_llmguard.testing

PUBLIC = [
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


def test_public_api_is_locked_and_sorted():
    assert asgi_llmguard.__all__ == PUBLIC
    assert sorted(asgi_llmguard.__all__) == asgi_llmguard.__all__
    for name in PUBLIC:
        assert getattr(asgi_llmguard, name) is not None


def test_testing_api_is_sorted_and_importable():
    names = asgi_llmguard.testing.__all__
    assert sorted(names) == names
    assert {"FakeProvider", "serve"} <= set(names)
    for name in names:
        assert getattr(asgi_llmguard.testing, name) is not None


def test_internal_modules_renamed_with_an_underscore_keep_their_old_import_path():
    from asgi_llmguard.usage.sinks import _fanout, _spill
    from asgi_llmguard.usage.sinks.fanout import Fanout, SinkStats
    from asgi_llmguard.usage.sinks.spill import SpillDirectory, SpillFile, sync_files, try_lock

    assert (Fanout, SinkStats) == (_fanout.Fanout, _fanout.SinkStats)
    assert (SpillDirectory, SpillFile) == (_spill.SpillDirectory, _spill.SpillFile)
    assert (sync_files, try_lock) == (_spill.sync_files, _spill.try_lock)
