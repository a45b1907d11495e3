"""Relaying one upstream answer to the client, chunk by chunk.

An SSE event goes out as soon as it arrives, bytes unchanged, ``Content-Encoding`` preserved. An
upstream that breaks gets the client a clear error: 502/504 before the response started, a
terminal SSE event after. A Gemini stream written as one JSON array (``streamGenerateContent``
without ``alt=sse``) is relayed whole elements at a time and ended, when the upstream breaks it,
with a last ``{"error": ...}`` element and ``]``, as Google ends one. Any other non-SSE body cut
mid-way closes the connection unfinished (never a silently short body).
"""

from __future__ import annotations

import logging

from asgi_llmguard.context import RequestContext
from asgi_llmguard.errors import TERMINAL, send_error, sse_error_event
from asgi_llmguard.forward.aliases import AliasTable
from asgi_llmguard.forward.engines import UpstreamBroken, UpstreamError, UpstreamResponse
from asgi_llmguard.forward.headers import response_headers
from asgi_llmguard.forward.resilience import HOLD_LIMIT, StreamRewriter
from asgi_llmguard.providers.base import FirstEvent
from asgi_llmguard.providers.eventstream import WholeFrames
from asgi_llmguard.providers.jsonarray import HeldArray
from asgi_llmguard.routes import Dialect
from asgi_llmguard.types import Send

logger = logging.getLogger("asgi_llmguard.forward")

# Non-streamed answers up to this size are read whole and sent in one message.
SMALL_BODY = 1 << 20
STATUS_FOR = {"connect": 502, "timeout": 504, "broken": 502}


class ReadBody:
    """An upstream response whose whole body was already read (to look inside an error before
    deciding what to do): it hands that body out again, then reports the end."""

    __slots__ = ("_body", "_resp", "headers", "status")

    def __init__(self, resp: UpstreamResponse, body: bytes) -> None:
        self._resp = resp
        self._body = body
        self.status = resp.status
        self.headers = resp.headers

    async def read_chunk(self) -> bytes:
        body, self._body = self._body, b""
        return body

    async def read_all(self) -> bytes:
        return await self.read_chunk()

    async def aclose(self) -> None:
        await self._resp.aclose()


class Watch:
    """Per-exchange flags shared with the disconnect watcher (never stored on the app)."""

    __slots__ = ("array", "disconnected", "finished", "sse", "started")

    def __init__(self) -> None:
        self.finished = False
        self.disconnected = False
        #: The response start went out, and whether it was a stream (for a terminal event).
        self.started = False
        self.sse = False
        #: A streamed JSON array being relayed (ended with an error element if interrupted).
        self.array: HeldArray | None = None


async def relay(
    ctx: RequestContext,
    resp: UpstreamResponse,
    send: Send,
    watch: Watch,
    dialect: Dialect,
    *,
    aliases: AliasTable | None = None,
    alias: str | None = None,
    held: bytes = b"",
) -> None:
    """Send ``resp`` to the client. ``held``: body bytes already read from ``resp`` (the held
    first event). With ``alias``, answers name the alias instead of the upstream model."""
    headers = response_headers(resp.headers)
    length = -1
    sse = False
    encoded = False
    content_type = b""
    frames: WholeFrames | None = None
    for name, value in headers:
        if name == b"content-length":
            length = int(value) if value.isdigit() else -1
        elif name == b"content-type":
            content_type = value
            if value.startswith(_STREAMS):  # one test for a JSON answer
                sse = True
                if value.startswith(_EVENTSTREAM):
                    # An AWS event stream (Bedrock): binary frames under CRCs, never rewritten,
                    # relayed a whole frame at a time; a break ends it with the dialect's
                    # exception frame after the last whole frame, as an SSE stream's event.
                    encoded = True
                    frames = WholeFrames()
        elif name == b"content-encoding":
            encoded = True
    # Bodies are relayed as the upstream encoded them; a compressed one is not rewritten.
    rewrite = aliases is not None and alias is not None and aliases.rewrite_response_model
    rewrite = rewrite and not encoded

    if 0 <= length <= SMALL_BODY and not sse:
        try:
            data = await resp.read_all()
        except UpstreamError as exc:
            ctx.upstream_error = exc.kind
            logger.warning(
                "upstream %s broke answering %s: %s", ctx.credential_id, ctx.request_id, exc
            )
            await send_error(
                send, STATUS_FOR[exc.kind], str(exc), dialect=dialect, code="upstream_error"
            )
            return
        if rewrite:
            assert aliases is not None
            assert alias is not None
            data = aliases.rewrite_model(data, alias)
            headers = [
                (n, str(len(data)).encode() if n == b"content-length" else v) for n, v in headers
            ]
        watch.started = True
        await send({"type": "http.response.start", "status": resp.status, "headers": headers})
        watch.finished = True
        await send({"type": "http.response.body", "body": data, "more_body": False})
        return

    rewriter: StreamRewriter | None = None
    if rewrite:
        assert aliases is not None
        assert alias is not None
        rewriter = StreamRewriter(aliases, alias)
        headers = [(n, v) for n, v in headers if n != b"content-length"]
    array: HeldArray | None = None
    route = ctx.route
    if (
        length < 0
        and not encoded
        and dialect.name == "google"
        and resp.status < 300
        and route is not None
        and route.endpoint.streams
        and content_type.startswith(b"application/json")
    ):
        array = watch.array = HeldArray()
    watch.started = True
    watch.sse = sse
    await send({"type": "http.response.start", "status": resp.status, "headers": headers})
    try:
        chunk = held or await resp.read_chunk()
        while chunk:
            if rewriter is not None:
                chunk = rewriter.feed(chunk)
            if array is not None:
                chunk = array.feed(chunk)
            elif frames is not None:
                chunk = frames.feed(chunk)
            if chunk:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            chunk = await resp.read_chunk()
        rest = rewriter.flush() if rewriter is not None else b""
        if array is not None:
            rest = array.feed(rest)
            # An array the upstream ended without its "]" stops at its last whole element
            # (what is held after it is dropped): the usage layer adds the error element.
            held = array.flush()
            if array.ended:
                rest += held
        if rest:
            await send({"type": "http.response.body", "body": rest, "more_body": True})
        if frames is not None and frames.pending:
            # The upstream ended the stream inside a frame: its start is dropped, and the
            # stream ends as a broken one does.
            raise UpstreamBroken("The upstream ended the stream inside a frame.")
    except UpstreamError as exc:
        ctx.upstream_error = exc.kind
        logger.warning(
            "upstream %s broke mid-response to %s: %s", ctx.credential_id, ctx.request_id, exc
        )
        rest = rewriter.flush() if rewriter is not None else b""
        if array is not None:
            whole = array.feed(rest)
            end = array.terminal(dialect.error_element(str(exc)))
            if end is None:
                return  # inside an element too large to hold: close unfinished
            watch.finished = True
            await send({"type": "http.response.body", "body": whole + end, "more_body": False})
            return
        if rest:
            await send({"type": "http.response.body", "body": rest, "more_body": True})
        if not sse or (frames is not None and not frames.aligned):
            # The status is already out; the only honest signal left is to close the
            # connection without ending the body, which the ASGI server does when the app
            # returns an unfinished response. (So too for an event stream broken inside a
            # frame too long to hold: its start has been relayed.)
            return
        await send(
            {
                "type": "http.response.body",
                "body": sse_error_event(str(exc), dialect=dialect),
                "more_body": True,
            }
        )
    watch.finished = True
    await send({"type": "http.response.body", "body": b"", "more_body": False})


_EVENTSTREAM = b"application/vnd.amazon.eventstream"
_STREAMS = (b"text/event-stream", _EVENTSTREAM)
_SHUTDOWN = "The gateway is shutting down; the answer was interrupted. Retry the request."


async def end_interrupted(send: Send, watch: Watch, dialect: Dialect) -> None:
    """A terminal SSE error event for a stream, a 503 for an answer not started yet; nothing
    can be added to a started non-stream answer (the server closes it unfinished)."""
    watch.finished = True
    try:
        if not watch.started:
            await send_error(
                send,
                503,
                _SHUTDOWN,
                dialect=dialect,
                code="shutting_down",
                headers=[(b"retry-after", b"1"), (b"connection", b"close")],
            )
        elif watch.sse:
            event = sse_error_event(_SHUTDOWN, dialect=dialect)
            await send({"type": "http.response.body", "body": event, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        elif watch.array is not None:
            end = watch.array.terminal(dialect.error_element(_SHUTDOWN, type="overloaded_error"))
            if end is not None:
                message = {"type": "http.response.body", "body": end, "more_body": False}
                await send({**message, TERMINAL: True})
    except Exception:  # the connection may be gone already
        logger.debug("could not end an interrupted answer", exc_info=True)


async def hold_first_event(resp: UpstreamResponse, first_event: FirstEvent) -> tuple[bytes, int]:
    """Read until the stream's first complete event, as the upstream's provider tells it
    (`Provider.first_event`). Returns the bytes read and the status the attempt stands for: 200,
    or the status an error event in it means. An answer the provider does not check is not
    read."""
    content_type = b""
    for name, value in resp.headers:
        if name == b"content-type":
            content_type = value
            break
    held = b""
    status = first_event(content_type, held)
    try:
        while status is None and len(held) < HOLD_LIMIT:
            chunk = await resp.read_chunk()
            if not chunk:
                # The stream ended before a complete event: nothing useful was produced.
                return held, 502 if not held.strip() else 200
            held += chunk
            status = first_event(content_type, held)
    except UpstreamError:
        return held, 502
    return held, 200 if status is None else status
