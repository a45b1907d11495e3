"""Cooldowns per (credential, model): a credential that failed rests before it is tried again.

- ``429``: as long as the provider says (``Retry-After`` in seconds or as a date,
  ``retry-after-ms``, OpenAI's ``x-ratelimit-reset-*``, Anthropic's
  ``anthropic-ratelimit-*-reset``), else exponential backoff from ``base`` up to ``cap``, with
  +-10 % jitter so replicas and credentials do not all come back in the same instant;
- ``401``/``402``/``403``: ``auth``, long, and for every model of the credential (model ``""``):
  a key that is wrong, revoked or out of credit is so whatever the model;
- ``5xx``: ``server_error`` (or the provider's ``Retry-After``, which a 503 may carry);
  connection errors, timeouts and broken connections: ``timeout``.

Failures that arrive together do not escalate twice: a failure while the pair is cooling, or of
an attempt that began before the current cooldown was set, keeps the level and can only lengthen
the cooldown when the provider's hint says later. The level is remembered after the cooldown ends
(so the next ``429`` backs off longer) for as long as that cooldown lasted, at most ``2 * cap``;
a success forgets it at once.

Backends, one per module: `MemoryCooldowns` (`.memory`) keeps the state in a bounded dict;
`RedisCooldowns` (`.redis`) shares it between replicas through one Redis hash, mirrored locally
so the hot path (`cooling_until`) never waits on Redis. `cooldown_store(url)` picks one by URL.
"""

from asgi_llmguard.forward.cooldowns.base import (
    Cooldown,
    CooldownPolicy,
    classify_failure,
    retry_after_hint,
)
from asgi_llmguard.forward.cooldowns.memory import MemoryCooldowns
from asgi_llmguard.forward.cooldowns.redis import RedisCooldowns

__all__ = [
    "Cooldown",
    "CooldownPolicy",
    "MemoryCooldowns",
    "RedisCooldowns",
    "classify_failure",
    "retry_after_hint",
]
