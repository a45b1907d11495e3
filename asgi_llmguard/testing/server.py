"""Run any ASGI app under uvicorn on a loopback port, for tests that need real sockets.

:func:`serve` runs the server in a daemon thread with its own event loop, so it works from sync
and async tests alike; :func:`serve_async` runs it as a task in the current event loop. Both
bind the socket themselves (``port=0`` picks a free port), wait until uvicorn is accepting
connections, and yield a :class:`RunningServer`::

    with serve(FakeProvider()) as upstream:
        client = openai.OpenAI(base_url=f"{upstream.url}/v1", api_key="sk-test")

uvicorn is imported on first use (it is the ``server`` extra), with httptools and uvloop when
they are installed, lifespan ``"auto"``, log level ``"warning"`` and no access log; keyword
arguments override any :class:`uvicorn.Config` setting. Signal handlers are never installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import uvicorn


@dataclass(frozen=True)
class RunningServer:
    """A server started by :func:`serve` or :func:`serve_async`."""

    host: str
    port: int
    server: uvicorn.Server = field(repr=False, compare=False)
    """The underlying :class:`uvicorn.Server`."""

    @property
    def url(self) -> str:
        """The base URL, e.g. ``"http://127.0.0.1:54321"`` (no trailing slash)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


_DEFAULTS: dict[str, Any] = {
    "lifespan": "auto",
    "log_level": "warning",
    "access_log": False,
    "timeout_graceful_shutdown": 1,
}


def _bind(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def _server(app: Any, options: dict[str, Any]) -> uvicorn.Server:
    import uvicorn

    class _Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # The caller's process owns its signals (Ctrl-C must still stop pytest).
            yield

    return _Server(uvicorn.Config(app, **{**_DEFAULTS, **options}))


def _running(sock: socket.socket, host: str, server: uvicorn.Server) -> RunningServer:
    return RunningServer(host=host, port=sock.getsockname()[1], server=server)


@contextlib.contextmanager
def serve(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    startup_timeout: float = 10.0,
    shutdown_timeout: float = 5.0,
    **uvicorn_kwargs: Any,
) -> Iterator[RunningServer]:
    """Run ``app`` under uvicorn in a background thread for the duration of the ``with`` block.

    Args:
        app: Any ASGI 3 application.
        host: The address to bind; loopback by default.
        port: The port to bind; 0 picks a free one (read it from the yielded object).
        startup_timeout: Seconds to wait for the server to accept connections.
        shutdown_timeout: Seconds to wait for it to stop on exit, before forcing it.
        **uvicorn_kwargs: Passed to :class:`uvicorn.Config`, e.g. ``http="h11"``.

    Raises:
        RuntimeError: the server failed to start (e.g. the app's lifespan startup failed).
    """
    sock = _bind(host, port)
    try:
        server = _server(app, uvicorn_kwargs)
        errors: list[BaseException] = []

        def run() -> None:
            try:
                server.run(sockets=[sock])
            except BaseException as exc:  # SystemExit when the lifespan startup fails
                errors.append(exc)

        thread = threading.Thread(target=run, name=f"uvicorn-{sock.getsockname()[1]}", daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + startup_timeout
            while not server.started:
                if not thread.is_alive():
                    cause = errors[0] if errors else None
                    raise RuntimeError("the server failed to start") from cause
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the server did not start within {startup_timeout} s")
                time.sleep(0.002)
            yield _running(sock, host, server)
        finally:
            server.should_exit = True
            thread.join(shutdown_timeout)
            if thread.is_alive():
                server.force_exit = True
                thread.join(shutdown_timeout)
    finally:
        sock.close()


@contextlib.asynccontextmanager
async def serve_async(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    startup_timeout: float = 10.0,
    shutdown_timeout: float = 5.0,
    **uvicorn_kwargs: Any,
) -> AsyncIterator[RunningServer]:
    """Like :func:`serve`, but run uvicorn as a task in the current event loop.

    The app then shares the test's loop: handy for apps holding loop-bound resources, but a
    client in the same loop must be async (a blocking client would stall the server).
    """
    sock = _bind(host, port)
    try:
        server = _server(app, uvicorn_kwargs)

        async def run() -> None:
            try:
                await server.serve(sockets=[sock])
            except SystemExit as exc:  # must not escape a task: it would stop the loop
                raise RuntimeError("the server failed to start") from exc

        task = asyncio.create_task(run(), name=f"uvicorn-{sock.getsockname()[1]}")
        try:
            deadline = time.monotonic() + startup_timeout
            while not server.started:
                if task.done():
                    task.result()  # raises why it stopped
                    raise RuntimeError("the server failed to start")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the server did not start within {startup_timeout} s")
                await asyncio.sleep(0.002)
            yield _running(sock, host, server)
        finally:
            server.should_exit = True
            done, _ = await asyncio.wait((task,), timeout=shutdown_timeout)
            if not done:
                server.force_exit = True
                task.cancel()
                await asyncio.wait((task,), timeout=shutdown_timeout)
            if task.done() and not task.cancelled():
                task.exception()  # already reported at startup, or nothing to report
    finally:
        sock.close()
