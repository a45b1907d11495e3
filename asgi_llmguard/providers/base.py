"""The upstream description and the interface each provider module implements."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol
from urllib.parse import urlsplit

from asgi_llmguard.context import RequestContext
from asgi_llmguard.errors import ConfigurationError
from asgi_llmguard.redact import fingerprint
from asgi_llmguard.routes import Api

ProviderName = Literal["openai", "azure", "anthropic"]
StrHeaders = list[tuple[str, str]]


@dataclass(frozen=True, slots=True, repr=False)
class Upstream:
    """One upstream credential at one provider.

    ``provider`` is the API the upstream speaks: ``openai`` (OpenAI and every OpenAI-compatible
    server: vLLM, DeepInfra, a custom base URL), ``azure`` (Azure OpenAI) or ``anthropic``.
    ``base_url`` is the provider's base URL as its SDK takes it: ``https://api.openai.com/v1``,
    ``http://vllm:8000/v1``, ``https://RESOURCE.openai.azure.com``, ``https://api.anthropic.com``.

    The key is never shown: ``repr`` and ``credential_id`` carry only a hash prefix.
    """

    provider: ProviderName
    base_url: str
    api_key: str | None = None
    #: A name for this credential in records and logs; default ``<provider>:<key hash prefix>``.
    name: str | None = None
    #: Azure: the ``api-version`` query parameter. Anthropic: the ``anthropic-version`` header
    #: sent when the client sends none.
    api_version: str | None = None
    #: Azure: model name -> deployment name, for OpenAI-style requests that name a model.
    deployments: Mapping[str, str] = field(default_factory=dict)
    #: Extra headers sent upstream with every request (e.g. ``OpenAI-Organization``).
    headers: Mapping[str, str] = field(default_factory=dict)
    #: The models this credential serves (names or globs such as ``claude-*``); empty: all.
    #: Routing builds each model's credential pool from these.
    models: tuple[str, ...] = ()
    #: Share of the traffic under the ``weighted`` selector.
    weight: int = 1
    #: Group under the ``priority`` selector: lower numbers are used first.
    priority: int = 0

    def __post_init__(self) -> None:
        if self.provider not in ("openai", "azure", "anthropic"):
            raise ConfigurationError(
                f"Upstream provider must be 'openai', 'azure' or 'anthropic', not {self.provider!r}"
            )
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigurationError(
                f"Upstream base_url must be an absolute http(s) URL, got {self.base_url!r}"
            )
        if parts.query or parts.fragment:
            raise ConfigurationError("Upstream base_url must not carry a query or fragment")
        if self.api_key is not None and not self.api_key.strip():
            raise ConfigurationError("Upstream api_key is empty; leave it out or set a key")
        models: object = self.models
        if isinstance(models, str) or not all(isinstance(m, str) and m for m in self.models):
            raise ConfigurationError("Upstream models must be a list of model names or globs")
        object.__setattr__(self, "models", tuple(self.models))
        if self.weight < 1:
            raise ConfigurationError("Upstream weight must be a positive integer")

    @property
    def credential_id(self) -> str:
        if self.name:
            return self.name
        return f"{self.provider}:{fingerprint(self.api_key) if self.api_key else 'nokey'}"

    def __repr__(self) -> str:
        key = f"sha256:{fingerprint(self.api_key)}" if self.api_key else None
        return f"Upstream(provider={self.provider!r}, base_url={self.base_url!r}, key={key!r})"


class Provider(Protocol):
    """What the forwarder asks of a provider module, once per upstream at start-up."""

    #: The route dialects this provider can serve, in order of preference.
    serves: frozenset[Api]

    def static_headers(self, upstream: Upstream) -> StrHeaders:
        """Headers added to every upstream request, credential included; built once."""
        ...

    def target(self, upstream: Upstream, ctx: RequestContext, query: bytes) -> str:
        """The absolute upstream URL for this request, query string included."""
        ...

    def default_headers(self, upstream: Upstream) -> StrHeaders:
        """Headers sent only when the client did not send them (e.g. ``anthropic-version``)."""
        ...


def provider_for(name: ProviderName) -> Provider:
    from asgi_llmguard.providers import anthropic, azure, openai

    modules: dict[str, Provider] = {
        "openai": openai.PROVIDER,
        "azure": azure.PROVIDER,
        "anthropic": anthropic.PROVIDER,
    }
    return modules[name]


def join(base_url: str, path: str, query: bytes) -> str:
    url = base_url.rstrip("/") + path
    return url + "?" + query.decode("latin-1") if query else url
