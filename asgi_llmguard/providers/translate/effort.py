"""Reasoning effort <-> thinking budget: the gateway's one table (in
`asgi_llmguard.providers.thinking`, which the thinking-suffix rewrite uses too), and the way back
from a budget to an effort."""

from __future__ import annotations

from asgi_llmguard.providers.thinking import (
    ANTHROPIC_MIN_BUDGET,
    BUDGET_THRESHOLDS,
    EFFORT_BUDGETS,
    Effort,
)

__all__ = [
    "ANTHROPIC_MIN_BUDGET",
    "BUDGET_THRESHOLDS",
    "EFFORT_BUDGETS",
    "Effort",
    "effort_for_budget",
]


def effort_for_budget(budget: int) -> Effort:
    """The effort whose budget is nearest ``budget``."""
    for limit, effort in BUDGET_THRESHOLDS:
        if budget <= limit:
            return effort
    return "high"
