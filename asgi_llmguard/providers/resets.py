"""Parsers of the rate-limit reset headers providers send (`Provider.reset_headers`).

Each takes the header's value and the time now (epoch seconds) and gives the seconds until the
limit resets, ``None`` when the value says nothing; garbage may raise ``ValueError`` (the cooldown
store ignores that header then).
"""

from __future__ import annotations

import re
from datetime import datetime

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def go_duration(text: str) -> float | None:
    """A duration in Go's ``time.Duration`` format: ``1s``, ``6m0s``, ``20ms``."""
    total = 0.0
    position = 0
    for match in _DURATION.finditer(text):
        if match.start() != position:
            return None
        total += float(match.group(1)) * _UNITS[match.group(2)]
        position = match.end()
    return total if position and position == len(text) else None


def seconds_or_duration(value: str, now: float) -> float | None:
    """Seconds (``0.5``) or a Go duration (``6m0s``): OpenAI's ``x-ratelimit-reset-*``."""
    try:
        return float(value)
    except ValueError:
        return go_duration(value)


def rfc3339_time(value: str, now: float) -> float | None:
    """An RFC 3339 time (``2026-01-12T13:47:00Z``): Anthropic's ``anthropic-ratelimit-*-reset``.
    A time without an offset is refused (it would be read as local time)."""
    stamp = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if stamp.tzinfo is None:
        return None
    return stamp.timestamp() - now
