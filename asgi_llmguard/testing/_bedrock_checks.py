"""What the fake Bedrock checks before answering: the caller's credentials (a SigV4 signature or a
Bedrock API key), and the knobs (:class:`FakeProvider`'s, plus ``error``,
``exception_after_chunks``, ``exception_first`` and ``cut_mid_frame_after_chunks``, with their
``x-fake-*`` headers)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from asgi_llmguard.testing import _bedrock_wire as wire
from asgi_llmguard.testing._common import ApiError
from asgi_llmguard.testing._http import ReceivedRequest
from asgi_llmguard.testing._knobs import Knobs, count, validate
from asgi_llmguard.testing._knobs import override as override_common
from asgi_llmguard.testing._sigv4 import SignatureError, SignedRequest, verify


@dataclass(frozen=True)
class BedrockKnobs:
    common: Knobs
    error: str | None = None
    exception_after_chunks: int | None = None
    #: A stream's very first frame is the exception (``error``'s, or ``throttlingException``),
    #: before any event.
    exception_first: bool = False
    #: After this many content chunks, send half of the next frame and reset the connection.
    cut_mid_frame_after_chunks: int | None = None


def validated(knobs: BedrockKnobs) -> BedrockKnobs:
    validate(knobs.common)
    if knobs.error is not None and knobs.error not in wire.ERRORS:
        raise ValueError(f"error must be one of {', '.join(sorted(wire.ERRORS))}")
    if knobs.exception_after_chunks is not None:
        count("exception_after_chunks", knobs.exception_after_chunks)
    if knobs.cut_mid_frame_after_chunks is not None:
        count("cut_mid_frame_after_chunks", knobs.cut_mid_frame_after_chunks)
    if not isinstance(knobs.exception_first, bool):
        raise ValueError("exception_first must be true or false")
    return knobs


_OWN_HEADERS = {
    "x-fake-error": "error",
    "x-fake-exception-after-chunks": "exception_after_chunks",
    "x-fake-exception-first": "exception_first",
    "x-fake-cut-mid-frame-after-chunks": "cut_mid_frame_after_chunks",
}


def override(knobs: BedrockKnobs, headers: list[tuple[str, str]]) -> BedrockKnobs:
    common = override_common(knobs.common, [(k, v) for k, v in headers if k not in _OWN_HEADERS])
    changes: dict[str, Any] = {}
    for name, text in headers:
        field = _OWN_HEADERS.get(name)
        if field is None:
            continue
        value = text.strip()
        if value.lower() == "none":
            changes[field] = None
        elif field == "error":
            changes[field] = value
        elif field == "exception_first":
            changes[field] = value.lower() in ("1", "true", "yes")
        else:
            try:
                changes[field] = int(value)
            except ValueError:
                raise ApiError(400, f"bad value for {name}: {text!r}") from None
    try:
        return validated(dataclasses.replace(knobs, common=common, **changes))
    except ValueError as exc:
        raise ApiError(400, f"bad fake-provider header: {exc}") from None


def authenticate(
    request: ReceivedRequest,
    raw_path: bytes,
    raw_query: bytes,
    *,
    access_keys: Mapping[str, str],
    api_key: str | None,
    region: str | None,
    max_skew: float,
) -> str:
    """The access key id that signed the request, or ``"bearer"`` for the API key; a 403
    `ApiError` named as AWS names it otherwise."""
    given = request.header("authorization") or ""
    if given.startswith("Bearer "):
        if api_key is not None and hmac.compare_digest(given[7:].encode(), api_key.encode()):
            return "bearer"
        raise ApiError(
            403,
            "Invalid API Key format: Must start with pre-defined prefix",
            kind="UnrecognizedClientException",
        )
    signed = SignedRequest(request.method, raw_path, raw_query, request.headers, request.body)
    try:
        return verify(
            signed,
            access_keys.get,
            service="bedrock",
            region=region,
            now=dt.datetime.now(dt.UTC),
            max_skew=max_skew,
        )
    except SignatureError as exc:
        raise ApiError(403, exc.message, kind=exc.code) from None
