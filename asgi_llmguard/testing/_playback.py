"""Sending a planned stream as the fakes do: pauses between content events, and the connection
reset or the body ended early after a given number of them."""

from __future__ import annotations

from asgi_llmguard.testing._common import StreamPlan
from asgi_llmguard.testing._http import Exchange, FakeConnectionReset
from asgi_llmguard.testing._knobs import LINE_ENDINGS, Knobs


def with_line_ending(plan: StreamPlan, line_ending: str) -> StreamPlan:
    """``plan`` with its events' line feeds written as ``line_ending`` (lf, crlf or cr)."""
    if line_ending == "lf":
        return plan
    eol = LINE_ENDINGS[line_ending]
    head, content, tail = (
        [e.replace(b"\n", eol) for e in part] for part in (plan.head, plan.content, plan.tail)
    )
    return StreamPlan(head, content, tail, content_type=plan.content_type)


async def play(
    exchange: Exchange, plan: StreamPlan, knobs: Knobs, headers: list[tuple[bytes, bytes]], who: str
) -> None:
    """Start a 200 with ``headers`` and send ``plan``: its head at once, ``chunk_delay`` before each
    content event, then its tail with the end of the body. ``reset_after_chunks`` and
    ``truncate_after_chunks`` apply after that many content events; ``who`` names the fake in the
    reset's message."""
    await exchange.start(200, headers)
    if plan.head:
        await exchange.body(b"".join(plan.head))
    if await _cut(exchange, knobs, 0, who):
        return
    for sent, event in enumerate(plan.content, start=1):
        await exchange.pause(knobs.chunk_delay)
        await exchange.body(event)
        if await _cut(exchange, knobs, sent, who):
            return
    await exchange.body(b"".join(plan.tail), more=False)


async def _cut(exchange: Exchange, knobs: Knobs, sent: int, who: str) -> bool:
    """Apply ``reset_after_chunks`` / ``truncate_after_chunks`` once ``sent`` chunks are out."""
    if knobs.reset_after_chunks == sent:
        raise FakeConnectionReset(f"{who} reset the connection after {sent} chunks")
    if knobs.truncate_after_chunks == sent:
        await exchange.body(b"", more=False)
        return True
    return False
