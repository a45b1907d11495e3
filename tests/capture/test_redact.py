"""Best-effort redaction of captured headers, query strings and bodies."""

from __future__ import annotations

import time

import orjson
import pytest

from asgi_llmguard.capture import REDACTED, Redactor

R = REDACTED.encode()


def _redact(body: bytes, secrets: frozenset[bytes] = frozenset(), truncated: bool = False) -> bytes:
    return Redactor().body(body, secrets, truncated=truncated)


def test_credential_headers_are_always_redacted_and_collected():
    redactor = Redactor(redact_headers=["X-Team-Token-Header"])
    secrets: set[bytes] = set()
    out = redactor.headers(
        [
            (b"authorization", b"Bearer sk-abc-very-secret-1"),
            (b"x-api-key", b"anthropic-key-123456"),
            (b"api-key", b"0123456789abcdef"),
            (b"cookie", b"a=b; session=xyz12345678"),
            (b"x-team-token-header", b"team-secret"),
            (b"x-goog-api-key", b"AIzaSomething"),
            (b"x-ratelimit-remaining-tokens", b"1000"),
            (b"content-type", b"application/json"),
        ],
        secrets,
    )
    assert out == [
        ("authorization", REDACTED),
        ("x-api-key", REDACTED),
        ("api-key", REDACTED),
        ("cookie", REDACTED),
        ("x-team-token-header", REDACTED),
        ("x-goog-api-key", REDACTED),
        ("x-ratelimit-remaining-tokens", "1000"),
        ("content-type", "application/json"),
    ]
    # the token after the scheme, not "Bearer ..." as a whole
    assert b"sk-abc-very-secret-1" in secrets
    assert b"anthropic-key-123456" in secrets
    assert b"0123456789abcdef" in secrets
    assert b"team-secret" in secrets


@pytest.mark.parametrize(
    "name",
    [
        "api_key",
        "apiKey",
        "x-api-key",
        "OPENAI_API_KEY",
        "client_secret",
        "password",
        "access_token",
        "refreshToken",
        "private_key",
        "Authorization",
        "aws_credentials",
    ],
)
def test_secret_named_json_fields_are_redacted(name):
    body = orjson.dumps({"model": "m", name: "value-to-hide", "n": 1})
    out = orjson.loads(_redact(body))
    assert out == {"model": "m", name: REDACTED, "n": 1}


@pytest.mark.parametrize(
    "name", ["max_tokens", "prompt_cache_key", "token", "key", "tokens", "logprobs", "user"]
)
def test_ordinary_fields_are_kept(name):
    body = orjson.dumps({name: "keep me"})
    assert _redact(body) == body


def test_nested_escaped_truncated_and_sse_bodies():
    nested = b'{"a": {"b": [{"api_key": "x\\"y\\\\z"}]}, "c": "d"}'
    assert orjson.loads(_redact(nested)) == {"a": {"b": [{"api_key": REDACTED}]}, "c": "d"}
    truncated = b'{"model": "m", "client_secret": "abcdef-cut-o'
    assert _redact(truncated, truncated=True) == b'{"model": "m", "client_secret": "' + R
    sse = b'data: {"apiKey":"hide-me"}\n\ndata: {"apiKey": "and-me"}\n\n'
    assert b"hide-me" not in _redact(sse)
    assert b"and-me" not in _redact(sse)


def test_key_shapes_anywhere_in_a_body():
    body = (
        b"use sk-proj-abcdefghijklmnop1234 or sk-ant-api03-ABCDEFGHIJKLMNOP and "
        b"Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload AKIAABCDEFGHIJKLMNOP "
        b"AIza" + b"A" * 35 + b" xoxb-1234567890-abc; task-abcdefghijklmnop stays"
    )
    out = _redact(body)
    for secret in (
        b"abcdefghijklmnop1234",
        b"ABCDEFGHIJKLMNOP",
        b"eyJhbGci",
        b"AKIAABCD",
        b"xoxb-12",
    ):
        assert secret not in out, secret
    assert b"Bearer " + R in out
    assert b"task-abcdefghijklmnop stays" in out


def test_known_secrets_are_removed_even_without_a_recognisable_shape():
    secret = b"0123456789abcdef0123"
    body = b'{"note": "' + secret + b'"} trailing'
    assert secret not in _redact(body, frozenset({secret}))
    # cut in two by truncation: the leading part at the end of the body goes too
    cut = b'{"note": "' + secret[:9]
    assert secret[:9] not in _redact(cut, frozenset({secret}), truncated=True)


def test_query_parameters():
    q = Redactor.query("api-version=2024-10-21&key=abc&api_key=def&sig=ghi&x=1", set())
    assert q == f"api-version=2024-10-21&key={REDACTED}&api_key={REDACTED}&sig={REDACTED}&x=1"
    assert Redactor.query("x=my-known-secret-1", {b"my-known-secret-1"}) == f"x={REDACTED}"


def test_redacting_a_full_size_body_is_fast():
    # 64 KiB of a realistic chat body, many members: redaction runs on the event loop.
    message = {"role": "user", "content": "word " * 20, "name": "n", "tool_call_id": "t"}
    body = orjson.dumps({"model": "m", "messages": [message] * 500})[: 64 * 1024]
    start = time.perf_counter()
    for _ in range(10):
        _redact(body, frozenset({b"sk-some-client-key-123"}), truncated=True)
    assert (time.perf_counter() - start) / 10 < 0.02
