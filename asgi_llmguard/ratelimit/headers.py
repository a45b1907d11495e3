"""The ``x-ratelimit-*`` and ``Retry-After`` headers, in the names and formats OpenAI uses.

Clients and SDK helpers already parse OpenAI's headers, so the gateway speaks the same dialect:
``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``, with the reset written as a Go
duration (``"1s"``, ``"6m0s"``, ``"20ms"``), and ``Retry-After`` as whole seconds.
"""

from __future__ import annotations

import math

from asgi_llmguard.ratelimit.spec import Decision

_NAMES = {
    kind: (
        f"x-ratelimit-limit-{kind}".encode(),
        f"x-ratelimit-remaining-{kind}".encode(),
        f"x-ratelimit-reset-{kind}".encode(),
    )
    for kind in ("requests", "tokens")
}
#: Every header name `rate_headers` may set, to drop stale copies (e.g. the upstream's own).
HEADER_NAMES = frozenset(name for names in _NAMES.values() for name in names)


def format_reset(seconds: float) -> str:
    """A duration as OpenAI writes it: ``"0s"``, ``"20ms"``, ``"1.5s"``, ``"6m0s"``, ``"1h0m0s"``.

    Rounded *up* to the millisecond, so a client that waits exactly this long is not early.
    """
    return _reset(seconds).decode()


def _reset(seconds: float) -> bytes:
    """`format_reset` as the header value (bytes formatting: it is set on every response)."""
    ms = max(0, math.ceil(seconds * 1000.0 - 1e-6))
    if ms == 0:
        return b"0s"
    if ms < 1000:
        return b"%dms" % ms
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = b"%d" % (rest // 1000) if rest % 1000 == 0 else (b"%.3f" % (rest / 1000)).rstrip(b"0")
    if hours:
        return b"%dh%dm%ss" % (hours, minutes, secs)
    if minutes:
        return b"%dm%ss" % (minutes, secs)
    return secs + b"s"


def retry_after(seconds: float) -> bytes:
    """``Retry-After`` in whole seconds, rounded up and at least 1 (0 would invite a hot loop)."""
    return str(max(1, math.ceil(seconds - 1e-9))).encode()


def tighter(current: Decision | None, new: Decision) -> Decision:
    """Of two limits of one kind, the one to report: the fewest remaining, then the longest reset.

    A client can only act on one set of numbers per kind, and the binding limit is the one that
    will refuse it first.
    """
    if current is None:
        return new
    if (new.remaining, -new.reset_after) < (current.remaining, -current.reset_after):
        return new
    return current


_LIMIT_REQUESTS, _REMAINING_REQUESTS, _RESET_REQUESTS = _NAMES["requests"]
_LIMIT_TOKENS, _REMAINING_TOKENS, _RESET_TOKENS = _NAMES["tokens"]


def rate_headers(requests: Decision | None, tokens: Decision | None) -> list[tuple[bytes, bytes]]:
    """The ``x-ratelimit-*`` headers of the binding request and token limits (set on every
    admitted response, so formatted with bytes operations only)."""
    headers: list[tuple[bytes, bytes]] = (
        []
        if requests is None
        else [
            (_LIMIT_REQUESTS, b"%d" % requests.limit),
            (_REMAINING_REQUESTS, b"%d" % requests.remaining),
            (_RESET_REQUESTS, _reset(requests.reset_after)),
        ]
    )
    if tokens is not None:
        headers += (
            (_LIMIT_TOKENS, b"%d" % tokens.limit),
            (_REMAINING_TOKENS, b"%d" % tokens.remaining),
            (_RESET_TOKENS, _reset(tokens.reset_after)),
        )
    return headers
