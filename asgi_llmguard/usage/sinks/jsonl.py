"""`JSONLSink`: the ledger as a file of JSON lines, and the line format the spill files share.

One `UsageEvent` per line, encoded by msgspec, appended on a dedicated thread. Appending is not
idempotent the way a primary key is: the sink drops ids it has already written within a window
of recent ids, and rebuilds that window from the tail of the file when it opens, so a batch the
pipeline retries or replays is normally written once. A replay reaching further back than the
window can still duplicate lines: readers (the usage report among them) dedupe by
``(request_id, attempt)``, keeping the first line.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import BinaryIO

import msgspec

from asgi_llmguard.usage.events import UsageEvent
from asgi_llmguard.usage.sinks.base import SeenSet, WriterThread

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(UsageEvent)


class _Id(msgspec.Struct):
    request_id: str
    attempt: int = 0


_id_decoder = msgspec.json.Decoder(_Id)


def encode_lines(events: Iterable[UsageEvent]) -> bytes:
    """The events as JSON lines, each ending in ``\\n``."""
    return _encoder.encode_lines(list(events))


def encode_line(event: UsageEvent) -> bytes:
    return _encoder.encode(event) + b"\n"


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until all of ``data`` is written (a write may be short)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def decode_lines(lines: Iterable[bytes]) -> tuple[list[UsageEvent], int]:
    """Decode event lines, skipping blank ones; returns the events and the unreadable count.

    An unreadable line is usually the torn last line of a process killed mid-write.
    """
    events: list[UsageEvent] = []
    bad = 0
    for line in lines:
        if not line.strip():
            continue
        try:
            events.append(_decoder.decode(line))
        except (msgspec.DecodeError, msgspec.ValidationError):
            bad += 1
    return events, bad


def read_chunk(f: BinaryIO, size_hint: int = 1 << 20) -> tuple[list[UsageEvent], int, bool]:
    """The next lines of ``f`` (about ``size_hint`` bytes) as (events, unreadable, at_eof)."""
    lines = f.readlines(size_hint)
    if not lines:
        return [], 0, True
    events, bad = decode_lines(lines)
    return events, bad, False


class JSONLSink:
    """Append events to a JSON-lines file (see the module docstring for idempotency).

    - ``fsync``: ``fsync`` after every batch (survives power loss; without it a batch survives
      a crash of the process but may not survive one of the machine).
    - ``dedupe_window``: how many recent ids are remembered (0: none); ``seed_bytes``: how much
      of the file's tail is read at open to rebuild that window.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fsync: bool = False,
        dedupe_window: int = 100_000,
        seed_bytes: int = 4 << 20,
    ) -> None:
        self.path = os.fspath(path)
        self.name = f"jsonl:{self.path}"
        self._fsync = fsync
        self._seed_bytes = seed_bytes
        self._seen = SeenSet(dedupe_window)
        self._fd: int | None = None
        self._closed = False
        self._thread = WriterThread("llmguard-jsonl")

    async def write(self, events: Sequence[UsageEvent]) -> None:
        if self._closed:
            raise RuntimeError(f"{self.name} is closed")
        if events:
            await self._thread.run(self._write_sync, list(events))

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._thread.run(self._close_sync)
        finally:
            self._thread.shutdown()

    # -- on the writer thread --------------------------------------------------------------------

    def _write_sync(self, events: list[UsageEvent]) -> None:
        fd = self._fd if self._fd is not None else self._open()
        fresh = self._seen.unseen(events)
        if not fresh:
            return
        write_all(fd, encode_lines(fresh))
        if self._fsync:
            os.fsync(fd)
        for event in fresh:
            self._seen.add((event.request_id, event.attempt))

    def _open(self) -> int:
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size:
                torn = self._seed(size)
                if torn:
                    # A process died mid-line: start ours on a line of its own.
                    write_all(fd, b"\n")
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return fd

    def _seed(self, size: int) -> bool:
        """Remember the ids at the tail of the file; True when it ends mid-line."""
        start = max(0, size - self._seed_bytes)
        with open(self.path, "rb") as f:
            f.seek(start)
            tail = f.read()
        lines = tail.split(b"\n")
        if start:
            lines = lines[1:]  # the first one is probably cut
        for line in lines:
            if not line.strip():
                continue
            try:
                ident = _id_decoder.decode(line)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
            self._seen.add((ident.request_id, ident.attempt))
        return not tail.endswith(b"\n")

    def _close_sync(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
