"""`ScriptBatcher`: the Lua script calls of concurrent requests, sent together in pipelines.

Every Redis-backed check (a request's rate limits, a budget reservation, a settlement) is one
``EVALSHA``. Sent one by one, each costs a connection checkout, a write and a read of its own,
and in redis-py most of that is Python: about 100 µs of CPU per call, several times what the
script costs Redis. The batcher queues the calls made while a batch is on the wire and sends
them as the next batch, in one pipeline (``transaction=False``): one checkout, one write, one
read for all of them. Under load the batches grow by themselves; a lone request waits for no
one (its call goes out on the next turn of the event loop).

What does not change: each script still runs atomically, and the calls of one batch run in the
order they were made. A batch is bounded by ``timeout``: when Redis does not answer in time,
or the connection fails, every call of the batch fails with that error (the callers' own
fail-open/fail-closed policies apply, as before). A call whose caller gave up (cancelled, or
its own timeout passed) before its batch went out is dropped from the batch; one already sent
may still have run, as with a single call that timed out. After Redis lost its script cache
(a restart, ``SCRIPT FLUSH``), the calls answered ``NOSCRIPT`` are loaded and sent once more.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

#: One queued call: the script, its keys and arguments, and its caller's future.
_Call = tuple["AsyncScript", Sequence[Any], Sequence[Any], "asyncio.Future[Any]"]


class ScriptBatcher:
    """Send the script calls of concurrent requests to ``client`` in shared pipelines.

    - ``timeout``: seconds one batch may take (write, Redis's work, read).
    - ``max_batch``: the most calls in one pipeline; more wait for the next.
    """

    def __init__(self, client: Redis, *, timeout: float = 1.0, max_batch: int = 256) -> None:
        if timeout <= 0 or max_batch < 1:
            raise ValueError("timeout must be > 0 and max_batch >= 1")
        self._client = client
        self._timeout = timeout
        self._max = max_batch
        self._pending: list[_Call] = []
        self._sending = False
        self._closed = False
        self._flusher: asyncio.Task[None] | None = None
        #: Pipelines sent and calls carried, for tests and metrics.
        self.batches = 0
        self.calls = 0

    def register(self, source: str) -> AsyncScript:
        """The script (its SHA is computed here; nothing is sent)."""
        return self._client.register_script(source)

    def call(self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """Queue one run of ``script``; returns a future of its reply (await it)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if self._closed:
            future.set_exception(ConnectionError("the Redis client is closed"))
            return future
        self._pending.append((script, keys, args, future))
        if not self._sending:
            self._sending = True
            self._flusher = loop.create_task(self._flush())
        return future

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch = [call for call in self._pending[: self._max] if not call[3].done()]
                del self._pending[: self._max]
                if batch:
                    await self._send(batch, retry=True)
        finally:
            self._sending = False
            if self._pending and not self._closed:  # queued while this flusher was cancelled
                self._sending = True
                self._flusher = asyncio.get_running_loop().create_task(self._flush())

    async def _send(self, batch: list[_Call], *, retry: bool) -> None:
        from redis.exceptions import NoScriptError

        pipe = self._client.pipeline(transaction=False)
        for script, keys, args, _ in batch:
            pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        self.batches += 1
        self.calls += len(batch)
        try:
            async with asyncio.timeout(self._timeout):
                replies = await pipe.execute(raise_on_error=False)
        except Exception as exc:
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        except BaseException:  # cancelled (the batcher is closing): the callers learn it
            for *_, future in batch:
                future.cancel()
            raise
        again: list[_Call] = []
        for call, reply in zip(batch, replies, strict=True):
            future = call[3]
            if future.done():
                continue
            if isinstance(reply, NoScriptError) and retry:
                again.append(call)
            elif isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)
        if again:
            try:
                async with asyncio.timeout(self._timeout):
                    for source in {call[0].script for call in again}:
                        await self._client.script_load(source)
            except Exception as exc:
                for *_, future in again:
                    if not future.done():
                        future.set_exception(exc)
                return
            await self._send(again, retry=False)

    async def aclose(self) -> None:
        """Stop sending: a batch on the wire is cancelled and its callers with it."""
        self._closed = True
        flusher = self._flusher
        if flusher is not None and not flusher.done():
            flusher.cancel()
            await asyncio.gather(flusher, return_exceptions=True)
        for *_, future in self._pending:
            future.cancel()
        self._pending.clear()

    def __repr__(self) -> str:
        return f"<ScriptBatcher batches={self.batches} calls={self.calls}>"
