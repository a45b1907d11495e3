"""Small config objects for the upstream client, in the spirit of ``httpx.Limits``/``Timeout``.

Frozen msgspec structs: the config file's ``[forward.timeouts]``, ``[forward.limits]`` and
``[forward.websockets]`` decode into these very types, strictly (an unknown field is refused),
with the same defaults.
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


class WebSocketLimits(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The WebSocket relay's limits.

    - ``max_message_bytes``: the largest message either side may send (1009 beyond it);
    - ``idle_timeout``: seconds without a frame either way before the session is closed (1001);
    - ``max_duration``: seconds a session may last (1001 when over; OpenAI's own limit is 60 min);
    - ``connect_timeout``: seconds to open the upstream socket (504 when over);
    - ``heartbeat``: seconds between pings to the upstream, to notice one that vanished.
    ``None`` turns a timeout off.
    """

    max_message_bytes: int = 16 * 1024 * 1024
    idle_timeout: float | None = 600.0
    max_duration: float | None = 3600.0
    connect_timeout: float = 10.0
    heartbeat: float | None = 30.0

    def __post_init__(self) -> None:
        if isinstance(self.max_message_bytes, bool) or self.max_message_bytes < 1:
            raise ConfigurationError("WebSocketLimits.max_message_bytes must be >= 1")
        for name in ("idle_timeout", "max_duration", "connect_timeout", "heartbeat"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigurationError(
                    f"WebSocketLimits.{name} must be a positive number of seconds or None"
                )
