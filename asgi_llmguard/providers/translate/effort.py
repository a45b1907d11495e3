"""Reasoning effort <-> thinking budget: the one table both directions use.

A leaf: it imports nothing from the gateway, so the translation layer and the thinking-suffix
rewrite in the forwarder can share it. The values equal ``EFFORT_BUDGETS`` and
``BUDGET_THRESHOLDS`` in ``asgi_llmguard/forward/thinking.py`` (a test keeps them equal).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

#: A reasoning effort as OpenAI names them.
Effort = Literal["minimal", "low", "medium", "high"]

#: Anthropic refuses ``budget_tokens`` below this value.
ANTHROPIC_MIN_BUDGET = 1024

#: Effort -> Anthropic ``budget_tokens``.
EFFORT_BUDGETS: Mapping[str, int] = {
    "minimal": ANTHROPIC_MIN_BUDGET,
    "low": 2048,
    "medium": 8192,
    "high": 24576,
}

#: Budget -> effort: the largest budget each effort stands for (inclusive); above the last,
#: ``high``. An effort survives effort -> budget -> effort.
BUDGET_THRESHOLDS: tuple[tuple[int, Effort], ...] = (
    (1024, "minimal"),
    (4096, "low"),
    (16384, "medium"),
)


def effort_for_budget(budget: int) -> Effort:
    """The effort whose budget is nearest ``budget``."""
    for limit, effort in BUDGET_THRESHOLDS:
        if budget <= limit:
            return effort
    return "high"
