"""The config file's schema: one struct per section, decoded strictly by msgspec.

A section that configures a layer is that layer's own runtime struct (`Timeouts`, `PoolLimits`,
`Routing`, `RateLimitOptions`, `SizeLimits`, `BudgetOptions`), subclassed only to add what the
file needs besides (a switch, a store URL or the environment variable holding it). Sections whose
layer takes plain keyword arguments list exactly those arguments, ``None`` keeping the layer's
default. Reading the file, the environment and URLs is `asgi_llmguard.config`'s business.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from asgi_llmguard.forward.config import PoolLimits, Timeouts, WebSocketLimits
from asgi_llmguard.forward.cooldowns import CooldownPolicy
from asgi_llmguard.forward.router import Routing
from asgi_llmguard.middleware.size_limit import SizeLimits
from asgi_llmguard.policy import Budget, RateLimit
from asgi_llmguard.providers import PROVIDERS
from asgi_llmguard.ratelimit.config import RateLimitOptions
from asgi_llmguard.routes import Api
from asgi_llmguard.usage.budgets import BudgetOptions
from asgi_llmguard.usage.pricing import MissingPrice, ModelPrice

#: A provider's name: one in the registry (`asgi_llmguard.providers.PROVIDERS`), which msgspec
#: checks as it decodes the file.
if TYPE_CHECKING:
    ProviderName = str
else:
    ProviderName = Literal[tuple(PROVIDERS)]

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
    #: Serve HTTPS: the certificate chain (PEM) and its private key (PEM; default: in the
    #: certificate file). Off when unset.
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    def __post_init__(self) -> None:
        if self.gc_threshold < 0:
            raise ValueError(f"gc_threshold must be >= 0, not {self.gc_threshold}")
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            raise ValueError("ssl_keyfile needs ssl_certfile")


class ForwardConfig(_Strict):
    trust_env: bool = True
    passthrough: Api | None = None
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
    #: Vertex AI: the service-account key file (unset: application default credentials).
    credentials_file: str | None = None
    #: Vertex AI: the project and location requests are sent to (unset: the caller's path's).
    project: str | None = None
    location: str | None = None
    #: Amazon Bedrock: the AWS region to sign for (unset: the base URL's, else the environment's).
    region: str | None = None
    #: Amazon Bedrock: the named profile of the shared AWS config files whose credentials sign.
    profile: str | None = None

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


class BudgetsSection(BudgetOptions, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """``[budgets]``: `BudgetOptions` (the usage layer's ``budget_options``; tag budgets as
    ``[budgets.tags."team:ml"]``), and where the store is: ``"memory://"`` (one worker;
    ``"memory"`` too) or a ``redis://``, ``rediss://`` or ``redis+cluster://`` URL shared by
    workers and replicas, with its key prefix, timeout and connection pool size per process
    (per node on a cluster)."""

    store: str = "memory"
    prefix: str = "llmguard:budget:"
    timeout: float = 0.5
    redis_max_connections: int = 64


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
    translate_drop: list[str] | None = None

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
    budgets: BudgetsSection = msgspec.field(default_factory=BudgetsSection)
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
