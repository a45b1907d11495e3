"""Thinking suffixes in the forwarder: the grammar (`asgi_llmguard.providers.thinking`) and the
rewrite of a request body by the provider whose wire the route speaks
(`Provider.apply_thinking`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from asgi_llmguard.providers import OWNERS
from asgi_llmguard.providers.thinking import (
    ANTHROPIC_MIN_BUDGET,
    BUDGET_THRESHOLDS,
    EFFORT_BUDGETS,
    MAX_BUDGET,
    Effort,
    Mode,
    ParsedModel,
    Thinking,
    parse_model,
)
from asgi_llmguard.routes import Api

__all__ = [
    "ANTHROPIC_MIN_BUDGET",
    "BUDGET_THRESHOLDS",
    "EFFORT_BUDGETS",
    "MAX_BUDGET",
    "Effort",
    "Mode",
    "ParsedModel",
    "Thinking",
    "apply_thinking",
    "parse_model",
]


def apply_thinking(
    api: Api,
    body: Mapping[str, Any],
    parsed: ParsedModel,
    *,
    operation: str | None = None,
) -> dict[str, Any]:
    """A copy of ``body`` with ``model`` set to ``parsed.base`` and the reasoning parameters of
    ``api``'s wire set from ``parsed.thinking`` by the provider that owns it
    (`Provider.apply_thinking`). ``body`` itself is not modified.

    ``operation`` is the route's operation (``chat.completions``, ``responses``, ``messages``,
    ...); by default ``messages`` for Anthropic and ``chat.completions`` otherwise. The suffix
    wins over reasoning fields already in the body: it is the caller's most specific choice, and
    the reason suffixes exist is clients that cannot set those fields.
    """
    out = dict(body)
    out["model"] = parsed.base
    if parsed.thinking is not None:
        if operation is None:
            operation = "messages" if api == "anthropic" else "chat.completions"
        OWNERS[api].apply_thinking(operation, out, parsed.thinking, parsed.base)
    return out
