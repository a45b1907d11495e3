"""An incremental splitter of a streamed JSON array into its elements.

The Gemini API's ``streamGenerateContent`` without ``alt=sse`` answers one JSON array written as
the answer is produced: ``[{...}``, then ``,{...}`` for each further piece, then ``]``, with any
whitespace between. Like `EventSplitter` it works on bytes only, keeps just the unfinished
element (a string's quotes and escapes tracked across chunk boundaries, so a brace inside text
is not mistaken for structure), and hands out each top-level element once it is complete.
Memory is bounded: an element larger than ``max_event`` is dropped (and counted).

`HeldArray` relays such an array whole elements at a time, so that a stream the upstream breaks
can still be ended as Google ends one: with a last element ``{"error": {...}}`` and ``]``.
"""

from __future__ import annotations

import re

# The bytes that can change the scanner's state; everything else is skipped in bulk.
_SPECIAL = re.compile(rb'["\\{}\[\]]')


class JsonArraySplitter:
    __slots__ = (
        "_depth",
        "_escaped",
        "_in_string",
        "_parts",
        "_size",
        "_skipping",
        "after_last",
        "elements",
        "ended",
        "max_event",
        "oversized",
    )

    def __init__(self, max_event: int = 8 << 20) -> None:
        #: Nesting depth: 0 before the array, 1 between its elements, 2+ inside one.
        self._depth = 0
        self._in_string = False
        self._escaped = False
        #: The unfinished element's bytes so far.
        self._parts: list[bytes] = []
        self._size = 0
        self._skipping = False
        self.max_event = max_event
        #: Elements dropped for exceeding ``max_event``.
        self.oversized = 0
        #: The array's closing bracket was seen.
        self.ended = False
        #: Top-level elements completed so far (dropped ones included).
        self.elements = 0
        #: Bytes fed since the end of the last complete element (or since the start).
        self.after_last = 0

    def feed(self, chunk: bytes) -> list[bytes]:
        """The elements completed by ``chunk``, in order."""
        out: list[bytes] = []
        start = 0 if self._depth >= 2 else -1  # where the current element begins in ``chunk``
        depth = self._depth
        in_string = self._in_string
        skip_to = 0
        last_end = -1
        if self._escaped and chunk:
            skip_to = 1  # the escaped byte was the first of this chunk
            self._escaped = False
        for match in _SPECIAL.finditer(chunk):
            i = match.start()
            if i < skip_to:
                continue
            c = chunk[i]
            if in_string:
                if c == 0x5C:  # backslash: the next byte is escaped
                    if i + 1 >= len(chunk):
                        self._escaped = True
                    skip_to = i + 2
                elif c == 0x22:
                    in_string = False
                continue
            if c == 0x22:
                in_string = True
            elif c in (0x7B, 0x5B):  # { [
                depth += 1
                if depth == 2:
                    start = i
            elif c in (0x7D, 0x5D):  # } ]
                depth -= 1
                if depth == 1:
                    self._emit(chunk[start : i + 1], out)
                    start = -1
                    last_end = i + 1
                    self.elements += 1
                elif depth == 0:
                    self.ended = True
        if depth >= 2 and start >= 0:
            self._keep(chunk[start:])
        self._depth = depth
        self._in_string = in_string
        if last_end >= 0:
            self.after_last = len(chunk) - last_end
        else:
            self.after_last += len(chunk)
        return out

    def _keep(self, data: bytes) -> None:
        if self._skipping:
            return
        self._parts.append(data)
        self._size += len(data)
        if self._size > self.max_event:
            self._parts.clear()
            self._size = 0
            self._skipping = True
            self.oversized += 1

    def _emit(self, data: bytes, out: list[bytes]) -> None:
        skipping = self._skipping
        if self._parts:
            data = b"".join(self._parts) + data
            self._parts.clear()
        self._size = 0
        self._skipping = False
        if not skipping and len(data) <= self.max_event:
            out.append(data)
        elif not skipping:
            self.oversized += 1

    @property
    def pending(self) -> int:
        """Bytes of the unfinished element held."""
        return self._size

    def close(self) -> list[bytes]:
        """At the end of the stream: nothing more can complete (an unfinished element is lost)."""
        self._parts.clear()
        self._size = 0
        return []


class HeldArray:
    """Relays a streamed JSON array up to the end of its last complete element, holding back the
    unfinished rest (at most ``limit`` bytes), so that `terminal` can always end the array well.

    An element larger than ``limit`` is passed on as it comes; if the stream breaks inside such
    an element there is no well-formed way to end it (`terminal` returns ``None``).
    """

    __slots__ = ("_held", "_splitter", "limit")

    def __init__(self, limit: int = 1 << 20) -> None:
        # Only the structure is tracked: no element bytes are kept (``max_event=0``).
        self._splitter = JsonArraySplitter(max_event=0)
        self._held = b""
        self.limit = limit

    def feed(self, chunk: bytes) -> bytes:
        """The bytes of ``chunk`` (and of earlier held ones) that can be sent now."""
        splitter = self._splitter
        splitter.feed(chunk)
        data = self._held + chunk if self._held else chunk
        keep = splitter.after_last
        if splitter.ended or keep == 0 or keep > self.limit or keep > len(data):
            self._held = b""
            return data
        self._held = data[-keep:]
        return data[:-keep]

    def flush(self) -> bytes:
        """At the stream's end: whatever is still held."""
        held, self._held = self._held, b""
        return held

    @property
    def ended(self) -> bool:
        """The array's closing bracket went by."""
        return self._splitter.ended

    def terminal(self, element: bytes) -> bytes | None:
        """The bytes that end the array with ``element`` last, in place of the held unfinished
        rest; ``None`` when the array cannot be ended well (it already ended, or part of an
        unfinished element was passed on)."""
        splitter = self._splitter
        if splitter.ended or splitter.after_last != len(self._held):
            return None
        self._held = b""
        self._splitter = JsonArraySplitter(max_event=0)
        self._splitter.ended = True  # ended now: a second call adds nothing
        if splitter.elements == 0:
            return b"[" + element + b"]"
        return b"\n,\r\n" + element + b"\n]"
