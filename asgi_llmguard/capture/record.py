"""`CaptureRecord`: one captured exchange, as handed to a capture sink."""

from __future__ import annotations

import base64
from typing import Literal

import msgspec

#: How the exchange ended: ``complete`` (the response was sent to its end), ``disconnected`` (the
#: client went away first), ``cancelled`` (the request's task was cancelled, e.g. at shutdown) or
#: ``error`` (an exception escaped the app below the capture layer).
CaptureOutcome = Literal["complete", "disconnected", "cancelled", "error"]
BodyEncoding = Literal["text", "base64"]


class CaptureRecord(msgspec.Struct, kw_only=True, frozen=True):
    """One request and its response, as the forwarder exchanged them with the upstream.

    Bodies are kept up to the middleware's ``max_bytes`` each: ``*_truncated`` says when more was
    sent, and ``*_body_bytes`` how much in total. A body that is valid UTF-8 is stored as text
    (``*_body_encoding = "text"``), anything else (compressed, audio, images) as base64.
    Credentials are redacted (see `asgi_llmguard.capture.redact`); the key appears only as its
    ``key_id``.
    """

    #: The gateway's request id (the same as in the usage record), and the caller's
    #: ``x-request-id`` when it sent one.
    request_id: str
    client_request_id: str | None = None
    #: Wall-clock arrival, seconds since the epoch; ``duration``: seconds from arrival to the end.
    started_at: float
    duration: float
    #: The virtual key's id (a hash prefix or the operator's name), never the key.
    key_id: str | None = None
    #: The route's API (``openai``, ``azure``, ``anthropic``, ``gemini``) and operation
    #: (``chat.completions``).
    api: str | None = None
    endpoint: str | None = None
    model: str | None = None
    method: str
    path: str
    query: str = ""
    #: The response status; 0 when no response was started.
    status: int = 0
    outcome: CaptureOutcome = "complete"
    #: True unless the response was sent to its end (``outcome == "complete"``).
    incomplete: bool = False
    #: The response was a server-sent event stream.
    stream: bool = False
    #: The upstream credential that served the request, and the upstream failure kind, if any.
    credential_id: str | None = None
    upstream_error: str | None = None
    request_headers: list[tuple[str, str]] = msgspec.field(default_factory=list)
    request_body: str = ""
    request_body_encoding: BodyEncoding = "text"
    request_body_bytes: int = 0
    request_truncated: bool = False
    response_headers: list[tuple[str, str]] = msgspec.field(default_factory=list)
    response_body: str = ""
    response_body_encoding: BodyEncoding = "text"
    response_body_bytes: int = 0
    response_truncated: bool = False

    def request_bytes(self) -> bytes:
        """The captured request body as bytes (decoded from text or base64)."""
        return decode_body(self.request_body, self.request_body_encoding)

    def response_bytes(self) -> bytes:
        """The captured response body as bytes (decoded from text or base64)."""
        return decode_body(self.response_body, self.response_body_encoding)


def encode_body(data: bytes, *, truncated: bool) -> tuple[str, BodyEncoding]:
    """``data`` as text when it is UTF-8, else as base64.

    A truncated body may end inside a multi-byte character; those last 1-3 bytes are dropped
    rather than turning the whole body into base64.
    """
    try:
        return data.decode("utf-8"), "text"
    except UnicodeDecodeError as exc:
        if truncated and exc.start >= len(data) - 3 and exc.reason == "unexpected end of data":
            return data[: exc.start].decode("utf-8", "strict"), "text"
    return base64.b64encode(data).decode("ascii"), "base64"


def decode_body(body: str, encoding: BodyEncoding) -> bytes:
    return base64.b64decode(body) if encoding == "base64" else body.encode("utf-8")
