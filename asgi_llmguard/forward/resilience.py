"""Retry decisions, backoff, the bound on a held first event, answers rewritten back to an alias.

What may be retried is narrow on purpose (RELIABILITY R9): a request is sent again only when the
first attempt provably did not start a generation -- the connection could not be opened, or the
upstream answered with a status that means "not accepted" (429, 5xx, Anthropic's 529) -- and
never once a byte of the answer has reached the client. A timeout after the request was sent, or a
connection that broke after sending, may have started a billed generation: those are not retried.
"""

from __future__ import annotations

import random

from asgi_llmguard.forward.aliases import AliasTable
from asgi_llmguard.forward.engines import UpstreamError
from asgi_llmguard.forward.router import RetryPolicy

#: Bytes held at most while waiting for a stream's first event; past this the stream is relayed.
HOLD_LIMIT = 64 * 1024


def sent_nothing(exc: UpstreamError) -> bool:
    """Whether the request provably never reached the upstream (safe to send elsewhere)."""
    return exc.kind == "connect" or exc.phase == "connect"


def backoff_delay(policy: RetryPolicy, retry: int) -> float:
    """Seconds to wait before retry number ``retry`` (1 for the first): full jitter between
    half and all of ``backoff * 2**(retry-1)``, capped, so replicas do not retry in step."""
    if policy.backoff <= 0:
        return 0.0
    ceiling = min(policy.backoff_cap, policy.backoff * 2.0 ** (retry - 1))
    return ceiling * (0.5 + random.random() / 2)  # jitter, not security


class StreamRewriter:
    """Rewrites the ``model`` of SSE lines back to the alias, a whole line at a time.

    A line split across chunks is held until its end arrives; what is held is at most one line.
    """

    __slots__ = ("_alias", "_pending", "_table")

    def __init__(self, table: AliasTable, alias: str) -> None:
        self._table = table
        self._alias = alias
        self._pending = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self._pending + chunk if self._pending else chunk
        cut = data.rfind(b"\n") + 1
        self._pending = data[cut:]
        if not cut:
            return b""
        return self._table.rewrite_model(data[:cut], self._alias)

    def flush(self) -> bytes:
        rest, self._pending = self._pending, b""
        return self._table.rewrite_model(rest, self._alias) if rest else b""
