"""An incremental splitter of server-sent event streams into whole events.

Upstream chunks follow TCP, not events: one chunk may hold several events, an event may span many
chunks, and a UTF-8 character may be split between two. The splitter works on bytes only, keeps
just the unfinished tail, and hands out each event (without its terminating blank line) once it
is complete. Memory is bounded: an event larger than ``max_event`` is dropped (and counted), since
no event the gateway needs is that large.
"""

from __future__ import annotations

import orjson

# An event ends at a blank line. Providers send "\n\n"; "\r\n\r\n" and "\r\r" are accepted too.
_LF2 = b"\n\n"
_CRLF2 = b"\r\n\r\n"
_CR2 = b"\r\r"


class EventSplitter:
    __slots__ = ("_crlf", "_skipping", "_tail", "max_event", "oversized")

    def __init__(self, max_event: int = 8 << 20) -> None:
        self._tail = b""
        self._crlf = False
        self._skipping = False
        self.max_event = max_event
        #: Events dropped for exceeding ``max_event``.
        self.oversized = 0

    def feed(self, chunk: bytes) -> list[bytes]:
        """The events completed by ``chunk``, in order."""
        if not chunk:
            return []
        if not self._crlf and b"\r" in chunk:
            self._crlf = True
        data = self._tail + chunk if self._tail else chunk
        sep = _LF2
        if self._crlf:  # rare: only streams with carriage returns look further
            if _CRLF2 in data:
                sep = _CRLF2
            elif _CR2 in data:
                sep = _CR2
        parts = data.split(sep)
        self._tail = parts.pop()
        if self._skipping and parts:
            # The first part finishes the oversized event being skipped.
            parts.pop(0)
            self._skipping = False
        if len(self._tail) > self.max_event:
            self._tail = b""
            self._skipping = True
            self.oversized += 1
        return [p for p in parts if p]

    @property
    def pending(self) -> int:
        """Bytes received but not yet handed out as part of an event."""
        return len(self._tail)

    def close(self) -> list[bytes]:
        """At the end of the stream: the last event, if the upstream did not end it with a blank
        line."""
        tail, self._tail = self._tail, b""
        if self._skipping:
            self._skipping = False
            return []
        tail = tail.strip(b"\r\n")
        return [tail] if tail else []


def event_fields(event: bytes) -> tuple[bytes | None, bytes]:
    """The ``event:`` name (if any) and the joined ``data:`` lines of one event."""
    name: bytes | None = None
    data: list[bytes] = []
    for line in event.splitlines():
        if line.startswith(b"data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(b" ") else value)
        elif line.startswith(b"event:"):
            name = line[6:].strip()
    return name, b"\n".join(data)


# ------------------------------------------------------------------ the first event of a stream


def first_sse_event(content_type: bytes, held: bytes) -> int | None:
    """`Provider.first_event` for providers that stream server-sent events: the status the first
    event of an SSE answer stands for, ``None`` while it is incomplete; any other answer is 200
    (not checked)."""
    if not content_type.startswith(b"text/event-stream"):
        return 200
    end = first_event_end(held)
    if end < 0:
        return None
    status = error_in_first_event(held[:end])
    return 200 if status is None else status


def first_event_end(buffer: bytes) -> int:
    """The end offset of the first complete SSE event in ``buffer``, or -1."""
    ends = [i for i in (buffer.find(b"\n\n"), buffer.find(b"\r\n\r\n")) if i >= 0]
    if not ends:
        return -1
    end = min(ends)
    return end + (4 if buffer.startswith(b"\r\n\r\n", end) else 2)


def error_in_first_event(event: bytes) -> int | None:
    """The status an error sent as a stream's first event stands for, or ``None`` when the event
    is not an error: Anthropic ``event: error`` with ``overloaded_error`` (529),
    ``rate_limit_error`` (429) or another type (500); OpenAI-style ``data: {"error": ...}``
    (429 for rate limits and quota, else 500)."""
    name = b""
    data = b""
    for line in event.splitlines():
        if line.startswith(b"event:"):
            name = line[6:].strip()
        elif line.startswith(b"data:"):
            data += line[5:].strip()
    if name != b"error" and b'"error"' not in data:
        return None
    try:
        doc = orjson.loads(data) if data else {}
    except orjson.JSONDecodeError:
        return 500 if name == b"error" else None
    if not isinstance(doc, dict) or "error" not in doc:
        return 500 if name == b"error" else None
    error = doc["error"]
    kind = ""
    if isinstance(error, dict):
        kind = str(error.get("type") or "") + " " + str(error.get("code") or "")
    if "overloaded" in kind:
        return 529
    if "rate_limit" in kind or "insufficient_quota" in kind:
        return 429
    return 500


def no_first_event_check(content_type: bytes, held: bytes) -> int | None:
    """`Provider.first_event` of a provider whose streams are not checked: relayed at once."""
    return 200
