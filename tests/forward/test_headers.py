from hypothesis import given
from hypothesis import strategies as st

from asgi_llmguard.forward.headers import (
    HOP_BY_HOP,
    request_drop_set,
    request_headers,
    response_headers,
)

STATIC = [("Authorization", "Bearer sk-upstream")]


def test_request_drops_hop_by_hop_connection_named_and_client_credentials():
    raw = [
        (b"host", b"gateway.example"),
        (b"connection", b"X-Internal, Keep-Alive"),
        (b"x-internal", b"secret"),
        (b"keep-alive", b"timeout=5"),
        (b"te", b"trailers"),
        (b"upgrade", b"h2c"),
        (b"proxy-connection", b"keep-alive"),
        (b"transfer-encoding", b"chunked"),
        (b"authorization", b"Bearer client-key"),
        (b"x-api-key", b"client-key"),
        (b"api-key", b"client-key"),
        (b"content-type", b"application/json"),
        (b"x-forwarded-host", b"169.254.169.254"),
        (b"openai-beta", b"assistants=v2"),
    ]
    out = request_headers(raw, request_drop_set(STATIC), [], STATIC)
    assert out == [
        ("content-type", "application/json"),
        ("openai-beta", "assistants=v2"),
        ("Authorization", "Bearer sk-upstream"),
    ]


def test_defaults_only_when_the_client_sent_none():
    defaults = [("anthropic-version", "2023-06-01")]
    drop = request_drop_set([])
    assert request_headers([], drop, defaults, []) == defaults
    sent = [(b"anthropic-version", b"2024-01-01")]
    assert request_headers(sent, drop, defaults, []) == [("anthropic-version", "2024-01-01")]


def test_configured_headers_replace_the_clients():
    static = [("OpenAI-Organization", "org-gw"), ("Authorization", "Bearer k")]
    raw = [(b"openai-organization", b"org-client")]
    assert request_headers(raw, request_drop_set(static), [], static) == static


def test_response_keeps_length_and_encoding_drops_hop_by_hop():
    raw = [
        (b"content-type", b"application/json"),
        (b"content-length", b"12"),
        (b"content-encoding", b"gzip"),
        (b"connection", b"close, x-trace"),
        (b"x-trace", b"internal"),
        (b"transfer-encoding", b"chunked"),
        (b"date", b"Mon"),
        (b"server", b"upstream"),
        (b"x-request-id", b"req_1"),
    ]
    assert response_headers(raw) == [
        (b"content-type", b"application/json"),
        (b"content-length", b"12"),
        (b"content-encoding", b"gzip"),
        (b"x-request-id", b"req_1"),
    ]


_names = st.sampled_from(
    [b"connection", b"te", b"upgrade", b"x-a", b"x-b", b"authorization", *sorted(HOP_BY_HOP)]
)


@given(st.lists(st.tuples(_names, st.binary(max_size=20).map(lambda b: b.replace(b",", b"")))))
def test_no_hop_by_hop_or_client_credential_ever_passes(raw):
    # Make the Connection header (if any) name x-a.
    raw = [(k, b"x-a" if k == b"connection" else v) for k, v in raw]
    out = request_headers(raw, request_drop_set(STATIC), [], STATIC)
    names = [k.lower() for k, _ in out]
    assert not {n.encode() for n in names} & HOP_BY_HOP
    assert names.count("authorization") == 1
    assert out[-1] == STATIC[0]
    if any(k == b"connection" for k, _ in raw):
        assert "x-a" not in names
