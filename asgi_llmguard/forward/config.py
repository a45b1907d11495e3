"""Small config objects for the upstream client, in the spirit of ``httpx.Limits``/``Timeout``.

Frozen msgspec structs: the config file's ``[forward.timeouts]`` and ``[forward.limits]`` decode
into these very types, strictly (an unknown field is refused), with the same defaults.
"""

from __future__ import annotations

import msgspec

from asgi_llmguard.errors import ConfigurationError


class Timeouts(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Upstream timeouts in seconds, each for one phase of an exchange (``None``: no limit).

    The defaults suit long generations: a reasoning model may think for minutes before its first
    byte, and a stream may pause for minutes between events, so only real silence trips them.

    - ``connect``: opening a TCP (and TLS) connection to the upstream.
    - ``pool``: waiting for a free connection when the pool is at its limit.
    - ``write``: sending the request body.
    - ``first_byte``: from sending the request to the response headers.
    - ``idle``: the longest silence between two chunks of the response body.
    """

    connect: float | None = 10.0
    pool: float | None = 60.0
    write: float | None = 60.0
    first_byte: float | None = 600.0
    idle: float | None = 600.0

    def __post_init__(self) -> None:
        for name in ("connect", "pool", "write", "first_byte", "idle"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigurationError(f"Timeouts.{name} must be a positive number or None")


class PoolLimits(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Upstream connection pool limits.

    - ``max_connections``: open connections across all upstreams (0: unlimited).
    - ``max_per_host``: open connections to one upstream host (0: unlimited).
    - ``keepalive_expiry``: seconds an idle kept-alive connection is kept.
    """

    max_connections: int = 1000
    max_per_host: int = 0
    keepalive_expiry: float = 60.0

    def __post_init__(self) -> None:
        if self.max_connections < 0 or self.max_per_host < 0:
            raise ConfigurationError("PoolLimits connection counts must be >= 0 (0: unlimited)")
        if not self.keepalive_expiry > 0:
            raise ConfigurationError("PoolLimits.keepalive_expiry must be positive")
