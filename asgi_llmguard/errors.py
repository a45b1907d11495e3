"""Configuration errors and the JSON error bodies clients receive.

Every refusal the gateway makes is JSON in the shape of the API the client speaks, so the official
SDKs raise their usual typed exceptions: OpenAI's ``{"error": {"message", "type", "param",
"code"}}`` and Anthropic's ``{"type": "error", "error": {"type", "message"}}``. Messages are
written by the gateway, never copied from an exception, so no secret or stack trace can leak.
"""

from __future__ import annotations

from collections.abc import Iterable

import orjson

from asgi_llmguard.routes import MethodNotAllowed, RouteNotFound
from asgi_llmguard.types import Send


class ConfigurationError(ValueError):
    """A middleware or the config file was given a value it cannot work with."""


# OpenAI uses a small set of error types; the code carries the detail.
_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}
# https://docs.anthropic.com/en/api/errors
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}

_JSON = (b"content-type", b"application/json")
# The OpenAI and Anthropic SDKs (and the CLIs built on them) retry 4xx answers such as 401 and 403
# unless told not to; a refusal the gateway makes for these statuses cannot be fixed by retrying.
# 429 and 503 refusals carry ``Retry-After``: a short wait helps, so they say so.
_NO_RETRY = (b"x-should-retry", b"false")
_RETRY = (b"x-should-retry", b"true")
_SHOULD_RETRY = {
    **dict.fromkeys((400, 401, 403, 404, 405, 413), _NO_RETRY),
    **dict.fromkeys((429, 503), _RETRY),
}


def error_body(
    status: int,
    message: str,
    *,
    anthropic: bool = False,
    type: str | None = None,
    code: str | None = None,
    param: str | None = None,
) -> bytes:
    """The JSON error body for ``status`` in OpenAI's shape, or Anthropic's when asked."""
    if anthropic:
        kind = type or _ANTHROPIC_TYPES.get(status, "api_error")
        return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})
    kind = type or _OPENAI_TYPES.get(status, "server_error")
    return orjson.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}})


async def send_error(
    send: Send,
    status: int,
    message: str,
    *,
    anthropic: bool = False,
    type: str | None = None,
    code: str | None = None,
    headers: Iterable[tuple[bytes, bytes]] = (),
    should_retry: bool | None = None,
) -> None:
    """Send a complete JSON error response (``should_retry`` as in `send_body`)."""
    await send_body(
        send,
        status,
        error_body(status, message, anthropic=anthropic, type=type, code=code),
        headers,
        should_retry=should_retry,
    )


#: A refusal whose ``Retry-After`` is further away than this (seconds) says ``x-should-retry:
#: false``: no client should sleep for an hour inside one call; ``Retry-After`` still says when.
SHORT_WAIT = 60


def worth_waiting(wait: float | None) -> bool:
    """Whether a client should retry after ``wait`` seconds (``None``: it never resets)."""
    return wait is not None and wait <= SHORT_WAIT


async def send_body(
    send: Send,
    status: int,
    body: bytes,
    headers: Iterable[tuple[bytes, bytes]] = (),
    *,
    should_retry: bool | None = None,
) -> None:
    """Send a complete JSON response whose body is already encoded (e.g. prebuilt in __init__).

    The OpenAI and Anthropic SDKs honour ``x-should-retry``. A refusal with a status retrying
    cannot change (400, 401, 403, 404, 405, 413) says ``false``, so clients fail at once; a 429 or
    503 (sent with ``Retry-After``) says ``true``. ``should_retry`` overrides the status's default,
    e.g. for a budget that will not reset soon.
    """
    start = [_JSON, (b"content-length", str(len(body)).encode()), *headers]
    retry = (
        _SHOULD_RETRY.get(status)
        if should_retry is None
        else (_RETRY if should_retry else _NO_RETRY)
    )
    if retry is not None:
        start.append(retry)
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def sse_error_event(message: str, *, anthropic: bool, type: str = "api_error") -> bytes:
    """The terminal event sent when a stream cannot go on.

    It starts with a blank line so that any event the upstream left half-written is ended before
    ours; SDKs then raise on our event instead of seeing a silent end. OpenAI's SDK raises on a
    ``data:`` payload with an ``error`` member; Anthropic's on ``event: error``.
    """
    if anthropic:
        payload = orjson.dumps({"type": "error", "error": {"type": type, "message": message}})
        return b"\n\nevent: error\ndata: " + payload + b"\n\n"
    payload = orjson.dumps(
        {"error": {"message": message, "type": type, "param": None, "code": None}}
    )
    return b"\n\ndata: " + payload + b"\n\n"


async def send_route_error(
    send: Send, method: str, path: str, error: RouteNotFound | MethodNotAllowed | None
) -> None:
    """404 for an unknown route, 405 (with ``Allow``) for a known path with the wrong method."""
    anthropic = path.startswith("/v1/messages")
    shown = path if len(path) <= 200 else path[:200] + "..."
    if isinstance(error, MethodNotAllowed):
        await send_error(
            send,
            405,
            f"Method {method} is not allowed on {shown}.",
            anthropic=anthropic,
            headers=[(b"allow", ", ".join(error.allowed).encode())],
        )
        return
    await send_error(
        send, 404, f"Invalid URL ({method} {shown})", anthropic=anthropic, code="unknown_url"
    )
