"""The standalone server's config file, mapped one-to-one onto the stack's keyword arguments.

This module and the CLI are the only places that read files and environment variables; every
middleware takes plain keyword arguments. The file is TOML decoded with msgspec, so a wrong field
fails with a message that names it (``Expected `int`, got `str` - at `$.server.port```).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import msgspec

from asgi_llmguard.errors import ConfigurationError
from asgi_llmguard.forward.config import PoolLimits, Timeouts
from asgi_llmguard.forward.cooldowns import CooldownPolicy
from asgi_llmguard.forward.router import Routing
from asgi_llmguard.forward.websocket import WebSocketLimits
from asgi_llmguard.middleware.size_limit import SizeLimits
from asgi_llmguard.policy import Budget, RateLimit
from asgi_llmguard.providers.base import Upstream
from asgi_llmguard.ratelimit.config import RateLimitOptions
from asgi_llmguard.usage.pricing import MissingPrice, ModelPrice, PriceTable

ProviderName = Literal["openai", "azure", "anthropic"]

# Values people paste from examples; a gateway started with one would fail at the provider with a
# confusing 401, so it refuses to start instead.
_SAMPLE_KEY_MARKERS = ("replace", "changeme", "change-me", "your-key", "your_key", "xxxx", "...")


_USERINFO = re.compile(r"(?<=://)[^/@\s]*@")


def _mask(value: object) -> object:
    """A config value as shown in ``repr``: credentials in URLs replaced by ``***@``."""
    if isinstance(value, str):
        return _USERINFO.sub("***@", value)
    if isinstance(value, list):
        return [_mask(v) for v in value]
    return value


class _Strict(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    def __repr__(self) -> str:
        # Store and sink URLs may carry passwords: never show them (logs, tracebacks, debuggers).
        fields = ", ".join(
            f"{k}={_mask(v)!r}" for k, v in msgspec.structs.asdict(self).items() if v is not None
        )
        return f"{type(self).__name__}({fields})"


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    #: Seconds uvicorn waits for requests in flight on shutdown (raised to ``shutdown_grace``
    #: plus 5 when lower, so the gateway ends its streams before uvicorn cuts them).
    timeout_graceful_shutdown: float | None = 30.0
    #: Seconds the gateway gives requests in flight after SIGTERM/SIGINT before it ends them
    #: (streams with a terminal SSE error event); new requests are refused meanwhile.
    shutdown_grace: float = 25.0
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    #: The collector's young-generation threshold once serving (0: CPython's 700); and whether
    #: everything alive at start-up is frozen out of collections (see `asgi_llmguard.runtime`).
    gc_threshold: int = 10_000
    gc_freeze: bool = True

    def __post_init__(self) -> None:
        if self.gc_threshold < 0:
            raise ValueError(f"gc_threshold must be >= 0, not {self.gc_threshold}")


class ForwardConfig(_Strict):
    trust_env: bool = True
    passthrough: Literal["openai", "azure", "anthropic"] | None = None
    timeouts: Timeouts = msgspec.field(default_factory=Timeouts)
    limits: PoolLimits = msgspec.field(default_factory=PoolLimits)
    websockets: WebSocketLimits = msgspec.field(default_factory=WebSocketLimits)


class UpstreamConfig(_Strict):
    provider: ProviderName
    base_url: str
    #: The name of the environment variable holding the key (preferred: keeps it out of files).
    api_key_env: str | None = None
    #: The key itself. Allowed, but a file is easier to leak than an environment variable.
    api_key: str | None = None
    name: str | None = None
    api_version: str | None = None
    deployments: dict[str, str] = msgspec.field(default_factory=dict)
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    #: Prices of this credential (needs ``name``): they win over ``[prices]`` for its answers.
    prices: dict[str, ModelPrice] = msgspec.field(default_factory=dict)
    #: Routing: the models it serves (names or globs; empty: all), its weight and priority.
    models: list[str] = msgspec.field(default_factory=list)
    weight: int = 1
    priority: int = 0

    def __repr__(self) -> str:  # never show the key
        return f"UpstreamConfig(provider={self.provider!r}, base_url={self.base_url!r})"


class UsageConfig(_Strict):
    """``[usage]``: the ledger (`UsagePipeline` kwargs; unset ones keep its defaults) and the
    metering switches of `UsageMiddleware`."""

    enabled: bool = True
    sinks: list[str] = msgspec.field(default_factory=lambda: ["sqlite:///llmguard.sqlite3"])
    spill_path: str | None = "llmguard-usage.spill"
    durable: bool | None = None
    queue_size: int | None = None
    workers: int | None = None
    batch_size: int | None = None
    flush_interval: float | None = None
    drain_timeout: float | None = None
    replay_interval: float | None = None
    max_retries: int | None = None
    retry_backoff: tuple[float, float] | None = None
    write_timeout: float | None = None
    fsync_interval: float | None = None
    #: Ask OpenAI-style upstreams for the usage chunk and hide it from clients that did not.
    stream_usage: bool = True

    def pipeline_kwargs(self) -> dict[str, Any]:
        skip = {"enabled", "sinks", "stream_usage"}
        return {
            k: v
            for k, v in msgspec.structs.asdict(self).items()
            if k not in skip and (v is not None or k == "spill_path")
        }


class PricingConfig(_Strict):
    #: ``"reject"`` (400 naming the model) or a default price: ``{ input = 15, output = 60 }``.
    missing: MissingPrice = "reject"


class BudgetsConfig(_Strict):
    #: ``"memory://"`` (one worker; ``"memory"`` too) or a ``redis://``, ``rediss://`` or
    #: ``redis+cluster://`` URL shared by workers and replicas.
    store: str = "memory"
    prefix: str = "llmguard:budget:"
    timeout: float = 0.5
    #: The Redis connection pool's size per process (per node on a cluster).
    redis_max_connections: int = 64
    on_error: Literal["open", "closed"] = "closed"
    reservation_ttl: float = 900.0
    default_max_output_tokens: int = 4096
    #: Budgets shared by keys whose metadata matches, e.g. ``[budgets.tags."team:ml"]``.
    tags: dict[str, Budget] = msgspec.field(default_factory=dict)


class KeyCacheConfig(_Strict):
    ttl: float = 30.0
    negative_ttl: float = 5.0
    max_entries: int = 10_000
    #: Unknown keys remembered at most (default: ``max_entries``).
    max_negative_entries: int | None = None


class AuthConfig(_Strict):
    """``[auth]``: where virtual keys live and how they are read from requests."""

    #: ``"static"`` (the ``[[keys]]`` of this file) or a ``sqlite:///`` / ``postgresql://`` URL.
    store: str | None = None
    #: An environment variable holding the store URL (for URLs that carry a password).
    store_env: str | None = None
    header_names: list[str] | None = None
    max_key_length: int | None = None
    matcher_cache_size: int | None = None
    cache: KeyCacheConfig = msgspec.field(default_factory=KeyCacheConfig)


class KeyConfig(_Strict):
    """``[[keys]]``: one static virtual key, given by an environment variable or its digest."""

    name: str | None = None
    key_env: str | None = None
    key_hash: str | None = None
    providers: list[str] | None = None
    endpoints: list[str] | None = None
    models: list[str] | None = None
    tool_types: list[str] | None = None
    mcp_servers: list[str] | None = None
    allow_background: bool | None = None
    rate_limits: list[RateLimit] | None = None
    max_concurrency: int | None = None
    max_body_bytes: int | None = None
    budget: Budget | None = None
    capture: bool | None = None
    metadata: dict[str, str] | None = None

    def __repr__(self) -> str:  # never show the digest
        return f"KeyConfig(name={self.name!r}, key_env={self.key_env!r})"

    def policy_fields(self) -> dict[str, Any]:
        skip = {"name", "key_env", "key_hash"}
        return {
            k: v for k, v in msgspec.structs.asdict(self).items() if k not in skip and v is not None
        }


def _settings(section: msgspec.Struct, layer: type[msgspec.Struct]) -> dict[str, Any]:
    """A section's fields that are its layer's keyword arguments (all of them: same defaults)."""
    return {f.name: getattr(section, f.name) for f in msgspec.structs.fields(layer)}


def _given(struct: msgspec.Struct, skip: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The fields of a config section that were set (``None`` keeps the middleware default)."""
    return {
        k: v for k, v in msgspec.structs.asdict(struct).items() if k not in skip and v is not None
    }


class SizeLimitSection(SizeLimits, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """``[size_limit]``: `SizeLimits` (`SizeLimitMiddleware` kwargs) and a switch; TOML has no
    ``None``, so ``body_timeout = 0`` stands for no deadline."""

    enabled: bool = True

    def __post_init__(self) -> None:
        if self.body_timeout == 0:
            msgspec.structs.force_setattr(self, "body_timeout", None)
        super().__post_init__()


class RateLimitSection(
    RateLimitOptions, frozen=True, forbid_unknown_fields=True, omit_defaults=True
):
    """``[rate_limit]``: `RateLimitOptions` (`RateLimitMiddleware` kwargs), a switch, and
    ``storage_env`` naming an environment variable that holds a Redis URL with a password."""

    enabled: bool = True
    storage_env: str | None = None


class ConcurrencyConfig(_Strict):
    """``[concurrency]`` -> `ConcurrencyMiddleware` kwargs."""

    enabled: bool = True
    max_per_key_default: int | None = None
    trusted_proxies: list[str] | None = None


class CaptureConfig(_Strict):
    """``[capture]`` -> `CaptureMiddleware` kwargs; ``sink`` is a ``jsonl:///`` or
    ``sqlite:///`` URI. Without this section capture is left out of the stack."""

    sink: str
    routes: list[str] | None = None
    max_bytes: int | None = None
    redact_headers: list[str] | None = None
    queue_size: int | None = None
    close_timeout: float | None = None
    enabled: bool | None = None


class AccessLogConfig(_Strict):
    """``[access_log]`` -> `AccessLogMiddleware` kwargs; ``level`` by name (``"INFO"``)."""

    enabled: bool = True
    logger_name: str | None = None
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] | None = None
    trust_request_id: bool | None = None
    request_id_header: str | None = None

    def kwargs(self) -> dict[str, Any]:
        import logging

        out = _given(self, frozenset({"enabled"}))
        if "level" in out:
            out["level"] = getattr(logging, out["level"])
        return out


class HealthConfig(_Strict):
    """``[health]`` -> `HealthMiddleware`; ``redis`` / ``postgres`` (or ``*_env`` naming a
    variable that holds the URL) add readiness checks of those services."""

    enabled: bool = True
    live_path: str | None = None
    ready_path: str | None = None
    check_timeout: float | None = None
    cache_ttl: float | None = None
    redis: str | None = None
    redis_env: str | None = None
    postgres: str | None = None
    postgres_env: str | None = None


class OverloadConfig(_Strict):
    """``[overload]`` -> `OverloadMiddleware`; without the section nothing is shed."""

    max_in_flight: int
    retry_after: int | None = None
    exempt_paths: list[str] | None = None


class MetricsConfig(_Strict):
    """``[metrics]`` -> `MetricsMiddleware` (needs the ``metrics`` extra); without the section
    there are no metrics. ``models`` get their own label besides the priced models and aliases."""

    enabled: bool = True
    path: str | None = None
    models: list[str] | None = None
    max_models: int | None = None
    max_key_ids: int | None = None
    refresh_interval: float | None = None
    latency_buckets: list[float] | None = None
    ttfb_buckets: list[float] | None = None
    #: Paths not counted (default: the health endpoints).
    exclude_paths: list[str] | None = None


class AdminConfig(_Strict):
    """``[admin]``: the admin API and dashboard (`AdminApp`), off unless ``enabled``.

    ``key_env`` names the environment variable holding the admin key (never the file);
    ``ledger`` is the ledger the usage queries read (default: the first SQLite or PostgreSQL
    sink of ``[usage]``)."""

    enabled: bool = False
    key_env: str = "LLMGUARD_ADMIN_KEY"
    path: str = "/admin"
    ledger: str | None = None
    ledger_env: str | None = None
    max_body_bytes: int | None = None


class RoutingSection(Routing, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """``[routing]``: the `Routing` struct itself, plus where its cooldowns are shared: a Redis
    URL, or the environment variable holding it (URLs are resolved here, not by the router)."""

    cooldowns: CooldownPolicy | None = msgspec.field(default_factory=CooldownPolicy)
    cooldown_store: str | None = None
    cooldown_store_env: str | None = None
    #: The cooldown store's Redis connection pool size per process.
    cooldown_store_max_connections: int = 64

    def __repr__(self) -> str:
        return f"RoutingSection(selector={self.selector!r}, aliases={list(self.aliases)!r})"


class GatewayConfig(_Strict):
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    forward: ForwardConfig = msgspec.field(default_factory=ForwardConfig)
    upstreams: list[UpstreamConfig] = msgspec.field(default_factory=list)
    routing: RoutingSection = msgspec.field(default_factory=RoutingSection)
    usage: UsageConfig = msgspec.field(default_factory=UsageConfig)
    pricing: PricingConfig = msgspec.field(default_factory=PricingConfig)
    prices: dict[str, ModelPrice] = msgspec.field(default_factory=dict)
    budgets: BudgetsConfig = msgspec.field(default_factory=BudgetsConfig)
    auth: AuthConfig = msgspec.field(default_factory=AuthConfig)
    keys: list[KeyConfig] = msgspec.field(default_factory=list)
    size_limit: SizeLimitSection = msgspec.field(default_factory=SizeLimitSection)
    rate_limit: RateLimitSection = msgspec.field(default_factory=RateLimitSection)
    concurrency: ConcurrencyConfig = msgspec.field(default_factory=ConcurrencyConfig)
    capture: CaptureConfig | None = None
    access_log: AccessLogConfig = msgspec.field(default_factory=AccessLogConfig)
    health: HealthConfig = msgspec.field(default_factory=HealthConfig)
    overload: OverloadConfig | None = None
    metrics: MetricsConfig | None = None
    admin: AdminConfig = msgspec.field(default_factory=AdminConfig)


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

    With no ``[[upstreams]]`` in the file, ``OPENAI_API_KEY`` and ``ANTHROPIC_API_KEY`` (when set)
    give the public OpenAI and Anthropic APIs. An empty list means no provider key is configured.
    """
    entries = list(config.upstreams)
    if not entries:
        if environ.get("OPENAI_API_KEY"):
            entries.append(
                UpstreamConfig("openai", "https://api.openai.com/v1", api_key_env="OPENAI_API_KEY")
            )
        if environ.get("ANTHROPIC_API_KEY"):
            entries.append(
                UpstreamConfig(
                    "anthropic", "https://api.anthropic.com", api_key_env="ANTHROPIC_API_KEY"
                )
            )
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
        "budget_on_error": b.on_error,
        "budget_tags": b.tags,
        "reservation_ttl": b.reservation_ttl,
        "default_max_output_tokens": b.default_max_output_tokens,
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
