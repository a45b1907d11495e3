"""Header rules for both directions of the relay.

Hop-by-hop headers (RFC 9110 §7.6.1) describe one connection and must not be forwarded, nor may
any header that ``Connection`` names. The client's credentials are dropped before the upstream's
are added, so a caller can never choose the credential.
"""

from __future__ import annotations

from asgi_llmguard.types import Headers

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)

# Besides hop-by-hop: the client's Host and credentials, the length (the engine sets it for the
# body it sends), cookies meant for the gateway, and what would tell the provider about the
# client's network or let a client pose as a proxy hop.
REQUEST_DROP = HOP_BY_HOP | {
    b"host",
    b"content-length",
    b"expect",
    b"authorization",
    b"x-api-key",
    b"api-key",
    b"x-goog-api-key",
    b"cookie",
    b"forwarded",
    b"x-forwarded-for",
    b"x-forwarded-host",
    b"x-forwarded-proto",
    b"x-forwarded-port",
    b"x-real-ip",
    # Replaced by the gateway's own request id (see `ForwardingApp`).
    b"x-request-id",
}

# The ASGI server writes its own Date and Server.
RESPONSE_DROP = HOP_BY_HOP | {b"date", b"server"}


def _connection_tokens(value: bytes) -> set[bytes]:
    return {t.strip().lower() for t in value.split(b",") if t.strip()}


def request_drop_set(static: list[tuple[str, str]]) -> frozenset[bytes]:
    """What to drop from a client's request for an upstream that adds ``static`` headers: the
    configured headers replace any the client sent under the same name."""
    return REQUEST_DROP | {k.lower().encode("latin-1") for k, _ in static}


def request_headers(
    raw: Headers,
    drop: frozenset[bytes],
    defaults: list[tuple[str, str]],
    static: list[tuple[str, str]],
) -> list[tuple[str, str]]:
    """The headers sent upstream, in one pass over the client's: those not in ``drop`` (see
    `request_drop_set`) nor named by ``Connection``, then the ``defaults`` the client did not
    send, then ``static`` (the upstream credential and configured headers)."""
    out: list[tuple[str, str]] = []
    named: set[bytes] | None = None
    for name, value in raw:
        if name in drop:
            if name == b"connection":
                named = _connection_tokens(value)
            continue
        out.append((name.decode("latin-1"), value.decode("latin-1")))
    if named:
        out = [(k, v) for k, v in out if k.encode("latin-1") not in named]
    if defaults:
        present = {k for k, _ in out}
        out.extend((k, v) for k, v in defaults if k not in present)
    out.extend(static)
    return out


def response_headers(raw: Headers) -> Headers:
    """The upstream's response headers that may reach the client (names already lower-case)."""
    out: Headers = []
    named: set[bytes] | None = None
    for name, value in raw:
        if name in RESPONSE_DROP:
            if name == b"connection":
                named = _connection_tokens(value)
            continue
        out.append((name, value))
    if named:
        out = [(k, v) for k, v in out if k not in named]
    return out
