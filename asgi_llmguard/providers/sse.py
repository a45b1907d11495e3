"""An incremental splitter of server-sent event streams into whole events.

Upstream chunks follow TCP, not events: one chunk may hold several events, an event may span many
chunks, and a UTF-8 character may be split between two. The splitter works on bytes only, keeps
just the unfinished tail, and hands out each event (without its terminating blank line) once it
is complete. Memory is bounded: an event larger than ``max_event`` is dropped (and counted), since
no event the gateway needs is that large.
"""

from __future__ import annotations

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
