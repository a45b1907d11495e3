"""The `Sink` protocol, and the small parts the sinks share.

A sink stores batches of `UsageEvent` and is idempotent under ``(request_id, attempt)``: writing
the same event twice stores it once. The pipeline relies on that: a batch is retried after an
error, re-written after a worker was cancelled mid-write, and replayed from the spill file after a
crash, so a sink may see an event more than once (at-least-once delivery) and must keep one row.
The database sinks get this from a primary key; the file and callable sinks approximate it with a
bounded in-process window of recent ids (`SeenSet`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

import msgspec

from asgi_llmguard.usage.events import UsageEvent

T = TypeVar("T")
EventId = tuple[str, int]

#: The ledger's columns, in the order of `event_row`, shared by the SQL sinks and the report.
COLUMNS = (
    "request_id",
    "attempt",
    "started_at",
    "key_id",
    "model",
    "served_model",
    "provider",
    "endpoint",
    "credential_id",
    "status",
    "outcome",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "cache_creation_tokens",
    "reasoning_tokens",
    "cost_nanos",
    "latency",
    "ttfb",
    "stream",
    "estimated",
    "metadata",
    "client_request_id",
    "reason",
    "cache_creation_1h_tokens",
    "service_tier",
    "units",
    "unit",
    "served_api",
    "recorded_at",
)

_encode_metadata = msgspec.json.Encoder().encode


@runtime_checkable
class Sink(Protocol):
    """Where the pipeline writes usage events.

    ``write`` stores a batch (all of it, or raises: the pipeline retries the whole batch, so a
    partial write must be safe to repeat) and is idempotent under ``(request_id, attempt)``.
    ``aclose`` releases connections, files and threads; the pipeline calls it once, after its
    last write. A sink may set a ``name`` attribute for logs and statistics.
    """

    async def write(self, events: Sequence[UsageEvent]) -> None: ...

    async def aclose(self) -> None: ...


def sink_name(sink: object) -> str:
    """The sink's ``name`` attribute, or its class name."""
    name = getattr(sink, "name", None)
    return name if isinstance(name, str) and name else type(sink).__name__


def event_id(event: UsageEvent) -> EventId:
    return (event.request_id, event.attempt)


def event_row(event: UsageEvent, recorded_at: float) -> tuple[Any, ...]:
    """The event as a row in `COLUMNS` order (metadata as JSON text)."""
    e = event
    return (
        e.request_id,
        e.attempt,
        e.started_at,
        e.key_id,
        e.model,
        e.served_model,
        e.provider,
        e.endpoint,
        e.credential_id,
        e.status,
        e.outcome,
        e.input_tokens,
        e.output_tokens,
        e.cached_input_tokens,
        e.cache_creation_tokens,
        e.reasoning_tokens,
        e.cost_nanos,
        e.latency,
        e.ttfb,
        e.stream,
        e.estimated,
        _encode_metadata(e.metadata).decode(),
        e.client_request_id,
        e.reason,
        e.cache_creation_1h_tokens,
        e.service_tier,
        e.units,
        e.unit,
        e.served_api,
        recorded_at,
    )


class SeenSet:
    """The ids of the last ``capacity`` events seen: best-effort dedupe within one process.

    Used by sinks with no unique key of their own. It catches what a process repeats itself
    (a retried batch, a re-written batch after a cancelled write); what a restarted process
    replays is caught only as far as the sink can rebuild the window (see `JSONLSink`).
    """

    __slots__ = ("_capacity", "_ids")

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._ids: dict[EventId, None] = {}

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, key: EventId) -> bool:
        return key in self._ids

    def add(self, key: EventId) -> None:
        if self._capacity <= 0:
            return
        ids = self._ids
        ids.pop(key, None)
        ids[key] = None
        if len(ids) > self._capacity:
            del ids[next(iter(ids))]

    def unseen(self, events: Iterable[UsageEvent]) -> list[UsageEvent]:
        """The events not seen yet, each once (duplicates inside the batch dropped too)."""
        if self._capacity <= 0:
            return list(events)
        fresh: dict[EventId, UsageEvent] = {}
        for event in events:
            key = (event.request_id, event.attempt)
            if key not in self._ids:
                fresh.setdefault(key, event)
        return list(fresh.values())


class WriterThread:
    """One dedicated thread for a sink's blocking I/O, so it never runs on the event loop.

    The sink's connection or file lives on this thread only; calls run one at a time, in order.
    A call whose caller is cancelled before it starts is skipped; one already running finishes
    (which is why writes must be idempotent).
    """

    def __init__(self, name: str) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=name
        )

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    def shutdown(self) -> None:
        """Let queued calls finish, then end the thread; does not wait."""
        self._executor.shutdown(wait=False)
