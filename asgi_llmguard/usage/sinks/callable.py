"""`CallableSink`: hand events to your own coroutine (a queue producer, an HTTP collector...)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Literal, cast, overload

from asgi_llmguard.usage.events import UsageEvent
from asgi_llmguard.usage.sinks.base import SeenSet

BatchFn = Callable[[Sequence[UsageEvent]], Awaitable[object]]
EventFn = Callable[[UsageEvent], Awaitable[object]]


class CallableSink:
    """Call an async function with each batch, or (``per_event=True``) with each event.

    Raising makes the pipeline retry the batch, then spill it. The function may therefore see an
    event again; the sink skips ids it delivered within its last ``dedupe_window`` (0: none), which
    covers retries and re-writes within the process, but a replay after a restart can repeat an
    event: dedupe by ``(request_id, attempt)`` downstream if it matters.
    """

    @overload
    def __init__(
        self,
        fn: BatchFn,
        *,
        per_event: Literal[False] = False,
        name: str | None = None,
        dedupe_window: int = 10_000,
    ) -> None: ...

    @overload
    def __init__(
        self,
        fn: EventFn,
        *,
        per_event: Literal[True],
        name: str | None = None,
        dedupe_window: int = 10_000,
    ) -> None: ...

    def __init__(
        self,
        fn: BatchFn | EventFn,
        *,
        per_event: bool = False,
        name: str | None = None,
        dedupe_window: int = 10_000,
    ) -> None:
        if not callable(fn):
            raise TypeError("CallableSink needs an async callable")
        self._batch_fn = None if per_event else cast(BatchFn, fn)
        self._event_fn = cast(EventFn, fn) if per_event else None
        self._seen = SeenSet(dedupe_window)
        self.name = name or f"callable:{getattr(fn, '__qualname__', type(fn).__name__)}"

    async def write(self, events: Sequence[UsageEvent]) -> None:
        fresh = self._seen.unseen(events)
        if not fresh:
            return
        if self._event_fn is not None:
            for event in fresh:
                await self._event_fn(event)
                self._seen.add((event.request_id, event.attempt))
            return
        assert self._batch_fn is not None
        await self._batch_fn(fresh)
        for event in fresh:
            self._seen.add((event.request_id, event.attempt))

    async def aclose(self) -> None:
        return None
