"""Per-provider knowledge: where a request goes, how it authenticates, what it expects.

The registry: one module per provider (``providers/<name>.py``) exports a `Provider` as
``PROVIDER``, and `PROVIDERS` lists them. It is the one place the set of providers is spelled:
``Upstream.provider``, the config file's ``provider =``, the default upstreams taken from the
environment and the meter of each route API all come from it.
"""

from asgi_llmguard.providers import anthropic, azure, bedrock, gemini, openai, vertex
from asgi_llmguard.providers.base import Provider, Upstream
from asgi_llmguard.routes import Api

#: Every provider, by name, in the order default upstreams are taken from the environment.
PROVIDERS: dict[str, Provider] = {
    module.PROVIDER.name: module.PROVIDER
    for module in (openai, azure, anthropic, gemini, vertex, bedrock)
}

#: The provider that defines each route API's wire (its meters, its warm-up request).
OWNERS: dict[Api, Provider] = {api: p for p in PROVIDERS.values() for api in p.owns}


def provider_for(name: str) -> Provider:
    """The provider registered as ``name`` (``Upstream`` checked the name already)."""
    return PROVIDERS[name]


__all__ = ["OWNERS", "PROVIDERS", "Provider", "Upstream", "provider_for"]
