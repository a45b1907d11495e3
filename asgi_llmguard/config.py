"""The standalone server's config file, mapped one-to-one onto the stack's keyword arguments.

This module and the CLI are the only places that read files and environment variables; every
middleware takes plain keyword arguments. The file is TOML decoded with msgspec into the schema of
`asgi_llmguard._config_schema` (its sections are re-exported here), so a wrong field fails with a
message that names it (``Expected `int`, got `str` - at `$.server.port```). What is left here
reads the file, the environment (keys, URLs held in variables) and store URLs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgspec

from asgi_llmguard._config_schema import (
    AccessLogConfig,
    AdminConfig,
    AuthConfig,
    BudgetsSection,
    CaptureConfig,
    ConcurrencyConfig,
    ForwardConfig,
    GatewayConfig,
    HealthConfig,
    KeyCacheConfig,
    KeyConfig,
    MetricsConfig,
    OverloadConfig,
    PricingConfig,
    ProviderName,
    RateLimitSection,
    RoutingSection,
    ServerConfig,
    SizeLimitSection,
    UpstreamConfig,
    UsageConfig,
    _given,
    _settings,
)
from asgi_llmguard.errors import ConfigurationError
from asgi_llmguard.forward.router import Routing
from asgi_llmguard.middleware.size_limit import SizeLimits
from asgi_llmguard.providers import PROVIDERS
from asgi_llmguard.providers.base import Upstream
from asgi_llmguard.ratelimit.config import RateLimitOptions
from asgi_llmguard.usage.budgets import BudgetOptions
from asgi_llmguard.usage.pricing import PriceTable

__all__ = [
    "AccessLogConfig",
    "AdminConfig",
    "AuthConfig",
    "BudgetsSection",
    "CaptureConfig",
    "ConcurrencyConfig",
    "ForwardConfig",
    "GatewayConfig",
    "HealthConfig",
    "KeyCacheConfig",
    "KeyConfig",
    "MetricsConfig",
    "OverloadConfig",
    "PricingConfig",
    "ProviderName",
    "RateLimitSection",
    "RoutingSection",
    "ServerConfig",
    "SizeLimitSection",
    "UpstreamConfig",
    "UsageConfig",
    "load_config",
    "resolve_keys",
    "resolve_upstreams",
    "routing_from_config",
    "stack_kwargs",
]

# Values people paste from examples; a gateway started with one would fail at the provider with a
# confusing 401, so it refuses to start instead.
_SAMPLE_KEY_MARKERS = ("replace", "changeme", "change-me", "your-key", "your_key", "xxxx", "...")


def load_config(path: str | Path | None) -> GatewayConfig:
    """Read and validate a config file; ``None`` gives the embedded defaults."""
    if path is None:
        return GatewayConfig()
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"Cannot read config file {path}: {exc.strerror}") from None
    try:
        return msgspec.toml.decode(data, type=GatewayConfig)
    except msgspec.ValidationError as exc:
        raise ConfigurationError(f"{path}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ConfigurationError(f"{path}: not valid TOML: {exc}") from None


def resolve_upstreams(
    config: GatewayConfig, environ: dict[str, str] | os._Environ[str] = os.environ
) -> list[Upstream]:
    """The configured upstreams with their keys read from the environment.

    With no ``[[upstreams]]`` in the file, each provider's key variable (``OPENAI_API_KEY``,
    ``ANTHROPIC_API_KEY``, ...: `Provider.key_env`), when set, gives that provider's public API.
    An empty list means no provider key is configured.
    """
    entries = list(config.upstreams)
    if not entries:
        for provider in PROVIDERS.values():
            for variable in provider.key_env:
                if environ.get(variable):
                    entries.append(
                        UpstreamConfig(provider.name, provider.default_url, api_key_env=variable)
                    )
                    break
    upstreams = []
    for i, entry in enumerate(entries):
        where = f"upstreams[{i}] ({entry.name or entry.provider})"
        if entry.api_key is not None and entry.api_key_env is not None:
            raise ConfigurationError(f"{where}: set api_key or api_key_env, not both")
        key = entry.api_key
        if entry.api_key_env is not None:
            key = environ.get(entry.api_key_env)
            if not key:
                raise ConfigurationError(
                    f"{where}: environment variable {entry.api_key_env} is not set"
                )
        if key is not None and _placeholder(key):
            raise ConfigurationError(
                f"{where}: the api key looks like a placeholder; set a real one"
            )
        try:
            upstreams.append(
                Upstream(
                    provider=entry.provider,
                    base_url=entry.base_url,
                    api_key=key,
                    name=entry.name,
                    api_version=entry.api_version,
                    deployments=entry.deployments,
                    headers=entry.headers,
                    models=tuple(entry.models),
                    weight=entry.weight,
                    priority=entry.priority,
                    credentials_file=entry.credentials_file,
                    project=entry.project,
                    location=entry.location,
                    region=entry.region,
                    profile=entry.profile,
                )
            )
        except ConfigurationError as exc:
            raise ConfigurationError(f"{where}: {exc}") from None
    return upstreams


def _placeholder(value: str) -> bool:
    return any(m in value.lower() for m in _SAMPLE_KEY_MARKERS)


def resolve_keys(
    config: GatewayConfig, environ: dict[str, str] | os._Environ[str] = os.environ
) -> Any | None:
    """The `KeyStore` the config names, or ``None`` when it names none (an open gateway)."""
    from asgi_llmguard.keys import (
        CachedKeyStore,
        StaticKey,
        StaticKeyStore,
        hash_key,
        is_key_hash,
        make_policy,
        store_from_url,
    )

    auth = config.auth
    url = auth.store
    if auth.store_env is not None:
        if url is not None:
            raise ConfigurationError("auth: set store or store_env, not both")
        url = environ.get(auth.store_env)
        if not url:
            raise ConfigurationError(f"auth: environment variable {auth.store_env} is not set")
    if url is not None and url != "static":
        if config.keys:
            raise ConfigurationError(
                "[[keys]] and a key database (auth.store) are both configured: use one source"
            )
        c = auth.cache
        return CachedKeyStore(
            store_from_url(url),
            ttl=c.ttl,
            negative_ttl=c.negative_ttl,
            max_entries=c.max_entries,
            max_negative_entries=c.max_negative_entries,
        )
    if not config.keys:
        if url == "static":
            raise ConfigurationError("auth.store is 'static' but no [[keys]] are configured")
        return None
    static = []
    for i, entry in enumerate(config.keys):
        where = f"keys[{i}] ({entry.name or entry.key_env or 'unnamed'})"
        if (entry.key_env is None) == (entry.key_hash is None):
            raise ConfigurationError(f"{where}: set exactly one of key_env and key_hash")
        if entry.key_env is not None:
            key = environ.get(entry.key_env)
            if not key:
                raise ConfigurationError(
                    f"{where}: environment variable {entry.key_env} is not set"
                )
            if _placeholder(key):
                raise ConfigurationError(
                    f"{where}: the key looks like a placeholder; set a real one"
                )
            digest = hash_key(key)
        else:
            digest = (entry.key_hash or "").lower()
            if not is_key_hash(digest):
                raise ConfigurationError(f"{where}: key_hash must be 64 hex digits (SHA-256)")
        try:
            policy = make_policy(digest, name=entry.name, **entry.policy_fields())
        except ConfigurationError as exc:
            raise ConfigurationError(f"{where}: {exc}") from None
        static.append(StaticKey(policy, key_hash=digest))
    try:
        return StaticKeyStore(static)
    except (ConfigurationError, ValueError) as exc:
        raise ConfigurationError(f"keys: {exc}") from None


def routing_from_config(r: RoutingSection) -> Routing:
    """The `Routing` options ``[routing]`` describes, its cooldown store URL resolved (the Redis
    cooldown store is connected lazily, on first use)."""
    from asgi_llmguard.stores import cooldown_store

    try:
        cooldowns: Any = None
        if r.cooldowns is not None:
            cooldowns = r.cooldowns
            url = _from_env(r.cooldown_store, r.cooldown_store_env, "routing.cooldown_store")
            if url is not None:
                cooldowns = cooldown_store(
                    url, cooldowns, max_connections=r.cooldown_store_max_connections
                )
        elif r.cooldown_store is not None or r.cooldown_store_env is not None:
            raise ConfigurationError("routing: a cooldown_store needs cooldowns")
        given = {f.name: getattr(r, f.name) for f in msgspec.structs.fields(Routing)}
        return Routing(**{**given, "cooldowns": cooldowns})
    except ConfigurationError as exc:
        raise ConfigurationError(f"routing: {exc}") from None


def _from_env(value: str | None, env: str | None, where: str) -> str | None:
    if env is None:
        return value
    if value is not None:
        raise ConfigurationError(f"{where}: set the URL or its _env variable, not both")
    url = os.environ.get(env)
    if not url:
        raise ConfigurationError(f"{where}: environment variable {env} is not set")
    return url


def _health(h: HealthConfig) -> dict[str, Any] | None:
    if not h.enabled:
        return None
    from asgi_llmguard.middleware.health import postgres_check, redis_check

    kwargs = _given(h, frozenset({"enabled", "redis", "redis_env", "postgres", "postgres_env"}))
    checks: dict[str, Any] = {}
    redis = _from_env(h.redis, h.redis_env, "health.redis")
    if redis is not None:
        checks["redis"] = redis_check(redis)
    postgres = _from_env(h.postgres, h.postgres_env, "health.postgres")
    if postgres is not None:
        checks["postgres"] = postgres_check(postgres)
    if checks:
        kwargs["checks"] = checks
    return kwargs


def _admin(
    config: GatewayConfig, environ: dict[str, str] | os._Environ[str]
) -> dict[str, Any] | None:
    """`build_stack`'s ``admin`` kwargs, or ``None`` when the admin API is off."""
    a = config.admin
    if not a.enabled:
        return None
    from asgi_llmguard.admin import MIN_KEY_LENGTH

    key = environ.get(a.key_env)
    if not key:
        raise ConfigurationError(
            f"admin: enabled, but environment variable {a.key_env} (the admin key) is not set"
        )
    if _placeholder(key) or len(key) < MIN_KEY_LENGTH:
        raise ConfigurationError(
            f"admin: the key in {a.key_env} looks like a placeholder or is shorter than "
            f"{MIN_KEY_LENGTH} characters; generate one with "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
        )
    ledger = _from_env(a.ledger, a.ledger_env, "admin.ledger")
    if ledger is None and config.usage.enabled:
        from asgi_llmguard.usage.sinks import parse_ledger_url

        ledger = next(
            (url for url in config.usage.sinks if parse_ledger_url(url).kind != "jsonl"), None
        )
    out: dict[str, Any] = {"key": key, "path": a.path, "ledger": ledger}
    if a.max_body_bytes is not None:
        out["max_body_bytes"] = a.max_body_bytes
    return out


def stack_kwargs(config: GatewayConfig, upstreams: list[Upstream]) -> dict[str, Any]:
    """The keyword arguments of `build_stack` that this config describes.

    Builds the stores and the pipeline the config names; nothing is connected until the gateway
    starts (connections are opened lazily).
    """
    from asgi_llmguard.stores import budget_store
    from asgi_llmguard.usage.pipeline import UsagePipeline
    from asgi_llmguard.usage.sinks import sink_from_url

    fwd = config.forward
    kwargs: dict[str, Any] = {
        "upstreams": upstreams,
        "timeouts": fwd.timeouts,
        "limits": fwd.limits,
        "websockets": fwd.websockets,
        "trust_env": fwd.trust_env,
        "passthrough": fwd.passthrough,
        "routing": routing_from_config(config.routing),
    }
    keys = resolve_keys(config)
    if keys is not None:
        kwargs["keys"] = keys
        a = config.auth
        kwargs["auth"] = _given(a, frozenset({"store", "store_env", "cache"}))
    kwargs["access_log"] = config.access_log.kwargs() if config.access_log.enabled else None
    kwargs["admin"] = _admin(config, os.environ)
    kwargs["health"] = _health(config.health)
    kwargs["overload"] = _given(config.overload) if config.overload is not None else None
    m = config.metrics
    kwargs["metrics"] = _given(m, frozenset({"enabled"})) if m is not None and m.enabled else None
    sl = config.size_limit
    kwargs["size_limit"] = _settings(sl, SizeLimits) if sl.enabled else None
    rl = config.rate_limit
    if rl.enabled:
        rate = _settings(rl, RateLimitOptions)
        if rl.storage_env is not None:
            if rl.storage != RateLimitOptions().storage:
                raise ConfigurationError("rate_limit: set storage or storage_env, not both")
            url = os.environ.get(rl.storage_env)
            if not url:
                raise ConfigurationError(
                    f"rate_limit: environment variable {rl.storage_env} is not set"
                )
            rate["storage"] = url
        kwargs["rate_limit"] = rate
    else:
        kwargs["rate_limit"] = None
    cc = config.concurrency
    kwargs["concurrency"] = _given(cc, frozenset({"enabled"})) if cc.enabled else None
    if config.capture is not None:
        from asgi_llmguard.capture.sinks import sink_from_url as capture_sink

        capture = _given(config.capture, frozenset({"sink"}))
        try:
            capture["sink"] = capture_sink(config.capture.sink)
        except ValueError as exc:
            raise ConfigurationError(f"capture.sink: {exc}") from None
        kwargs["capture"] = capture
    usage = config.usage
    if not usage.enabled:
        kwargs["usage"] = None
        return kwargs
    per_upstream = {}
    for i, entry in enumerate(config.upstreams):
        if entry.prices:
            if not entry.name:
                raise ConfigurationError(f"upstreams[{i}]: prices need the upstream's name")
            per_upstream[entry.name] = entry.prices
    b = config.budgets
    try:
        budgets = budget_store(
            b.store, prefix=b.prefix, timeout=b.timeout, max_connections=b.redis_max_connections
        )
    except ConfigurationError as exc:
        raise ConfigurationError(f"budgets.store: {exc}") from None
    kwargs["usage"] = {
        "prices": PriceTable.default().with_overrides(config.prices, per_upstream),
        "missing_price": config.pricing.missing,
        "budgets": budgets,
        "budget_options": BudgetOptions(**_settings(b, BudgetOptions)),
        "stream_usage": usage.stream_usage,
        "aliases": config.routing.aliases,
    }
    if usage.sinks:
        try:
            sinks = [sink_from_url(url) for url in usage.sinks]
        except ValueError as exc:
            raise ConfigurationError(f"usage.sinks: {exc}") from None
        kwargs["pipeline"] = UsagePipeline(sinks, **usage.pipeline_kwargs())
    return kwargs
