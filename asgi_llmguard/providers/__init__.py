"""Per-provider knowledge: where a request goes, how it authenticates, what it expects."""

from asgi_llmguard.providers.base import Provider, Upstream, provider_for

__all__ = ["Provider", "Upstream", "provider_for"]
