"""Token estimates for when the provider does not say: a cancelled or broken answer.

Estimates are flagged ``estimated`` on the record. The prompt is estimated from the request body:
with tiktoken (the ``tiktoken`` extra) when it is installed and its encoding is available, run off
the event loop; otherwise at four bytes of JSON per token, a deliberate over-estimate for English
text wrapped in JSON, so that an unknown is never charged as free.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
from importlib.util import find_spec
from typing import Any

_BYTES_PER_TOKEN = 4
# Above this size tiktoken's cost is not worth it: the heuristic is used.
_TIKTOKEN_MAX = 256 << 10
_HAVE_TIKTOKEN = find_spec("tiktoken") is not None


def heuristic_prompt_tokens(body: bytes) -> int:
    return max(1, len(body) // _BYTES_PER_TOKEN)


@functools.cache
def _encoding() -> Any | None:
    try:
        tiktoken = importlib.import_module("tiktoken")
        return tiktoken.get_encoding("o200k_base")
    except Exception:  # not installed, or its data cannot be loaded here
        return None


def _tiktoken_count(body: bytes) -> int | None:
    enc = _encoding()
    if enc is None:
        return None
    return max(1, len(enc.encode(body.decode("utf-8", "replace"), disallowed_special=())))


async def estimate_prompt_tokens(body: bytes | None) -> int:
    """An estimate of the prompt tokens of a request body (never 0 for a non-empty body)."""
    if not body:
        return 0
    if _HAVE_TIKTOKEN and len(body) <= _TIKTOKEN_MAX:
        counted = await asyncio.to_thread(_tiktoken_count, body)
        if counted is not None:
            return counted
    return heuristic_prompt_tokens(body)
