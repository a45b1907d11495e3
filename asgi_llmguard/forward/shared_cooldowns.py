"""The former home of `RedisCooldowns`, kept so existing imports work: it lives in
`asgi_llmguard.forward.cooldowns.redis` and is exported by `asgi_llmguard.forward.cooldowns`."""

from asgi_llmguard.forward.cooldowns.redis import RedisCooldowns

__all__ = ["RedisCooldowns"]
