"""The standalone server's config file, mapped one-to-one onto the stack's keyword arguments.

This module and the CLI are the only places that read files and environment variables; every
middleware takes plain keyword arguments. The file is TOML decoded with msgspec, so a wrong field
fails with a message that names it (``Expected `int`, got `str` - at `$.server.port```).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import msgspec

from asgi_llmguard.errors import ConfigurationError
from asgi_llmguard.forward.config import PoolLimits, Timeouts
from asgi_llmguard.providers.base import Upstream

ProviderName = Literal["openai", "azure", "anthropic"]

# Values people paste from examples; a gateway started with one would fail at the provider with a
# confusing 401, so it refuses to start instead.
_SAMPLE_KEY_MARKERS = ("replace", "changeme", "change-me", "your-key", "your_key", "xxxx", "...")


class _Strict(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    pass


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    #: Seconds uvicorn waits for requests in flight on shutdown.
    timeout_graceful_shutdown: float | None = 30.0
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"


class TimeoutsConfig(_Strict):
    connect: float | None = 10.0
    pool: float | None = 60.0
    write: float | None = 60.0
    first_byte: float | None = 600.0
    idle: float | None = 600.0


class PoolConfig(_Strict):
    max_connections: int = 1000
    max_per_host: int = 0
    keepalive_expiry: float = 60.0


class ForwardConfig(_Strict):
    trust_env: bool = True
    passthrough: Literal["openai", "azure", "anthropic"] | None = None
    timeouts: TimeoutsConfig = msgspec.field(default_factory=TimeoutsConfig)
    limits: PoolConfig = msgspec.field(default_factory=PoolConfig)


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

    def __repr__(self) -> str:  # never show the key
        return f"UpstreamConfig(provider={self.provider!r}, base_url={self.base_url!r})"


class GatewayConfig(_Strict):
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    forward: ForwardConfig = msgspec.field(default_factory=ForwardConfig)
    upstreams: list[UpstreamConfig] = msgspec.field(default_factory=list)


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
        if key is not None and any(m in key.lower() for m in _SAMPLE_KEY_MARKERS):
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
                )
            )
        except ConfigurationError as exc:
            raise ConfigurationError(f"{where}: {exc}") from None
    return upstreams


def stack_kwargs(config: GatewayConfig, upstreams: list[Upstream]) -> dict[str, Any]:
    """The keyword arguments of `build_stack` that this config describes."""
    fwd = config.forward
    return {
        "upstreams": upstreams,
        "timeouts": Timeouts(**msgspec.structs.asdict(fwd.timeouts)),
        "limits": PoolLimits(**msgspec.structs.asdict(fwd.limits)),
        "trust_env": fwd.trust_env,
        "passthrough": fwd.passthrough,
    }
