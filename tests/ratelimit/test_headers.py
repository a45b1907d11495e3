"""The ``x-ratelimit-*`` headers: OpenAI's names, and resets written as Go durations."""

from __future__ import annotations

import pytest

from asgi_llmguard.ratelimit import format_reset
from asgi_llmguard.ratelimit.headers import rate_headers
from asgi_llmguard.ratelimit.spec import Decision


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (-1.0, "0s"),
        (0.0, "0s"),
        (0.0000001, "1ms"),  # rounded up: a client waiting this long is never early
        (0.02, "20ms"),
        (0.0201, "21ms"),
        (0.999, "999ms"),
        (0.9995, "1s"),
        (1.0, "1s"),
        (1.5, "1.5s"),
        (1.25, "1.25s"),
        (59.9991, "1m0s"),
        (90.0, "1m30s"),
        (360.0, "6m0s"),
        (3600.0, "1h0m0s"),
        (3725.5, "1h2m5.5s"),
    ],
)
def test_reset_durations(seconds, text):
    assert format_reset(seconds) == text
    reset = dict(rate_headers(Decision(True, 10, 3, seconds), None))
    assert reset[b"x-ratelimit-reset-requests"] == text.encode()


def test_headers_of_both_kinds_in_openai_names():
    headers = rate_headers(Decision(True, 600, 599, 0.1), Decision(True, 90_000, 88_750, 75.0))
    assert headers == [
        (b"x-ratelimit-limit-requests", b"600"),
        (b"x-ratelimit-remaining-requests", b"599"),
        (b"x-ratelimit-reset-requests", b"100ms"),
        (b"x-ratelimit-limit-tokens", b"90000"),
        (b"x-ratelimit-remaining-tokens", b"88750"),
        (b"x-ratelimit-reset-tokens", b"1m15s"),
    ]
    assert rate_headers(None, None) == []
    assert [name for name, _ in rate_headers(None, Decision(True, 5, 0, 0.0))] == [
        b"x-ratelimit-limit-tokens",
        b"x-ratelimit-remaining-tokens",
        b"x-ratelimit-reset-tokens",
    ]
