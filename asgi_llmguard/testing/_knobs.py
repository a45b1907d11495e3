"""The fake provider's misbehaviour knobs: defaults, validation and per-request headers."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

from asgi_llmguard.testing._common import ApiError
from asgi_llmguard.testing._tools import check_arguments

DEFAULT_REPLY = "Hello from the fake provider."


@dataclass(frozen=True)
class Knobs:
    latency: float = 0.0
    chunk_delay: float = 0.0
    status: int | None = None
    retry_after: float | None = None
    reset_after_chunks: int | None = None
    truncate_after_chunks: int | None = None
    chunks: int | None = None
    reply: str = DEFAULT_REPLY
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    #: The line ending of streamed events: "lf" (``\n``), "crlf" or "cr"; all are valid SSE.
    line_ending: str = "lf"
    #: Chat streams asked for usage carry it on the last chunk with choices, not on a chunk of
    #: its own (as some OpenAI-compatible servers do).
    usage_in_last_chunk: bool = False
    cache_write_5m: int = 0
    cache_write_1h: int = 0
    #: The service tier the answers report; ``None``: the standard tier's name.
    service_tier: str | None = None
    #: Tool calls: ``None`` (never), ``auto`` (the first offered tool) or a tool's name.
    tool_call: str | None = None
    #: The calls' arguments, a JSON object; ``None``: built from the tool's schema.
    tool_arguments: str | None = None
    #: Two tool calls in one turn.
    parallel_tool_calls: bool = False
    #: Answer the request's response schema with JSON built from it.
    structured_output: bool = False


def seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number of seconds")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number of seconds >= 0")
    return float(value)


def count(name: str, value: object, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}")
    return value


def status_code(name: str, value: object) -> int:
    status = count(name, value, 200)
    if status > 599:
        raise ValueError(f"{name} must be an HTTP status between 200 and 599")
    return status


def validate(knobs: Knobs) -> Knobs:
    """Check every knob; ValueError names the first bad one."""
    seconds("latency", knobs.latency)
    seconds("chunk_delay", knobs.chunk_delay)
    if knobs.status is not None:
        status_code("status", knobs.status)
    if knobs.retry_after is not None:
        seconds("retry_after", knobs.retry_after)
    count("cached_tokens", knobs.cached_tokens)
    count("reasoning_tokens", knobs.reasoning_tokens)
    for name in (
        "reset_after_chunks",
        "truncate_after_chunks",
        "chunks",
        "cache_write_5m",
        "cache_write_1h",
    ):
        value = getattr(knobs, name)
        if value is not None:
            count(name, value)
    if not isinstance(knobs.reply, str):
        raise ValueError("reply must be a string")
    if knobs.line_ending not in LINE_ENDINGS:
        raise ValueError("line_ending must be 'lf', 'crlf' or 'cr'")
    if not isinstance(knobs.usage_in_last_chunk, bool):
        raise ValueError("usage_in_last_chunk must be a boolean")
    tier = knobs.service_tier
    if tier is not None and (
        not isinstance(tier, str) or not tier or not tier.isascii() or not tier.isprintable()
    ):
        raise ValueError("service_tier must be a non-empty ASCII string")
    if knobs.tool_call is not None and (
        not isinstance(knobs.tool_call, str) or not knobs.tool_call
    ):
        raise ValueError("tool_call must be 'auto' or a tool name")
    if knobs.tool_arguments is not None:
        if not isinstance(knobs.tool_arguments, str):
            raise ValueError("tool_arguments must be a JSON object")
        check_arguments(knobs.tool_arguments)
    for name in ("parallel_tool_calls", "structured_output"):
        if not isinstance(getattr(knobs, name), bool):
            raise ValueError(f"{name} must be a boolean")
    return knobs


# header -> (field, parser of the header's text)
HEADER_KNOBS: dict[str, tuple[str, Callable[[str], object]]] = {
    "x-fake-latency": ("latency", float),
    "x-fake-chunk-delay": ("chunk_delay", float),
    "x-fake-status": ("status", int),
    "x-fake-retry-after": ("retry_after", float),
    "x-fake-reset-after-chunks": ("reset_after_chunks", int),
    "x-fake-truncate-after-chunks": ("truncate_after_chunks", int),
    "x-fake-chunks": ("chunks", int),
    "x-fake-reply": ("reply", lambda text: text.encode("latin-1").decode("utf-8")),
    "x-fake-cached-tokens": ("cached_tokens", int),
    "x-fake-reasoning-tokens": ("reasoning_tokens", int),
    "x-fake-line-ending": ("line_ending", str.lower),
    "x-fake-usage-in-last-chunk": ("usage_in_last_chunk", lambda text: text.lower() == "true"),
    "x-fake-cache-write-5m": ("cache_write_5m", int),
    "x-fake-cache-write-1h": ("cache_write_1h", int),
    "x-fake-service-tier": ("service_tier", str),
    "x-fake-tool-call": ("tool_call", str),
    "x-fake-tool-arguments": (
        "tool_arguments",
        lambda text: text.encode("latin-1").decode("utf-8"),
    ),
    "x-fake-parallel-tool-calls": ("parallel_tool_calls", lambda text: text.lower() == "true"),
    "x-fake-structured-output": ("structured_output", lambda text: text.lower() == "true"),
}
LINE_ENDINGS = {"lf": b"\n", "crlf": b"\r\n", "cr": b"\r"}
OPTIONAL_KNOBS = {
    "status",
    "retry_after",
    "reset_after_chunks",
    "truncate_after_chunks",
    "chunks",
    "service_tier",
    "tool_call",
    "tool_arguments",
}


def override(knobs: Knobs, headers: list[tuple[str, str]]) -> Knobs:
    changes: dict[str, object] = {}
    for name, text in headers:
        if not name.startswith("x-fake-"):
            continue
        if name not in HEADER_KNOBS:
            raise ApiError(400, f"unknown fake-provider header {name!r}")
        field, parse = HEADER_KNOBS[name]
        try:
            if field in OPTIONAL_KNOBS and text.strip().lower() == "none":
                changes[field] = None
            else:
                changes[field] = parse(text.strip() if field != "reply" else text)
        except (ValueError, UnicodeError):
            raise ApiError(400, f"bad value for {name}: {text!r}") from None
    if not changes:
        return knobs
    try:
        return validate(dataclasses.replace(knobs, **changes))  # type: ignore[arg-type]
    except ValueError as exc:
        raise ApiError(400, f"bad fake-provider header: {exc}") from None
