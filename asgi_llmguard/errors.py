"""Configuration errors and the JSON error bodies clients receive.

Every refusal the gateway makes is JSON in the shape of the API the client speaks, so the official
SDKs raise their usual typed exceptions: OpenAI's ``{"error": {"message", "type", "param",
"code"}}``, Anthropic's ``{"type": "error", "error": {"type", "message"}}`` and Google's
``{"error": {"code", "message", "status"}}`` (each a `Dialect`, carried on the route). Messages are
written by the gateway, never copied from an exception, so no secret or stack trace can leak.
"""

from __future__ import annotations

from collections.abc import Iterable

from asgi_llmguard.routes import OPENAI, Dialect, MethodNotAllowed, RouteNotFound, dialect_of_path
from asgi_llmguard.types import Send


class ConfigurationError(ValueError):
    """A middleware or the config file was given a value it cannot work with."""


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
    dialect: Dialect = OPENAI,
    type: str | None = None,
    code: str | None = None,
    param: str | None = None,
) -> bytes:
    """The JSON error body for ``status`` in ``dialect``'s shape (OpenAI's by default)."""
    return dialect.error_body(status, message, type=type, code=code, param=param)


async def send_error(
    send: Send,
    status: int,
    message: str,
    *,
    dialect: Dialect = OPENAI,
    type: str | None = None,
    code: str | None = None,
    headers: Iterable[tuple[bytes, bytes]] = (),
    should_retry: bool | None = None,
) -> None:
    """Send a complete JSON error response (``should_retry`` as in `send_body`)."""
    await send_body(
        send,
        status,
        dialect.error_body(status, message, type=type, code=code),
        [*headers, *dialect.error_headers(status)] if dialect.type_header else headers,
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


#: A key marking the body message with which the forwarder ends a stream it was told to stop
#: (the gateway shutting down): the drain layer, which otherwise sends nothing more once it has
#: ended a request, lets that one through.
TERMINAL = "llmguard.terminal"


def sse_error_event(message: str, *, dialect: Dialect, type: str = "api_error") -> bytes:
    """The terminal event sent when a stream cannot go on (see `Dialect.stream_error`)."""
    return dialect.stream_error(message, type=type)


async def send_route_error(
    send: Send, method: str, path: str, error: RouteNotFound | MethodNotAllowed | None
) -> None:
    """404 for an unknown route, 405 (with ``Allow``) for a known path with the wrong method."""
    dialect = dialect_of_path(path)
    shown = path if len(path) <= 200 else path[:200] + "..."
    if isinstance(error, MethodNotAllowed):
        await send_error(
            send,
            405,
            f"Method {method} is not allowed on {shown}.",
            dialect=dialect,
            headers=[(b"allow", ", ".join(error.allowed).encode())],
        )
        return
    await send_error(
        send, 404, f"Invalid URL ({method} {shown})", dialect=dialect, code="unknown_url"
    )
