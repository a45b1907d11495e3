"""The spill directory: where the pipeline keeps events on disk until a sink has them.

Files are JSON lines in the `JSONLSink` format (one `UsageEvent` per line), append-only, written
with ``write(2)`` (in the OS once written: they survive the death of the process) and fsynced by
the pipeline off the event loop. Each pipeline creates its own files, named
``<kind>-<owner>-<n>.jsonl``, and holds each under an exclusive ``flock`` for as long as it has it
open, so that a replay (`SpillDirectory.claim`) only takes files whose writer is gone; several
processes can share a directory. A file is created under a ``.new`` name, locked, then renamed,
so no replayer can take it before its writer holds the lock.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from typing import BinaryIO, Literal

from asgi_llmguard.usage.sinks.jsonl import write_all

if sys.platform != "win32":
    import fcntl


def try_lock(fd: int) -> bool:
    """An exclusive ``flock`` without waiting; False when another open file holds it."""
    if sys.platform == "win32":  # no flock: one process per spill directory
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


class SpillFile:
    """One file of event lines: a spill file, a write-ahead segment, or a file being replayed.

    ``pending`` counts its events still in flight in the pipeline. Once ``sealed`` (nothing more
    is appended or read) and nothing is pending, it closes itself: the file is deleted, unless
    ``keep`` is set (a spill file, or one whose events could not all be settled), in which case
    it is kept, synced, for the next replay.
    """

    __slots__ = ("dirty", "fd", "keep", "lock", "path", "pending", "reader", "sealed", "size")

    def __init__(self, path: str, fd: int, reader: BinaryIO | None = None) -> None:
        self.path = path
        self.fd = fd  # holds the lock
        self.reader = reader
        self.pending = 0
        self.size = 0
        self.sealed = self.keep = self.dirty = False
        self.lock = threading.Lock()  # the fd's life against the fsync thread

    @property
    def closed(self) -> bool:
        return self.fd < 0

    def append(self, data: bytes) -> None:
        with self.lock:
            try:
                write_all(self.fd, data)
            except OSError:
                self.sealed = True  # maybe a torn line: never append after it
                raise
            self.size += len(data)
            self.dirty = True

    def sync(self) -> None:
        """fsync what was appended (from any thread)."""
        with self.lock:
            if self.fd < 0 or not self.dirty:
                return
            self.dirty = False
            fd = os.dup(self.fd)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def release(self) -> None:
        """One of its events is settled (written, or spilled elsewhere)."""
        self.pending -= 1
        if self.sealed and self.pending <= 0:
            self.close()

    def seal(self) -> None:
        self.sealed = True
        if self.pending <= 0:
            self.close()

    def close(self, *, sync: bool = True) -> None:
        """Delete the file if its events are all settled, else keep it for a replay."""
        with self.lock:
            if self.fd < 0:
                return
            keep = self.keep or self.pending > 0 or not self.sealed
            # Deleted while we hold its lock, so no replayer takes it in between (Windows, which
            # cannot delete an open file and has no flock, deletes it after closing it).
            unlink_now = not keep and sys.platform != "win32"
            with contextlib.suppress(OSError):
                if unlink_now:
                    os.unlink(self.path)
                elif keep and self.dirty and sync:
                    os.fsync(self.fd)
            if self.reader is not None:
                shared = self.reader.fileno() == self.fd
                self.reader.close()
                if not shared:
                    os.close(self.fd)
            else:
                os.close(self.fd)
            self.fd = -1
            if not keep and not unlink_now:
                with contextlib.suppress(OSError):
                    os.unlink(self.path)


class SpillDirectory:
    """The spill files of one pipeline (``owner`` tells its files apart) in ``path``."""

    def __init__(self, path: str, owner: str) -> None:
        self.path = path
        self.owner = owner
        self.files: set[SpillFile] = set()  # open here
        self._seq = 0

    def prepare(self) -> None:
        os.makedirs(self.path, mode=0o700, exist_ok=True)

    def create(self, kind: Literal["spill", "wal"]) -> SpillFile:
        """A new, locked file; a spill file is kept when closed, a WAL segment deleted."""
        self.prepare()
        self._seq += 1
        path = os.path.join(self.path, f"{kind}-{self.owner}-{self._seq:06d}.jsonl")
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL
        if sys.platform == "win32":  # no flock to take first, and no renaming an open file
            fd = os.open(path, flags, 0o600)
        else:
            tmp = path + ".new"
            fd = os.open(tmp, flags, 0o600)
            try:
                try_lock(fd)
                os.rename(tmp, path)
            except BaseException:
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        file = SpillFile(path, fd)
        file.keep = kind == "spill"
        self.files = {f for f in self.files if not f.closed}
        self.files.add(file)
        return file

    def claim(self) -> list[SpillFile]:
        """Open and lock the files nobody holds (their writer is gone), oldest first."""
        try:
            names = os.listdir(self.path)
        except OSError:
            return []
        paths = []
        for name in names:
            path = os.path.join(self.path, name)
            if name.endswith(".jsonl.new"):  # its writer died before naming it
                _remove_if_orphan(path)
            # Without flock (Windows), our own files are told apart by name.
            elif name.endswith(".jsonl") and (sys.platform != "win32" or self.owner not in name):
                paths.append(path)
        with contextlib.suppress(OSError):
            paths.sort(key=os.path.getmtime)
        claimed = []
        for path in paths:
            try:
                reader = open(path, "rb")  # noqa: SIM115 (owned by the SpillFile)
            except OSError:
                continue
            fd = reader.fileno()
            # Locked: its writer lives. Unlinked since we opened it: its replayer just finished.
            if not try_lock(fd) or os.fstat(fd).st_nlink == 0:
                reader.close()
                continue
            file = SpillFile(path, fd, reader)
            self.files.add(file)
            claimed.append(file)
        return claimed

    def dirty(self) -> list[SpillFile]:
        return [f for f in self.files if f.dirty and f.reader is None]

    def close_all(self) -> None:
        """Close every file: settled ones are deleted, the others kept for the next replay."""
        for file in list(self.files):
            if file.reader is not None and not file.sealed:
                file.keep = True  # its replay was cut short
            file.sealed = True
            file.close()
        self.files.clear()


def sync_files(files: list[SpillFile]) -> None:
    for file in files:
        with contextlib.suppress(OSError):
            file.sync()


def _remove_if_orphan(path: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            if try_lock(fd) and os.fstat(fd).st_size == 0:
                os.unlink(path)
        finally:
            os.close(fd)
