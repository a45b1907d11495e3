"""`Fanout`: one batch to several sinks, each on its own, with retries and per-sink statistics.

A sink's failure never holds the others: each is written concurrently and retried alone, with
exponential backoff. A sink that still fails after its retries is marked *failing* and tried once
per batch until a write succeeds. A healthy sink that refuses a batch may be refusing one event in
it (a value it cannot store): the batch is halved until those events are found, and only they are
reported as not written. The caller (the pipeline) spills what was not written.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from asgi_llmguard.usage.events import UsageEvent
from asgi_llmguard.usage.sinks.base import Sink, sink_name

logger = logging.getLogger("asgi_llmguard.usage")

_CLOSE_GRACE = 5.0  # seconds for each sink's aclose


@dataclass
class SinkStats:
    written: int = 0  #: events the sink accepted
    errors: int = 0  #: failed write calls
    retries: int = 0  #: writes retried after an error
    gave_up: int = 0  #: batches (or parts of one) it did not take after its retries
    rejected: int = 0  #: events it refused while taking the rest of their batch


class _Slot:
    __slots__ = ("failing", "logged_at", "name", "sink", "stats")

    def __init__(self, sink: Sink, name: str) -> None:
        self.sink = sink
        self.name = name
        self.stats = SinkStats()
        self.failing = False
        self.logged_at = -1e9


class Fanout:
    """Write batches to ``sinks``; see the module docstring.

    ``max_retries`` retries per sink and batch, ``retry_backoff=(first, max)`` seconds between
    them (doubling), ``write_timeout`` seconds for one write (``None``: no limit).
    """

    def __init__(
        self,
        sinks: Sequence[Sink],
        *,
        max_retries: int = 5,
        retry_backoff: tuple[float, float] = (0.1, 5.0),
        write_timeout: float | None = 30.0,
    ) -> None:
        self._slots: list[_Slot] = []
        names: set[str] = set()
        for sink in sinks:
            name = sink_name(sink)
            while name in names:
                name += "'"
            names.add(name)
            self._slots.append(_Slot(sink, name))
        self._max_retries = max_retries
        self._backoff = retry_backoff
        self._write_timeout = write_timeout
        #: Per sink, by name.
        self.stats = {slot.name: slot.stats for slot in self._slots}

    @property
    def names(self) -> list[str]:
        return [slot.name for slot in self._slots]

    @property
    def failing(self) -> bool:
        """Some sink failed its last batch after its retries."""
        return any(slot.failing for slot in self._slots)

    async def write(self, events: list[UsageEvent]) -> set[int]:
        """Write to every sink; the ``id()`` of the events some sink did not take."""
        if len(self._slots) == 1:
            return {id(e) for e in await self._write_one(self._slots[0], events)}
        results = await asyncio.gather(
            *(self._write_one(slot, events) for slot in self._slots), return_exceptions=True
        )
        failed: set[int] = set()
        for result in results:
            # A sink's write cancelled on its own (not the caller): that sink missed the batch.
            failed.update(id(e) for e in (events if isinstance(result, BaseException) else result))
        return failed

    async def aclose(self) -> None:
        for slot in self._slots:
            try:
                await asyncio.wait_for(slot.sink.aclose(), _CLOSE_GRACE)
            except Exception as exc:
                logger.error("usage: closing sink %s failed: %r", slot.name, exc)

    async def _write_one(self, slot: _Slot, events: list[UsageEvent]) -> list[UsageEvent]:
        """Write with retries; the events the sink did not take (all, or the ones it refused)."""
        was_failing = slot.failing
        error = await self._attempt(slot, events, 1 if was_failing else self._max_retries + 1)
        if error is None:
            slot.stats.written += len(events)
            if was_failing:
                slot.failing = False
                logger.warning("usage: sink %s recovered", slot.name)
            return []
        failed = events if was_failing else await self._isolate(slot, events)
        slot.stats.gave_up += 1
        if len(failed) < len(events):
            slot.stats.rejected += len(failed)
            logger.error(
                "usage: sink %s refused %d event(s) (first %s/%d): %s; spilled",
                slot.name,
                len(failed),
                failed[0].request_id,
                failed[0].attempt,
                _describe(error),
            )
        elif not was_failing:
            slot.failing = True
            logger.error(
                "usage: sink %s failed: %s; its batches are spilled until it recovers",
                slot.name,
                _describe(error),
            )
        return failed

    async def _attempt(
        self, slot: _Slot, events: list[UsageEvent], attempts: int
    ) -> Exception | None:
        """Up to ``attempts`` writes with backoff; None on success, else the last error."""
        delay, max_delay = self._backoff
        error: Exception | None = None
        for attempt in range(attempts):
            if attempt:
                slot.stats.retries += 1
                await asyncio.sleep(delay)
                delay = min(delay * 2, max_delay)
            try:
                if self._write_timeout is None:
                    await slot.sink.write(events)
                else:
                    await asyncio.wait_for(slot.sink.write(events), self._write_timeout)
            except Exception as exc:
                slot.stats.errors += 1
                error = exc
                now = time.monotonic()
                if attempt + 1 < attempts and now - slot.logged_at >= 1.0:
                    slot.logged_at = now
                    logger.warning(
                        "usage: sink %s failed (%s), retrying", slot.name, _describe(exc)
                    )
            else:
                return None
        return error

    async def _isolate(self, slot: _Slot, events: list[UsageEvent]) -> list[UsageEvent]:
        """The events of a refused batch that the sink refuses alone (one try per part)."""
        if len(events) == 1:
            return events
        halves = (events[: len(events) // 2], events[len(events) // 2 :])
        errors = [await self._attempt(slot, half, 1) for half in halves]
        if errors[0] is not None and errors[1] is not None:
            return events  # both halves: most likely the sink, not an event
        failed: list[UsageEvent] = []
        for half, error in zip(halves, errors, strict=True):
            if error is None:
                slot.stats.written += len(half)
            else:
                failed += await self._isolate(slot, half)
        return failed


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
