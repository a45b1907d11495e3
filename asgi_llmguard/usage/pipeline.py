"""`UsagePipeline`: from ``emit(event)`` on the request path to every sink, losing nothing.

``emit`` is synchronous and cheap: it appends to a bounded in-memory queue. Worker tasks take
batches (up to ``batch_size`` events, or whatever arrived within ``flush_interval``) and write
each batch to every sink, each sink on its own with bounded retries. An event that cannot be
written now is *spilled*: appended as one JSON line to this pipeline's file in the spill
directory, and *replayed* (written to the sinks again) later: at the next start, and every
``replay_interval`` while the sinks are healthy. That covers a full queue, a sink still failing
after its retries, an event a sink refuses (isolated by halving the batch, so the rest of the
batch is written), a worker cancelled mid-write, and whatever is still queued when the shutdown
drain runs out of time. Only when the spill file cannot be written either is an event dropped:
counted, and logged at ERROR.

Delivery is at-least-once and relies on the sinks' idempotency under ``(request_id, attempt)``
(see `Sink`): a retry goes only to the sink that failed, but a spilled event is replayed to every
sink, including those that had already stored it.

Accounting, exact once `aclose` has returned (``stats.pending == 0``)::

    emitted + replayed == written + spilled + dropped

``written``: stored by every sink; ``spilled``: appended to the spill file (or, if that failed,
left in the WAL segment or replayed file it came from); ``replayed``: read back from spill files.

Each pipeline writes its own files in the spill directory (``spill-<id>-<n>.jsonl``, and
``wal-<id>-<n>.jsonl`` segments in durable mode) and holds each under an exclusive ``flock``. A
replay takes only the files it can lock (their pipeline is gone, or is its own), so worker
processes can share one directory; a replayed file is deleted once its events are written or
spilled again.

Loss bound on ``kill -9``: without ``durable``, the events in memory at that moment (the queue
and the batches being written: at most ``queue_size + workers * batch_size``, in practice about
one batch at a steady rate). With ``durable=True``, ``emit`` first appends the event to a
write-ahead segment (one ``write(2)``, no fsync), so an event whose ``emit`` returned survives
the death of the process; a power loss can take back the last ``fsync_interval`` seconds of spill
and WAL appends. See docs/usage-ledger.md.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import secrets
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from asgi_llmguard.errors import ConfigurationError
from asgi_llmguard.lifecycle import Resource, pass_lifespan
from asgi_llmguard.types import ASGIApp, Receive, Scope, Send
from asgi_llmguard.usage.events import UsageEvent
from asgi_llmguard.usage.sinks._fanout import Fanout, SinkStats
from asgi_llmguard.usage.sinks._spill import SpillDirectory, SpillFile, sync_files
from asgi_llmguard.usage.sinks.base import EventId, SeenSet, Sink
from asgi_llmguard.usage.sinks.jsonl import encode_line, encode_lines, read_chunk

logger = logging.getLogger("asgi_llmguard.usage")

_WAL_SEGMENT_BYTES = 1 << 20
_REPLAY_CHUNK = 256 << 10
_REPLAY_DEDUPE = 1_000_000
_CLOSE_GRACE = 5.0  # seconds for cancelled workers to spill their batch
_NEW, _RUNNING, _CLOSING, _CLOSED = range(4)


_Item = tuple[UsageEvent, SpillFile | None]


@dataclass
class PipelineStats:
    """Event counts; ``emitted + replayed == written + spilled + dropped + pending``."""

    emitted: int = 0  #: ``emit`` calls
    replayed: int = 0  #: events read back from spill files (distinct ids per round)
    written: int = 0  #: events every sink accepted
    spilled: int = 0  #: events kept on disk to be replayed
    dropped: int = 0  #: events lost: the spill file could not be written (logged at ERROR)
    unreadable: int = 0  #: lines of spill files that could not be decoded (torn by a crash)
    #: Per sink: written, errors, retries, gave_up, rejected.
    sinks: dict[str, SinkStats] = field(default_factory=dict)

    @property
    def retries(self) -> int:
        return sum(s.retries for s in self.sinks.values())

    @property
    def pending(self) -> int:
        """Events queued or being written now; 0 once the pipeline is closed."""
        return self.emitted + self.replayed - self.written - self.spilled - self.dropped


def _wake(waiters: deque[asyncio.Future[None]]) -> None:
    while waiters:
        fut = waiters.popleft()
        if not fut.done():
            fut.set_result(None)
            return


def _wake_all(waiters: deque[asyncio.Future[None]]) -> None:
    while waiters:
        fut = waiters.popleft()
        if not fut.done():
            fut.set_result(None)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class UsagePipeline(Resource):
    """Queue usage events and write them to the sinks in batches; see the module docstring.

    - ``queue_size``: events held in memory; beyond it ``emit`` spills to disk.
    - ``workers`` tasks write ``batch_size`` events at a time, waiting at most
      ``flush_interval`` seconds for a batch to fill.
    - ``spill_path``: the spill directory (created 0700); ``None`` disables spilling, so events
      that cannot be written are dropped (counted and logged).
    - ``replay_interval``: seconds between replays of spill files while running, when no sink
      is failing (``None``: only at start).
    - ``drain_timeout``: how long `aclose` lets the workers empty the queue before spilling
      the rest.
    - ``retry_backoff=(first, max)`` seconds between a sink's ``max_retries`` retries (doubling);
      a sink that exhausted them is tried once per batch until it succeeds again.
    - ``write_timeout``: seconds one sink write may take before it counts as failed.
    - ``durable``: write-ahead mode (see the module docstring); ``fsync_interval``: how often
      spill and WAL files are fsynced off the loop (``None``: left to the OS).
    """

    def __init__(
        self,
        sinks: Sequence[Sink],
        *,
        queue_size: int = 10_000,
        workers: int = 2,
        batch_size: int = 200,
        flush_interval: float = 0.25,
        spill_path: str | os.PathLike[str] | None = "llmguard-usage.spill",
        drain_timeout: float = 10.0,
        retry_backoff: tuple[float, float] = (0.1, 5.0),
        max_retries: int = 5,
        write_timeout: float | None = 30.0,
        durable: bool = False,
        fsync_interval: float | None = 1.0,
        replay_interval: float | None = 30.0,
    ) -> None:
        if not sinks:
            raise ConfigurationError("UsagePipeline needs at least one sink")
        for sink in sinks:
            if not isinstance(sink, Sink):
                raise ConfigurationError(f"{sink!r} is not a Sink (async write() and aclose())")
        if queue_size < 1 or workers < 1 or batch_size < 1 or max_retries < 0:
            raise ConfigurationError(
                "queue_size, workers and batch_size must be >= 1, max_retries >= 0"
            )
        if flush_interval < 0 or drain_timeout < 0:
            raise ConfigurationError("flush_interval and drain_timeout must be >= 0")
        if len(retry_backoff) != 2 or not 0 <= retry_backoff[0] <= retry_backoff[1]:
            raise ConfigurationError("retry_backoff must be (first, max) with 0 <= first <= max")
        if replay_interval is not None and replay_interval <= 0:
            raise ConfigurationError("replay_interval must be > 0, or None (replay at start only)")
        if (write_timeout is not None and write_timeout <= 0) or (fsync_interval or 0) < 0:
            raise ConfigurationError("write_timeout must be > 0 and fsync_interval >= 0")
        if durable and spill_path is None:
            raise ConfigurationError("durable=True needs a spill_path for its write-ahead log")
        self._sinks = Fanout(
            sinks,
            max_retries=max_retries,
            retry_backoff=retry_backoff,
            write_timeout=write_timeout,
        )
        self.stats = PipelineStats(sinks=self._sinks.stats)
        self._queue_size = queue_size
        self._n_workers = workers
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self.spill_path = os.path.abspath(spill_path) if spill_path is not None else None
        self._drain_timeout = drain_timeout
        self._durable = durable
        self._fsync_interval = fsync_interval
        self._replay_interval = replay_interval

        self._state = _NEW
        self._buf: deque[_Item] = deque()
        self._nonempty: deque[asyncio.Future[None]] = deque()
        self._full: deque[asyncio.Future[None]] = deque()
        self._space: deque[asyncio.Future[None]] = deque()
        self._workers: set[asyncio.Task[None]] = set()
        self._respawn = False
        self._inflight: dict[int, list[_Item]] = {}
        self._replay_task: asyncio.Task[None] | None = None
        self._replaying = False
        self._sync_task: asyncio.Task[None] | None = None
        self._closed: asyncio.Event | None = None
        owner = f"{os.getpid()}-{secrets.token_hex(3)}"
        self._dir = SpillDirectory(self.spill_path, owner) if self.spill_path else None
        self._spill_file: SpillFile | None = None
        self._wal: SpillFile | None = None
        self._log_at: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}
        self._listeners: list[Callable[[UsageEvent], None]] = []

    def __repr__(self) -> str:
        return f"<UsagePipeline sinks={self._sinks.names!r} spill_path={self.spill_path!r}>"

    # -- the request path ------------------------------------------------------------------------

    def add_listener(self, listener: Callable[[UsageEvent], None]) -> None:
        """Call ``listener(event)`` for every emitted event (not for replays), on the request
        path: it must be cheap and must not block (metrics counters, not I/O). An exception it
        raises is logged and swallowed, so an observer can never cost a record."""
        self._listeners.append(listener)

    def emit(self, event: UsageEvent) -> None:
        """Queue one event; never blocks, never raises for a full queue (it spills instead).

        Call it from the event loop's thread. Starts the pipeline on first use when a loop runs.
        """
        self.stats.emitted += 1
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                logger.exception("usage: an event listener failed")
        state = self._state
        if state == _NEW:
            self._start_lazily()
        elif self._respawn and state == _RUNNING:
            self._spawn_workers()
        if self._state <= _RUNNING and len(self._buf) < self._queue_size:
            origin = self._write_ahead(event) if self._durable else None
            buf = self._buf
            buf.append((event, origin))
            if self._nonempty:
                _wake(self._nonempty)
            if self._full and len(buf) >= self._batch_size:
                _wake(self._full)
            return
        self._spill([(event, None)], "queue full" if self._state <= _RUNNING else "closed")

    def _write_ahead(self, event: UsageEvent) -> SpillFile | None:
        wal = self._wal
        try:
            if wal is None or wal.sealed:
                wal = self._wal = self._new_file("wal")
            wal.append(encode_line(event))
        except OSError as exc:
            if wal is not None and wal.sealed:
                wal.seal()
            self._warn("wal", "usage: write-ahead append failed (%s); event kept in memory", exc)
            return None
        wal.pending += 1
        if wal.size >= _WAL_SEGMENT_BYTES:
            wal.seal()
        return wal

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the workers and replay the spill directory in the background; idempotent.

        Raises `ConfigurationError` when the spill directory cannot be created.
        """
        if self._state == _NEW:
            self._prepare_spill_dir()
            self._start(asyncio.get_running_loop())

    def _start_lazily(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            _LIVE.add(self)  # no loop yet: events wait for start(), or are spilled at exit
            return
        try:
            self._prepare_spill_dir()
        except ConfigurationError as exc:
            logger.error("usage: %s", exc)
        self._start(loop)

    def _prepare_spill_dir(self) -> None:
        if self._dir is None:
            return
        try:
            self._dir.prepare()
        except OSError as exc:
            raise ConfigurationError(
                f"usage spill directory {self.spill_path!r} cannot be created: {exc}"
            ) from None

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._state = _RUNNING
        self._spawn_workers()
        if self._dir is not None:
            self._replaying = True  # flush() waits for the first round from now on
            self._replay_task = loop.create_task(self._replay(), name="llmguard-usage-replay")
            if self._fsync_interval:
                self._sync_task = loop.create_task(self._sync_loop(), name="llmguard-usage-fsync")
        _LIVE.add(self)

    def _spawn_workers(self) -> None:
        self._respawn = False
        self._workers = {t for t in self._workers if not t.done()}
        while len(self._workers) < self._n_workers:
            task = asyncio.get_running_loop().create_task(
                self._worker(), name="llmguard-usage-worker"
            )
            task.add_done_callback(self._worker_done)
            self._workers.add(task)

    def _worker_done(self, task: asyncio.Task[None]) -> None:
        # Replaced on the next emit(), not here: during the loop's teardown a new task would be
        # left pending. Its batch was already spilled.
        self._workers.discard(task)
        if self._state == _RUNNING:
            self._respawn = True
            if not task.cancelled() and task.exception() is not None:
                logger.error("usage: worker crashed", exc_info=task.exception())

    async def flush(self) -> None:
        """Wait until no replay runs and nothing is queued or being written (bound it with
        ``asyncio.timeout``). Events that could not be written count as done: they are spilled."""
        if self._state == _NEW:
            await self.start()
        while self._buf or self._inflight or self._replaying:
            if self._respawn and self._state == _RUNNING:
                self._spawn_workers()
            await asyncio.sleep(0.005)

    async def aclose(self) -> None:
        """Stop accepting, drain the queue within ``drain_timeout``, spill the rest, close the
        sinks. Events emitted from now on go straight to the spill file."""
        if self._closed is not None:
            await self._closed.wait()
            return
        self._closed = asyncio.Event()
        try:
            await self._close()
        except BaseException:
            self._emergency_close()  # cancelled while draining: keep what is in memory on disk
            raise
        finally:
            self._closed.set()

    async def _close(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._drain_timeout
        self._state = _CLOSING
        if self._replay_task is not None:  # what it has not read stays in its file
            self._replay_task.cancel()
            self._replaying = False
        for waiters in (self._nonempty, self._full, self._space):
            _wake_all(waiters)
        if self._buf:
            self._spawn_workers()
        if self._workers:
            _, late = await asyncio.wait(self._workers, timeout=max(0.0, deadline - loop.time()))
            for task in late:
                task.cancel()  # each spills its batch on the way out
            if late:
                await asyncio.wait(late, timeout=_CLOSE_GRACE)
        leftovers = list(self._buf)
        self._buf.clear()
        for key in list(self._inflight):  # a write that ignored cancellation
            leftovers += self._inflight.pop(key)
        if leftovers:
            logger.warning(
                "usage: drain timed out after %.1fs: %d event(s) spilled for the next start",
                self._drain_timeout,
                len(leftovers),
            )
            self._spill(leftovers, "drain timeout")
        self._state = _CLOSED
        tasks = [t for t in (self._replay_task, self._sync_task) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._close_files()
        _LIVE.discard(self)
        await self._sinks.aclose()
        self._flush_logs()
        s = self.stats
        log = logger.error if s.dropped else logger.info
        log(
            "usage pipeline closed: %d emitted, %d replayed, %d written, %d spilled, %d dropped",
            s.emitted,
            s.replayed,
            s.written,
            s.spilled,
            s.dropped,
        )

    def _close_files(self) -> None:
        if self._dir is not None:
            self._dir.close_all()
        self._spill_file = self._wal = None

    def lifespan_wrap(self, app: ASGIApp) -> ASGIApp:
        """``app`` with this pipeline started on lifespan startup and closed on shutdown, after
        ``app`` has finished its own shutdown."""
        return _LifespanWrapper(app, self)

    # -- workers ---------------------------------------------------------------------------------

    async def _worker(self) -> None:
        while True:
            batch = await self._take()
            if batch is None:
                return
            key = id(batch)
            self._inflight[key] = batch
            try:
                failed = await self._sinks.write([event for event, _ in batch])
            except BaseException:
                # Cancelled mid-write (or a bug): the sinks may or may not have the batch; it is
                # spilled and replayed, and idempotent sinks keep each event once.
                if self._inflight.pop(key, None) is not None:
                    self._spill(batch, "worker cancelled")
                raise
            if self._inflight.pop(key, None) is None:
                continue  # settled by aclose while this write ignored cancellation
            if failed:
                self._spill([item for item in batch if id(item[0]) in failed], "sink failed")
            written = [item for item in batch if id(item[0]) not in failed] if failed else batch
            self.stats.written += len(written)
            for _, origin in written:
                if origin is not None:
                    origin.release()

    async def _take(self) -> list[_Item] | None:
        buf = self._buf
        while True:
            if not buf:
                if self._state >= _CLOSING:
                    return None
                await self._wait(self._nonempty, None)
                continue
            if len(buf) < self._batch_size and self._state == _RUNNING and self._flush_interval:
                await self._wait(self._full, self._flush_interval)
                if not buf:
                    continue
            batch = [buf.popleft() for _ in range(min(len(buf), self._batch_size))]
            if self._space:
                _wake_all(self._space)
            return batch

    async def _wait(self, waiters: deque[asyncio.Future[None]], at_most: float | None) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        waiters.append(fut)
        handle = loop.call_later(at_most, _resolve, fut) if at_most is not None else None
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                _wake(waiters)  # we were woken, then cancelled: pass the wake-up on
            raise
        finally:
            if handle is not None:
                handle.cancel()
            with contextlib.suppress(ValueError):
                waiters.remove(fut)

    # -- spill and replay ------------------------------------------------------------------------

    def _new_file(self, kind: Literal["spill", "wal"]) -> SpillFile:
        if self._dir is None:
            raise OSError("spilling is disabled (spill_path=None)")
        file = self._dir.create(kind)
        if self._state == _CLOSED:
            _LIVE.add(self)  # an emit after aclose(): the file is synced and closed at exit
        return file

    def _spill(self, items: list[_Item], reason: str) -> None:
        """Append items to the spill file and count them spilled; dropped if that fails.

        An item from a WAL segment or a replayed file is written to the spill file too, so that
        file can be deleted; if the spill fails, that file is kept instead (still spilled).
        """
        try:
            spill = self._spill_file
            if spill is None or spill.sealed:
                spill = self._spill_file = self._new_file("spill")
            spill.append(encode_lines([event for event, _ in items]))
        except OSError as exc:
            if self._spill_file is not None and self._spill_file.sealed:
                self._spill_file.close()  # torn: the next spill starts a new file
            lost = 0
            for _, origin in items:
                if origin is None:
                    lost += 1
                else:
                    origin.keep = True
                    origin.release()
            self.stats.spilled += len(items) - lost
            if lost:
                self.stats.dropped += lost
                self._count_drop(lost, f"{reason}; spill failed: {exc}")
            return
        self.stats.spilled += len(items)
        for _, origin in items:
            if origin is not None:
                origin.release()
        self._warn(f"spill:{reason}", "usage: %s, event(s) spilled to %s", reason, spill.path)

    async def _replay(self) -> None:
        """Replay the spill files at start, then every ``replay_interval`` while healthy."""
        first = True
        backlog = max(1, self._queue_size // 2)
        while True:
            # While a sink fails, new batches probe it (once each); replays wait for recovery.
            if first or not (len(self._buf) >= backlog or self._sinks.failing):
                if not first:
                    self._detach_spill_file()
                self._replaying = True
                try:
                    assert self._dir is not None
                    await self._replay_files(self._dir.claim())
                except Exception:  # a bug or an odd file: the next round tries again
                    logger.exception("usage: replay of %s failed", self.spill_path)
                finally:
                    self._replaying = False
            if self._replay_interval is None:
                return
            first = False
            await asyncio.sleep(self._replay_interval)

    def _detach_spill_file(self) -> None:
        """Start a new spill file so that the current one can be replayed (we hold its lock)."""
        spill = self._spill_file
        if spill is not None and spill.fd >= 0 and spill.size:
            self._spill_file = None
            spill.sealed = True
            spill.close(sync=False)  # kept and unlocked: the claim that follows takes it

    async def _replay_files(self, files: list[SpillFile]) -> None:
        seen = SeenSet(_REPLAY_DEDUPE)
        high_water = max(1, self._queue_size // 2)
        for file in files:
            assert file.reader is not None
            count = 0
            while True:
                chunk = await asyncio.to_thread(read_chunk, file.reader, _REPLAY_CHUNK)
                events, bad, eof = chunk
                if bad:
                    self.stats.unreadable += bad
                    logger.warning("usage: %d unreadable line(s) in %s", bad, file.path)
                if eof:
                    break
                for event in events:
                    ident: EventId = (event.request_id, event.attempt)
                    if ident in seen:
                        continue
                    seen.add(ident)
                    while len(self._buf) >= high_water:
                        await self._wait(self._space, 0.5)
                    file.pending += 1
                    self.stats.replayed += 1
                    count += 1
                    self._buf.append((event, file))
                    if self._nonempty:
                        _wake(self._nonempty)
                    if self._full and len(self._buf) >= self._batch_size:
                        _wake(self._full)
            file.seal()
            if count:
                logger.info("usage: replaying %d event(s) from %s", count, file.path)

    async def _sync_loop(self) -> None:
        assert self._fsync_interval
        assert self._dir is not None
        while True:
            await asyncio.sleep(self._fsync_interval)
            dirty = self._dir.dirty()
            if dirty:
                await asyncio.to_thread(sync_files, dirty)

    def _emergency_close(self) -> None:
        """At interpreter exit without `aclose`: spill what is in memory, close the files."""
        items = list(self._buf)
        self._buf.clear()
        for key in list(self._inflight):
            items += self._inflight.pop(key)
        self._state = _CLOSED
        if items:
            self._spill(items, "exit without aclose()")
            logger.warning("usage: pipeline not closed at exit: %d event(s) spilled", len(items))
        self._close_files()
        self._flush_logs()

    # -- logs ------------------------------------------------------------------------------------

    def _warn(self, topic: str, msg: str, *args: object) -> None:
        """A warning at most once a second per topic."""
        now = time.monotonic()
        if now - self._log_at.get(topic, -1e9) >= 1.0:
            self._log_at[topic] = now
            logger.warning(msg, *args)

    def _count_drop(self, n: int, reason: str) -> None:
        self._unlogged["drop"] = self._unlogged.get("drop", 0) + n
        now = time.monotonic()
        if now - self._log_at.get("drop", -1e9) >= 1.0:
            self._log_at["drop"] = now
            self._flush_logs(reason)

    def _flush_logs(self, reason: str = "") -> None:
        n = self._unlogged.pop("drop", 0)
        if n:
            logger.error(
                "usage: %d event(s) DROPPED%s (%d in total)",
                n,
                f" ({reason})" if reason else "",
                self.stats.dropped,
            )


class _LifespanWrapper:
    def __init__(self, app: ASGIApp, pipeline: UsagePipeline) -> None:
        self.app = app
        self.pipeline = pipeline

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await pass_lifespan(self.app, self.pipeline, scope, receive, send)
        else:
            await self.app(scope, receive, send)


_LIVE: weakref.WeakSet[UsagePipeline] = weakref.WeakSet()


@atexit.register
def _close_at_exit() -> None:
    for pipeline in list(_LIVE):
        with contextlib.suppress(Exception):
            pipeline._emergency_close()
