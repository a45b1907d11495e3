"""AWS event streams (``application/vnd.amazon.eventstream``), Bedrock's streamed answers.

A frame (AWS: "message") is ``total length (u32) | headers length (u32) | CRC32 of those 8
bytes | headers | payload | CRC32 of all before it``, big-endian; a header is
``name length (u8) | name | type (u8) | value``. Bedrock's frames carry ``:message-type``
(``event``, ``exception`` or ``error``), ``:event-type`` or ``:exception-type``, and a JSON
payload.

`FrameSplitter` is the event-stream counterpart of `sse.EventSplitter`: fed the upstream's chunks
as they come (a frame may span many chunks, a chunk hold many frames), it hands out each whole
frame whose CRCs hold, keeping at most one unfinished frame. A frame longer than ``max_frame`` is
skipped without being held (its length is trusted, since its prelude's CRC held); a prelude whose
CRC fails means the stream can no longer be framed, and the splitter stops (``broken``).

The meters that read these frames are in `bedrock_usage`. `first_frame_end` and
`error_in_first_frame` hold a stream's first frame to see if it is an error sent with HTTP 200;
`WholeFrames` lets a relay pass on whole frames only;
`exception_frame` builds the terminal frame that ends a stream the upstream broke, which the AWS
SDKs raise as the modeled exception it names.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from asgi_llmguard.routes import aws_exception_frame

MIME_TYPE = b"application/vnd.amazon.eventstream"
_PRELUDE = struct.Struct(">III")
_CRC = struct.Struct(">I")
#: The smallest frame: prelude (12 bytes) and message CRC (4), no headers, no payload.
_MIN_FRAME = 16
#: Frames past this size are skipped unread (the AWS SDKs refuse payloads past 24 MiB).
MAX_FRAME = 24 << 20
# Value sizes of the fixed-size header types: bool true/false, byte, short, int, long,
# (6, 7: byte array and string, 2-byte length), timestamp, uuid.
_FIXED = {0: 0, 1: 0, 2: 1, 3: 2, 4: 4, 5: 8, 8: 8, 9: 16}

#: The HTTP status an exception sent as a Bedrock stream's first frame stands for, as the retry
#: policy sees it: nothing was generated yet, so a model that failed (``modelStreamError``,
#: 424 on its own) or timed out is an upstream error another attempt may not meet.
EXCEPTION_STATUS = {
    "throttlingException": 429,
    "modelNotReadyException": 429,
    "serviceUnavailableException": 503,
    "internalServerException": 500,
    "modelStreamErrorException": 500,
    "modelTimeoutException": 504,
    "validationException": 400,
}
#: Bytes of one unfinished frame a relay holds back at most (a longer frame is relayed as it
#: comes; Bedrock's frames are a few hundred bytes).
HOLD_FRAME = 1 << 20


class FrameSplitter:
    """Whole, CRC-checked frames out of a stream's chunks; see the module docstring."""

    __slots__ = ("_buffer", "_skip", "broken", "corrupt", "max_frame", "oversized")

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buffer = bytearray()
        self._skip = 0
        self.max_frame = max_frame
        #: Frames skipped for exceeding ``max_frame``.
        self.oversized = 0
        #: Frames dropped because their message CRC did not match.
        self.corrupt = 0
        #: A prelude failed its CRC: the rest of the stream cannot be framed and is ignored.
        self.broken = False

    def feed(self, chunk: bytes) -> list[bytes]:
        """The frames completed by ``chunk``, in order."""
        if self.broken or not chunk:
            return []
        start = 0
        if self._skip:
            start = min(self._skip, len(chunk))
            self._skip -= start
            if start == len(chunk):
                return []
        buffer = self._buffer
        buffer += memoryview(chunk)[start:]
        frames: list[bytes] = []
        pos = 0
        end = len(buffer)
        while end - pos >= 12:
            total, headers, crc = _PRELUDE.unpack_from(buffer, pos)
            if (
                zlib.crc32(memoryview(buffer)[pos : pos + 8]) != crc
                or total < _MIN_FRAME
                or headers > total - _MIN_FRAME
            ):
                self.broken = True
                buffer.clear()
                return frames
            if total > self.max_frame:
                self.oversized += 1
                if end - pos >= total:
                    pos += total
                    continue
                self._skip = total - (end - pos)
                pos = end
                break
            if end - pos < total:
                break
            frame = bytes(buffer[pos : pos + total])
            pos += total
            if zlib.crc32(memoryview(frame)[:-4]) != _CRC.unpack_from(frame, total - 4)[0]:
                self.corrupt += 1
                continue
            frames.append(frame)
        del buffer[:pos]
        return frames

    @property
    def pending(self) -> int:
        """Bytes received but not yet handed out as part of a frame."""
        return len(self._buffer)

    def close(self) -> list[bytes]:
        """At the end of the stream: an unfinished frame is dropped (frames have no other end)."""
        self._buffer.clear()
        self._skip = 0
        return []


class WholeFrames:
    """Cuts a relayed event stream at frame ends, so a stream that breaks leaves the client with
    whole frames only (then a terminal exception frame can follow).

    ``feed`` returns the bytes up to the end of the last whole frame and holds the start of an
    unfinished one (at most ``limit`` bytes: a longer frame is passed on as it comes, and then
    ``aligned`` is false until its end). Only the length prefixes are read; the CRCs are the
    client's to check. Bytes that cannot be a frame (a length under 16) end the cutting: the
    rest is passed on as it is.
    """

    __slots__ = ("_held", "_left", "_off", "limit")

    def __init__(self, limit: int = HOLD_FRAME) -> None:
        self._held = b""
        #: Bytes of an oversized frame still to pass on before the next frame starts.
        self._left = 0
        self._off = False
        self.limit = limit

    def feed(self, chunk: bytes) -> bytes:
        if self._off:
            return chunk
        start = 0
        if self._left:
            if len(chunk) <= self._left:
                self._left -= len(chunk)
                return chunk
            start, self._left = self._left, 0
        data = self._held + chunk if self._held else chunk
        pos = start
        end = len(data)
        while end - pos >= 4:
            total = int.from_bytes(data[pos : pos + 4], "big")
            if total < _MIN_FRAME:
                self._off = True
                self._held = b""
                return data
            if end - pos >= total:
                pos += total
            elif total > self.limit:
                self._left = total - (end - pos)
                self._held = b""
                return data
            else:
                break
        self._held = data[pos:]
        return data if pos == end else data[:pos]

    @property
    def pending(self) -> int:
        """Bytes of an unfinished frame held back (or still due, for an oversized one)."""
        return len(self._held) or self._left

    @property
    def aligned(self) -> bool:
        """What was passed on ends at a frame's end (a frame may follow it)."""
        return not self._left and not self._off


@dataclass(frozen=True, slots=True)
class Frame:
    headers: dict[str, str]
    """The string (and byte-array, as latin-1) headers; other types are skipped."""
    payload: bytes

    @property
    def message_type(self) -> str:
        return self.headers.get(":message-type", "event")

    @property
    def event_type(self) -> str:
        return self.headers.get(":event-type", "")

    @property
    def is_error(self) -> bool:
        return self.message_type in ("exception", "error")

    @property
    def error_type(self) -> str:
        """``:exception-type`` (``throttlingException``, ...) or ``:error-code``."""
        return self.headers.get(":exception-type") or self.headers.get(":error-code", "")


def decode_frame(frame: bytes) -> Frame | None:
    """A whole frame's headers and payload (CRCs are `FrameSplitter`'s job); ``None`` when its
    headers are malformed."""
    if len(frame) < _MIN_FRAME:
        return None
    total, length, _ = _PRELUDE.unpack_from(frame)
    if total != len(frame) or length > total - _MIN_FRAME:
        return None
    headers: dict[str, str] = {}
    pos, end = 12, 12 + length
    try:
        while pos < end:
            size = frame[pos]
            name = frame[pos + 1 : pos + 1 + size].decode("utf-8")
            pos += 1 + size
            kind = frame[pos]
            pos += 1
            if kind in (6, 7):
                (n,) = struct.unpack_from(">H", frame, pos)
                value = frame[pos + 2 : pos + 2 + n]
                pos += 2 + n
                headers[name] = value.decode("utf-8" if kind == 7 else "latin-1")
            elif kind in _FIXED:
                pos += _FIXED[kind]
            else:
                return None
    except (IndexError, struct.error, UnicodeDecodeError):
        return None
    if pos != end:
        return None
    return Frame(headers, frame[end : total - 4])


def _string_header(name: str, value: str) -> bytes:
    raw_name, raw_value = name.encode(), value.encode()
    return (
        bytes((len(raw_name),)) + raw_name + b"\x07" + struct.pack(">H", len(raw_value)) + raw_value
    )


def string_header(name: str, value: str) -> bytes:
    """One encoded header with a string value, as it appears in a frame's header block."""
    return _string_header(name, value)


def header_block(frame: bytes) -> bytes:
    """A whole frame's encoded headers (to look for a known header without decoding them)."""
    return frame[12 : 12 + int.from_bytes(frame[4:8], "big")]


# -- first frame and terminal frame -------------------------------------------------------------


def first_frame_end(buffer: bytes) -> int:
    """The end offset of the first whole frame in ``buffer``, or -1 (not yet, or not a frame)."""
    if len(buffer) < 12:
        return -1
    total, _, crc = _PRELUDE.unpack_from(buffer)
    if zlib.crc32(buffer[:8]) != crc or total < _MIN_FRAME or len(buffer) < total:
        return -1
    return int(total)


def first_event(content_type: bytes, held: bytes) -> int | None:
    """`Provider.first_event` of an AWS event stream: the status its first frame stands for
    (200, or `error_in_first_frame`'s), ``None`` while that frame is incomplete; any other answer
    is 200 at once."""
    if not content_type.startswith(MIME_TYPE):
        return 200
    end = first_frame_end(held)
    if end < 0:
        return None
    status = error_in_first_frame(held[:end])
    return 200 if status is None else status


def error_in_first_frame(frame: bytes) -> int | None:
    """The status an exception sent as a stream's first frame stands for (`EXCEPTION_STATUS`:
    429 for throttling, 503 unavailable, 500 for others), or ``None`` when the frame is not an
    error."""
    decoded = decode_frame(frame)
    if decoded is None or not decoded.is_error:
        return None
    return EXCEPTION_STATUS.get(decoded.error_type, 500)


def exception_frame(
    message: str = "The upstream ended the stream before it was complete.",
    exception_type: str = "internalServerException",
) -> bytes:
    """A terminal exception frame: the AWS SDKs raise it as ``exception_type`` (a member of the
    stream's union: ``internalServerException``, ``serviceUnavailableException``,
    ``modelStreamErrorException``, ``throttlingException``, ...) with ``message``."""
    return aws_exception_frame(message, exception_type)
