"""An incremental splitter of a streamed JSON array into its elements.

The Gemini API's ``streamGenerateContent`` without ``alt=sse`` answers one JSON array written as
the answer is produced: ``[{...}``, then ``,{...}`` for each further piece, then ``]``, with any
whitespace between. Like `EventSplitter` it works on bytes only, keeps just the unfinished
element (a string's quotes and escapes tracked across chunk boundaries, so a brace inside text
is not mistaken for structure), and hands out each top-level element once it is complete.
Memory is bounded: an element larger than ``max_event`` is dropped (and counted).
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

    def feed(self, chunk: bytes) -> list[bytes]:
        """The elements completed by ``chunk``, in order."""
        out: list[bytes] = []
        start = 0 if self._depth >= 2 else -1  # where the current element begins in ``chunk``
        depth = self._depth
        in_string = self._in_string
        skip_to = 0
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
                elif depth == 0:
                    self.ended = True
        if depth >= 2 and start >= 0:
            self._keep(chunk[start:])
        self._depth = depth
        self._in_string = in_string
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
