"""AWS event-stream frames (``application/vnd.amazon.eventstream``), as the fake Bedrock sends them.

A frame (AWS calls it a message) is::

    total length (uint32, big-endian) | headers length (uint32) | prelude CRC32 (of those 8 bytes)
    headers | payload | message CRC32 (of everything before it)

and each header is ``name length (uint8) | name (UTF-8) | value type (uint8) | value``; the fake
only sends string values (type 7: ``uint16 length | UTF-8 bytes``). The CRC is the common CRC32
(``zlib.crc32``). Bedrock's streams use the headers ``:message-type`` (``event`` or
``exception``), ``:event-type`` or ``:exception-type``, and ``:content-type``.
"""

from __future__ import annotations

import struct
import zlib

import orjson

_STRING = 7
_UINT32 = struct.Struct(">I")
_PRELUDE = struct.Struct(">II")


def _header(name: str, value: str) -> bytes:
    raw_name = name.encode()
    raw_value = value.encode()
    return (
        bytes((len(raw_name),))
        + raw_name
        + bytes((_STRING,))
        + struct.pack(">H", len(raw_value))
        + raw_value
    )


def frame(headers: list[tuple[str, str]], payload: bytes) -> bytes:
    """One frame with string ``headers`` (in order) and ``payload``."""
    head = b"".join(_header(name, value) for name, value in headers)
    total = 12 + len(head) + len(payload) + 4
    prelude = _PRELUDE.pack(total, len(head))
    prelude += _UINT32.pack(zlib.crc32(prelude))
    body = prelude + head + payload
    return body + _UINT32.pack(zlib.crc32(body))


def event(event_type: str, payload: object) -> bytes:
    """An ``event`` frame whose payload is ``payload`` as JSON."""
    return frame(
        [
            (":event-type", event_type),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        orjson.dumps(payload),
    )


def exception(exception_type: str, message: str) -> bytes:
    """An ``exception`` frame: the stream's modeled error (``throttlingException``, ...)."""
    return frame(
        [
            (":exception-type", exception_type),
            (":content-type", "application/json"),
            (":message-type", "exception"),
        ],
        orjson.dumps({"message": message}),
    )
