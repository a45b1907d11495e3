"""Thinking suffixes on model names: ``claude-sonnet-4-5(16384)``, ``gpt-5(high)``, ``x(none)``.

Many clients (IDE plugins, chat front-ends, CLI tools) can choose a model name but cannot add
provider-specific body fields. A suffix on the name lets them ask for a reasoning effort or a
thinking budget anyway; the gateway strips it and sets the provider's own parameters instead, so
the suffix never reaches an upstream as part of a model name.

Grammar (only the very end of the name is looked at)::

    name     = base [ "(" argument ")" ]
    argument = "minimal" | "low" | "medium" | "high"   -> an effort
             | "none"                                  -> thinking off
             | "auto"                                  -> the provider's default
             | 1*8 ASCII digits, 1 .. 10_000_000       -> a token budget

Words are matched case-insensitively. A name that does not end with ``)`` is a plain name, even
when it contains parentheses elsewhere (``my(model)x``). A name that *does* end with ``)`` but
whose last group is not a valid argument (``x(abc)``, ``x()``, ``x(-5)``, ``x(0)``, ``x((high))``,
``(high)`` with no base) is rejected with ``ValueError``: a typo such as ``gpt-5(hgih)`` should be
a clear 400 from the gateway, not a silent "model not found" from the upstream or, worse, a
request that runs without the reasoning the caller asked for.

The grammar and the tables every provider shares live here; each provider module sets its own
request's parameters from a parsed suffix (`Provider.apply_thinking`). Pure functions over strings:
no I/O, no ASGI.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, cast, get_args

#: A reasoning effort as OpenAI names them.
Effort = Literal["minimal", "low", "medium", "high"]
#: What the suffix asks for.
Mode = Literal["effort", "budget", "none", "auto"]

#: The largest budget accepted in a suffix. No model thinks this long; the bound keeps absurd
#: numbers (and huge integers parsed from 4,000-digit strings) out of request bodies.
MAX_BUDGET = 10_000_000

#: Anthropic refuses ``budget_tokens`` below this value.
ANTHROPIC_MIN_BUDGET = 1024

#: Effort -> a token budget, for every provider that takes one (Anthropic's ``budget_tokens``,
#: Gemini 2.5's ``thinkingBudget``), so a suffix means the same everywhere. Roughly a factor of
#: 3-4 between steps, matching the spread of OpenAI's efforts; ``high`` stays under 32k so that,
#: with the answer room added to ``max_tokens``, non-streaming requests remain under Anthropic's
#: long-request threshold (and within Gemini 2.5 Flash's range, 0-24576).
EFFORT_BUDGETS: Mapping[Effort, int] = {
    "minimal": ANTHROPIC_MIN_BUDGET,
    "low": 2048,
    "medium": 8192,
    "high": 24576,
}

#: Budget -> OpenAI effort: the largest budget each effort stands for (inclusive). The thresholds
#: sit between the :data:`EFFORT_BUDGETS` values, so a budget maps to the effort whose Anthropic
#: budget is nearest and an effort survives the round trip effort -> budget -> effort.
BUDGET_THRESHOLDS: tuple[tuple[int, Effort], ...] = (
    (1024, "minimal"),
    (4096, "low"),
    (16384, "medium"),
)

_EFFORTS: frozenset[str] = frozenset(get_args(Effort))
_MAX_DIGITS = len(str(MAX_BUDGET))


@dataclass(frozen=True, slots=True)
class Thinking:
    """A parsed suffix; ``effort`` is set in mode ``effort`` only, ``budget`` in ``budget`` only."""

    mode: Mode
    effort: Effort | None = None
    budget: int | None = None

    def __post_init__(self) -> None:
        # Invalid combinations would silently mean something else downstream: refuse them here.
        if (self.mode == "effort") != (self.effort is not None):
            raise ValueError("Thinking: effort is required for, and only for, mode 'effort'")
        if (self.mode == "budget") != (self.budget is not None):
            raise ValueError("Thinking: budget is required for, and only for, mode 'budget'")
        if self.budget is not None and not 1 <= self.budget <= MAX_BUDGET:
            raise ValueError(f"Thinking: budget must be between 1 and {MAX_BUDGET}")

    @property
    def suffix(self) -> str:
        """The suffix as written on a model name, e.g. ``(high)`` or ``(16384)``."""
        if self.mode == "effort":
            return f"({self.effort})"
        if self.mode == "budget":
            return f"({self.budget})"
        return f"({self.mode})"

    @property
    def openai_effort(self) -> Effort | None:
        """The OpenAI effort this stands for; ``None`` for ``auto`` (the provider's default).

        ``none`` maps to ``"minimal"``, the lowest effort the GPT-5 family accepts: removing the
        field instead would give the provider default (``medium``), the opposite of what the
        caller asked for. A budget maps through :data:`BUDGET_THRESHOLDS`.
        """
        if self.mode == "effort":
            return self.effort
        if self.mode == "none":
            return "minimal"
        if self.mode == "budget":
            assert self.budget is not None
            for limit, effort in BUDGET_THRESHOLDS:
                if self.budget <= limit:
                    return effort
            return "high"
        return None


@dataclass(frozen=True, slots=True)
class ParsedModel:
    """A model name split into the upstream name and the thinking its suffix asked for."""

    base: str
    thinking: Thinking | None = None

    def __str__(self) -> str:
        return self.base + (self.thinking.suffix if self.thinking else "")


def parse_model(name: str) -> ParsedModel:
    """Split ``name`` into its base and its thinking suffix.

    Raises ``ValueError`` (and nothing else) when the name ends with a parenthesised group that is
    not a valid suffix; the message is safe to show to the client. Names without a trailing ``)``
    are returned unchanged with ``thinking=None``. Use ``base`` for everything that identifies the
    upstream model: cooldown keys, credential selection, pricing, allow-lists.
    """
    if not name.endswith(")"):
        return ParsedModel(name)
    shown = name if len(name) <= 80 else name[:80] + "..."
    opening = name.rfind("(")
    if opening <= 0:
        raise ValueError(f"Model name {shown!r} ends with ')' but has no model before the '('.")
    base, argument = name[:opening], name[opening + 1 : -1]
    if ")" in argument:
        raise ValueError(f"Model name {shown!r} has nested or unbalanced parentheses.")
    word = argument.lower()
    thinking: Thinking
    if word in _EFFORTS:
        thinking = Thinking("effort", effort=cast(Effort, word))
    elif word in ("none", "auto"):
        thinking = Thinking(cast(Mode, word))
    elif argument.isascii() and argument.isdigit() and len(argument.lstrip("0")) <= _MAX_DIGITS:
        budget = int(argument)
        if not 1 <= budget <= MAX_BUDGET:
            raise ValueError(
                f"Model name {shown!r}: a thinking budget must be between 1 and {MAX_BUDGET}."
            )
        thinking = Thinking("budget", budget=budget)
    else:
        raise ValueError(
            f"Model name {shown!r} has an unknown thinking suffix; use (minimal), (low), "
            f"(medium), (high), (none), (auto) or a token budget such as (16384)."
        )
    return ParsedModel(base, thinking)
