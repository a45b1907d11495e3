"""`ScriptBatcher`: the Lua script calls of concurrent requests, sent together in pipelines.

Every Redis-backed check (a request's rate limits, a budget reservation, a settlement) is one
``EVALSHA``. Sent one by one, each costs a connection checkout, a write and a read of its own,
and in redis-py most of that is Python: about 100 µs of CPU per call, several times what the
script costs Redis. The batcher queues the calls made while a batch is on the wire and sends
them as the next batch, pipelined on one connection it keeps (packed by hiredis, answered through
redis-py's parser): one write and one read for all of them. Under load the batches grow by
themselves; a lone request waits for no one (its call goes out on the next turn of the loop).

What does not change: each script still runs atomically, and the calls of one batch run in the
order they were made. A batch is bounded by ``timeout``: when Redis does not answer in time,
or the connection fails, every call of the batch fails with that error (the callers' own
fail-open/fail-closed policies apply, as before). A call whose caller gave up (cancelled, or
its own timeout passed) before its batch went out is dropped from the batch; one already sent
may still have run, as with a single call that timed out. After Redis lost its script cache
(a restart, ``SCRIPT FLUSH``), the calls answered ``NOSCRIPT`` are loaded and sent once more.

On a Redis Cluster a batch goes out as redis-py's cluster pipeline: the calls are grouped by the
node that owns their keys' slot, each node gets one pipeline, and the nodes are written to
concurrently (redirections after a resharding are followed by redis-py). The keys of one call
must share a hash slot (a ``{tag}``), as for any script on a cluster.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster
    from redis.asyncio.connection import AbstractConnection
    from redis.commands.core import AsyncScript

_hiredis_pack: Callable[[tuple[Any, ...]], bytes] | None
try:  # the redis extra brings hiredis: its C packer is a fraction of redis-py's Python one
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # pragma: no cover - redis without hiredis
    _hiredis_pack = None


def _pack(args: tuple[Any, ...]) -> bytes:
    """One command in the Redis protocol (RESP)."""
    if _hiredis_pack is not None:
        return _hiredis_pack(args)
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


#: One queued call: the script, its keys and arguments, its caller's future, and the timer that
#: fails the future when the caller's timeout passes (cancelled once the reply is in).
_Call = tuple[
    "AsyncScript",
    Sequence[Any],
    Sequence[Any],
    "asyncio.Future[Any]",
    "asyncio.TimerHandle | None",
]


#: What `_settle` is given to cancel a call (the batcher is closing).
_CANCEL: Any = object()


def _settle(call: _Call, reply: Any) -> None:
    """Answer one call: its reply, an exception for it, or `_CANCEL`; and stop its timer."""
    future, timer = call[3], call[4]
    if timer is not None:
        timer.cancel()
    if future.done():
        return
    if isinstance(reply, BaseException):
        future.set_exception(reply)
    elif reply is _CANCEL:
        future.cancel()
    else:
        future.set_result(reply)


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(TimeoutError("Redis did not answer in time"))


class ScriptBatcher:
    """Send the script calls of concurrent requests to ``client`` in shared pipelines.

    - ``timeout``: seconds one batch may take (write, Redis's work, read).
    - ``max_batch``: the most calls in one pipeline; more wait for the next.
    """

    def __init__(
        self, client: Redis | RedisCluster, *, timeout: float = 1.0, max_batch: int = 256
    ) -> None:
        if timeout <= 0 or max_batch < 1:
            raise ValueError("timeout must be > 0 and max_batch >= 1")
        from redis.asyncio.cluster import RedisCluster

        self._client = client
        self._cluster = isinstance(client, RedisCluster)
        self._timeout = timeout
        self._max = max_batch
        self._pending: list[_Call] = []
        self._sending = False
        self._closed = False
        self._flusher: asyncio.Task[None] | None = None
        # The connection batches go out on (one batch is on the wire at a time), kept between
        # batches instead of taken from the pool for each.
        self._conn: AbstractConnection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Pipelines sent and calls carried, for tests and metrics.
        self.batches = 0
        self.calls = 0

    def register(self, source: str) -> AsyncScript:
        """The script (its SHA is computed here; nothing is sent)."""
        return self._client.register_script(source)

    def call(
        self,
        script: AsyncScript,
        keys: Sequence[Any],
        args: Sequence[Any],
        *,
        timeout: float | None = None,
    ) -> asyncio.Future[Any]:
        """Queue one run of ``script``; returns a future of its reply (await it). With
        ``timeout``, the future fails with `TimeoutError` once that many seconds have passed
        (one timer, cheaper than wrapping the wait in ``asyncio.timeout``)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if self._closed:
            future.set_exception(ConnectionError("the Redis client is closed"))
            return future
        if self._loop is not loop:
            # First use, or a new event loop (a second ``asyncio.run``): what belonged to the old
            # loop (its connection, a flusher that never finished, calls it never sent) is dropped.
            self._loop, self._conn, self._sending = loop, None, False
            self._pending = [call for call in self._pending if call[3].get_loop() is loop]
        timer = loop.call_later(timeout, _expire, future) if timeout is not None else None
        self._pending.append((script, keys, args, future, timer))
        if not self._sending:
            self._sending = True
            self._flusher = loop.create_task(self._flush())
        return future

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch = []
                for call in self._pending[: self._max]:
                    if call[3].done():  # the caller gave up before it went out: not sent
                        _settle(call, _CANCEL)
                    else:
                        batch.append(call)
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

        self.batches += 1
        self.calls += len(batch)
        replies: list[Any] = []
        try:
            async with asyncio.timeout(self._timeout):
                if self._cluster:
                    replies = await self._send_cluster(batch)
                else:
                    replies = await self._send_one(batch)
        except BaseException as exc:
            # Whatever was on the wire is lost with the connection: never reuse it.
            await self._drop_connection()
            for call in batch:
                _settle(call, exc if isinstance(exc, Exception) else _CANCEL)
            if not isinstance(exc, Exception):
                raise  # cancelled (the batcher is closing)
            return
        again: list[_Call] = []
        for call, reply in zip(batch, replies, strict=True):
            if isinstance(reply, NoScriptError) and retry and not call[3].done():
                again.append(call)
            else:
                _settle(call, reply)
        if again:
            try:
                async with asyncio.timeout(self._timeout):
                    for source in {call[0].script for call in again}:
                        await self._client.script_load(source)
            except Exception as exc:
                for call in again:
                    _settle(call, exc)
                return
            await self._send(again, retry=False)

    async def _send_cluster(self, batch: list[_Call]) -> list[Any]:
        """The batch as one cluster pipeline: one pipeline per node, written concurrently."""
        pipe = cast("RedisCluster", self._client).pipeline()
        for script, keys, args, _, _ in batch:
            pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        return list(await pipe.execute(raise_on_error=False))

    async def _send_one(self, batch: list[_Call]) -> list[Any]:
        """The batch pipelined on the one connection kept for batches."""
        from redis.exceptions import ResponseError

        packed = b"".join(
            _pack(("EVALSHA", script.sha, len(keys), *keys, *args))
            for script, keys, args, _, _ in batch
        )
        client = cast("Redis", self._client)
        conn = self._conn
        if conn is None:
            pool = client.connection_pool
            conn = self._conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        await conn.send_packed_command(packed, check_health=False)
        replies: list[Any] = []
        for _ in batch:
            try:
                replies.append(await conn.read_response())
            except ResponseError as exc:  # this call's error; the stream is in step
                replies.append(exc)
        return replies

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.disconnect()
            finally:
                await cast("Redis", self._client).connection_pool.release(conn)

    async def aclose(self) -> None:
        """Stop sending: a batch on the wire is cancelled and its callers with it."""
        self._closed = True
        flusher = self._flusher
        if flusher is not None and not flusher.done():
            flusher.cancel()
            await asyncio.gather(flusher, return_exceptions=True)
        for call in self._pending:
            _settle(call, _CANCEL)
        self._pending.clear()
        conn, self._conn = self._conn, None
        if conn is not None:
            await cast("Redis", self._client).connection_pool.release(conn)

    def __repr__(self) -> str:
        return f"<ScriptBatcher batches={self.batches} calls={self.calls}>"
