"""Rate-limit engines behind one small async interface.

- `MemoryGcra` / `RedisGcra`: the token bucket (GCRA), in one process or shared through Redis
  with one atomic Lua script per check;
- `WindowLimiter`: the ``limits`` library's fixed, moving and sliding-counter windows;
- `create_limiter(RateLimitConfig(...))` picks one by algorithm name and storage URI.

Every engine answers `acquire` / `charge` / `peek` with a `Decision`, or raises
`StoreUnavailable` when its store fails or is too slow; the caller applies the limit's
``on_error`` policy. `RateLimitMiddleware` is the usual caller.
"""

from asgi_llmguard.ratelimit.base import Limiter, LimiterStats, StoreUnavailable
from asgi_llmguard.ratelimit.config import (
    ALGORITHMS,
    RateLimitConfig,
    RateLimitOptions,
    create_limiter,
)
from asgi_llmguard.ratelimit.gcra import MemoryGcra, RedisGcra
from asgi_llmguard.ratelimit.headers import format_reset
from asgi_llmguard.ratelimit.identity import ClientIdentity
from asgi_llmguard.ratelimit.spec import Decision, ParsedLimit, parse_limit
from asgi_llmguard.ratelimit.windows import WindowLimiter

__all__ = [
    "ALGORITHMS",
    "ClientIdentity",
    "Decision",
    "Limiter",
    "LimiterStats",
    "MemoryGcra",
    "ParsedLimit",
    "RateLimitConfig",
    "RateLimitOptions",
    "RedisGcra",
    "StoreUnavailable",
    "WindowLimiter",
    "create_limiter",
    "format_reset",
    "parse_limit",
]
