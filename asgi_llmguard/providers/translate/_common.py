"""Small functions the codecs share."""

from __future__ import annotations

from typing import Any

from asgi_llmguard.providers.sse import event_fields
from asgi_llmguard.providers.translate.model import MalformedInput


def as_dict(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MalformedInput(f"{where} must be an object")
    return value


def as_list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise MalformedInput(f"{where} must be an array")
    return value


def as_str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise MalformedInput(f"{where} must be a string")
    return value


def as_int(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise MalformedInput(f"{where} must be an integer")
    return value


def as_number(value: Any, where: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise MalformedInput(f"{where} must be a number")
    return float(value)


def data_uri(url: str) -> tuple[str, str] | None:
    """``(media_type, base64 data)`` of a ``data:<type>;base64,<data>`` URI, else ``None``."""
    if not url.startswith("data:"):
        return None
    head, sep, data = url.partition(",")
    if not sep or not head.endswith(";base64"):
        raise MalformedInput("an image data: URI must be base64 encoded")
    return head[5:-7], data


def number(req: dict[str, Any], key: str) -> float | None:
    value = req.get(key)
    return None if value is None else as_number(value, key)


def sse_fields(event: bytes) -> tuple[bytes | None, bytes]:
    """``event_fields`` with a fast path for the shapes providers send: one ``data:`` line,
    optionally after one ``event:`` line, without carriage returns."""
    if b"\r" not in event:
        if event.startswith(b"data: "):
            if b"\n" not in event:
                return None, event[6:]
        elif event.startswith(b"event: "):
            end = event.find(b"\n")
            if event.startswith(b"data: ", end + 1) and event.find(b"\n", end + 1) == -1:
                return event[7:end], event[end + 7 :]
    return event_fields(event)


def opt_str(value: Any, where: str) -> str | None:
    return None if value is None else as_str(value, where)


def count(raw: dict[str, Any], key: str) -> int:
    """A token count of a usage object: absent or null is 0."""
    value = raw.get(key)
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise MalformedInput(f"usage.{key} must be a non-negative integer")
    return value


def opt_dict(value: Any, where: str) -> dict[str, Any]:
    """An optional object: absent or null is empty."""
    return {} if value is None else as_dict(value, where)
