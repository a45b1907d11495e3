"""`CaptureWriter`: the bounded queue between captured requests and the sink.

A request hands its capture over with `CaptureWriter.submit`, which never waits: when the queue
is full the capture is dropped and counted (captures are diagnostics, not the usage ledger; a
slow disk must not slow requests down). One background task, started with the first capture,
builds the records (redaction and encoding are CPU work kept off the request path) and hands
them to the sink, a batch at a time when the sink takes batches. Sink errors are logged and
counted, never raised. `aclose` drains the queue, then closes the sink.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from asgi_llmguard.capture.record import CaptureRecord
from asgi_llmguard.capture.redact import Redactor
from asgi_llmguard.capture.sinks import BatchCaptureSink, CaptureSink
from asgi_llmguard.lifecycle import Resource

logger = logging.getLogger("asgi_llmguard.capture")

_BATCH = 64


class PendingCapture(Protocol):
    """What a request leaves on the queue: enough to build its record later."""

    request_id: str

    def record(self, redactor: Redactor) -> CaptureRecord: ...


class CaptureStats:
    """Counters of the capture pipeline, readable at any time.

    ``captured``: exchanges put on the queue; ``dropped``: exchanges not captured because the
    queue was full; ``written``: records the sink accepted; ``failed``: records the sink (or
    record building) failed on, or that were still queued when `CaptureWriter.aclose` gave up.
    """

    __slots__ = ("captured", "dropped", "failed", "written")

    def __init__(self) -> None:
        self.captured = 0
        self.dropped = 0
        self.written = 0
        self.failed = 0

    def __repr__(self) -> str:
        return (
            f"CaptureStats(captured={self.captured}, dropped={self.dropped}, "
            f"written={self.written}, failed={self.failed})"
        )


class CaptureWriter(Resource):
    """A bounded queue and the one task that empties it into ``sink``."""

    def __init__(
        self,
        sink: CaptureSink,
        *,
        redactor: Redactor,
        queue_size: int = 256,
        close_timeout: float = 10.0,
    ) -> None:
        self.sink = sink
        self.redactor = redactor
        self.queue_size = queue_size
        self.close_timeout = close_timeout
        self.stats = CaptureStats()
        self._batch = isinstance(sink, BatchCaptureSink)
        self._queue: asyncio.Queue[PendingCapture | None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._burst = 0  # captures dropped since the queue last had room

    def submit(self, pending: PendingCapture) -> None:
        """Queue a capture without waiting; drop (and count) it when the queue is full."""
        queue = self._ensure_task()
        try:
            queue.put_nowait(pending)
        except asyncio.QueueFull:
            self.stats.dropped += 1
            if self._burst == 0:
                logger.warning(
                    "capture queue full (%d waiting for the sink): dropping captures",
                    self.queue_size,
                )
            self._burst += 1
            return
        self.stats.captured += 1
        if self._burst:
            logger.warning("capture queue has room again; %d captures were dropped", self._burst)
            self._burst = 0

    def _ensure_task(self) -> asyncio.Queue[PendingCapture | None]:
        loop = asyncio.get_running_loop()
        queue = self._queue
        if queue is None or self._loop is not loop:
            queue = self._queue = asyncio.Queue(self.queue_size)
            self._loop = loop
            self._task = None
        task = self._task
        if task is None or task.done():
            self._task = loop.create_task(self._run(queue), name="llmguard-capture")
        return queue

    async def _run(self, queue: asyncio.Queue[PendingCapture | None]) -> None:
        stopping = False
        while True:
            if stopping:
                if queue.empty():
                    return
                first = queue.get_nowait()
            else:
                first = await queue.get()
            batch = [first]
            while len(batch) < _BATCH and not queue.empty():
                batch.append(queue.get_nowait())
            records: list[CaptureRecord] = []
            for pending in batch:
                if pending is None:  # aclose(): finish what is queued, then stop
                    stopping = True
                    continue
                try:
                    records.append(pending.record(self.redactor))
                except Exception:
                    self.stats.failed += 1
                    logger.exception("could not build the capture record of %s", pending.request_id)
                if len(batch) > 1:
                    await asyncio.sleep(0)  # redaction is CPU work: let requests run between
            if records:
                await self._write(records)

    async def _write(self, records: list[CaptureRecord]) -> None:
        sink = self.sink
        if self._batch:
            assert isinstance(sink, BatchCaptureSink)
            try:
                await sink.write_many(records)
                self.stats.written += len(records)
            except Exception:
                self.stats.failed += len(records)
                logger.warning(
                    "capture sink %r failed on %d records", sink, len(records), exc_info=True
                )
            return
        for record in records:
            try:
                await sink(record)
                self.stats.written += 1
            except Exception:
                self.stats.failed += 1
                logger.warning(
                    "capture sink %r failed on %s", sink, record.request_id, exc_info=True
                )

    async def aclose(self) -> None:
        """Write what is queued (waiting up to ``close_timeout``), then close the sink.

        Idempotent; a capture submitted afterwards starts the writer again.
        """
        task, queue = self._task, self._queue
        self._task = self._queue = None
        if task is not None and queue is not None and not task.done():
            if self._loop is asyncio.get_running_loop():
                try:
                    async with asyncio.timeout(self.close_timeout):
                        await queue.put(None)
                        await asyncio.shield(task)
                except TimeoutError:
                    task.cancel()
                    lost = queue.qsize()
                    self.stats.failed += lost
                    logger.warning(
                        "capture sink too slow at shutdown: %d captures not written", lost
                    )
            else:
                logger.warning("capture writer closed from another event loop: not drained")
        close = getattr(self.sink, "aclose", None)
        if close is not None:
            try:
                await close()
            except Exception:
                logger.warning("closing capture sink %r failed", self.sink, exc_info=True)
