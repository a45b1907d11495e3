"""Thinking suffixes: parsing, and the provider parameters they become."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asgi_llmguard.forward.thinking import (
    EFFORT_BUDGETS,
    MAX_BUDGET,
    ParsedModel,
    Thinking,
    apply_thinking,
    parse_model,
)

HIGH = Thinking("effort", effort="high")


@pytest.mark.parametrize(
    ("name", "base", "thinking"),
    [
        ("gpt-5", "gpt-5", None),
        ("gpt-5(high)", "gpt-5", HIGH),
        ("gpt-5(HIGH)", "gpt-5", HIGH),
        ("gpt-5(medium)", "gpt-5", Thinking("effort", effort="medium")),
        ("gpt-5(low)", "gpt-5", Thinking("effort", effort="low")),
        ("gpt-5(minimal)", "gpt-5", Thinking("effort", effort="minimal")),
        ("gpt-5(none)", "gpt-5", Thinking("none")),
        ("claude-opus-4-1(auto)", "claude-opus-4-1", Thinking("auto")),
        ("claude-sonnet-4-5(16384)", "claude-sonnet-4-5", Thinking("budget", budget=16384)),
        ("m(1)", "m", Thinking("budget", budget=1)),
        ("m(010)", "m", Thinking("budget", budget=10)),
        (f"m({MAX_BUDGET})", "m", Thinking("budget", budget=MAX_BUDGET)),
        ("my(model)x", "my(model)x", None),
        ("my(model)(high)", "my(model)", HIGH),
        ("a(b", "a(b", None),
        ("", "", None),
        ("ft:gpt-4o:org:x:123", "ft:gpt-4o:org:x:123", None),
    ],
)
def test_parse_valid(name: str, base: str, thinking: Thinking | None) -> None:
    parsed = parse_model(name)
    assert parsed == ParsedModel(base, thinking)


@pytest.mark.parametrize(
    "name",
    [
        "m(abc)",
        "m()",
        "m(-5)",
        "m(0)",
        "m(+5)",
        "m(1.5)",
        "m( high)",
        "m(high )",
        f"m({MAX_BUDGET + 1})",
        "m(" + "9" * 5000 + ")",
        "m(\u0661\u0662)",  # Arabic-Indic digits: not ASCII
        "m((high))",
        "m(high))",
        "(high)",
        ")",
        "m)",
    ],
)
def test_parse_invalid_raises_value_error(name: str) -> None:
    with pytest.raises(ValueError, match="Model name"):
        parse_model(name)


NAMES = st.text(max_size=60) | st.text(alphabet="ab()0129-highlowNEautx ", max_size=20)


@given(NAMES)
def test_parse_never_raises_other_errors_and_base_has_no_suffix(name: str) -> None:
    try:
        parsed = parse_model(name)
    except ValueError:
        return
    if parsed.thinking is None:
        assert parsed.base == name
        assert not name.endswith(")")
    else:
        assert parsed.base
        assert name.startswith(parsed.base + "(")
        assert ")" not in name[len(parsed.base) + 1 : -1]  # the suffix is wholly cut off
        assert parse_model(str(parsed)) == parsed


@given(
    st.text(min_size=1, max_size=30).filter(lambda s: not s.endswith(")")),
    st.sampled_from(["minimal", "low", "medium", "high", "none", "auto"])
    | st.integers(1, MAX_BUDGET).map(str),
)
def test_suffix_round_trips(base: str, argument: str) -> None:
    parsed = parse_model(f"{base}({argument})")
    assert parsed.base == base
    assert parsed.thinking is not None
    assert str(parsed) == f"{base}({argument})"


def test_selection_key_is_the_base() -> None:
    # Cooldowns and credential selection key on `base`: every suffix of a model shares one key.
    keys = {parse_model(n).base for n in ("gpt-5", "gpt-5(high)", "gpt-5(none)", "gpt-5(2048)")}
    assert keys == {"gpt-5"}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mode": "effort"},
        {"mode": "budget"},
        {"mode": "none", "effort": "high"},
        {"mode": "budget", "budget": 0},
        {"mode": "budget", "budget": MAX_BUDGET + 1},
    ],
)
def test_thinking_rejects_inconsistent_fields(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="Thinking"):
        Thinking(**kwargs)  # type: ignore[arg-type]


# --- apply_thinking ----------------------------------------------------------------------------


@pytest.mark.parametrize("api", ["openai", "azure"])
@pytest.mark.parametrize(
    ("suffix", "effort"),
    [
        ("(high)", "high"),
        ("(minimal)", "minimal"),
        ("(none)", "minimal"),
        ("(1)", "minimal"),
        ("(1024)", "minimal"),
        ("(1025)", "low"),
        ("(4096)", "low"),
        ("(8192)", "medium"),
        ("(16384)", "medium"),
        ("(16385)", "high"),
        ("(10000000)", "high"),
    ],
)
def test_openai_chat_reasoning_effort(api: str, suffix: str, effort: str) -> None:
    body = {"model": "gpt-5" + suffix, "messages": [], "reasoning_effort": "low"}
    out = apply_thinking(api, body, parse_model(body["model"]), operation="chat.completions")  # type: ignore[arg-type]
    assert out["model"] == "gpt-5"
    assert out["reasoning_effort"] == effort
    assert body["model"] == "gpt-5" + suffix  # the input is not modified


def test_openai_default_operation_is_chat_and_auto_removes_effort() -> None:
    body = {"model": "gpt-5(auto)", "reasoning_effort": "high"}
    out = apply_thinking("openai", body, parse_model(body["model"]))
    assert out == {"model": "gpt-5"}


def test_efforts_round_trip_through_budgets() -> None:
    for effort, budget in EFFORT_BUDGETS.items():
        assert Thinking("budget", budget=budget).openai_effort == effort


@pytest.mark.parametrize(
    ("suffix", "reasoning_in", "reasoning_out"),
    [
        ("(high)", None, {"effort": "high"}),
        ("(low)", {"summary": "auto", "effort": "high"}, {"summary": "auto", "effort": "low"}),
        ("(none)", None, {"effort": "minimal"}),
        ("(30000)", None, {"effort": "high"}),
        ("(auto)", {"summary": "auto", "effort": "high"}, {"summary": "auto"}),
        ("(auto)", {"effort": "high"}, None),
        ("(auto)", None, None),
    ],
)
def test_responses_reasoning(
    suffix: str, reasoning_in: dict[str, str] | None, reasoning_out: dict[str, str] | None
) -> None:
    body: dict[str, object] = {"model": "gpt-5" + suffix, "input": "hi"}
    if reasoning_in is not None:
        body["reasoning"] = reasoning_in
    out = apply_thinking("openai", body, parse_model("gpt-5" + suffix), operation="responses")
    assert out["model"] == "gpt-5"
    assert out.get("reasoning") == reasoning_out
    assert "reasoning_effort" not in out
    if reasoning_in is not None:
        assert body["reasoning"] == reasoning_in  # not modified in place


@pytest.mark.parametrize("operation", ["completions", "embeddings"])
def test_operations_without_reasoning_only_strip_the_suffix(operation: str) -> None:
    body = {"model": "gpt-5(high)", "prompt": "x"}
    out = apply_thinking("openai", body, parse_model(body["model"]), operation=operation)
    assert out == {"model": "gpt-5", "prompt": "x"}


def test_no_suffix_only_sets_model() -> None:
    body = {"model": "gpt-5", "reasoning_effort": "low"}
    assert apply_thinking("openai", body, parse_model("gpt-5")) == body


@pytest.mark.parametrize(
    ("suffix", "max_tokens", "thinking", "max_out"),
    [
        ("(16384)", 32000, {"type": "enabled", "budget_tokens": 16384}, 32000),
        ("(16384)", 1000, {"type": "enabled", "budget_tokens": 16384}, 17384),
        ("(16384)", 16384, {"type": "enabled", "budget_tokens": 16384}, 32768),
        ("(100)", 4000, {"type": "enabled", "budget_tokens": 1024}, 4000),
        ("(low)", 1024, {"type": "enabled", "budget_tokens": 2048}, 3072),
        ("(medium)", 64000, {"type": "enabled", "budget_tokens": 8192}, 64000),
        ("(high)", 64000, {"type": "enabled", "budget_tokens": 24576}, 64000),
        ("(minimal)", 64000, {"type": "enabled", "budget_tokens": 1024}, 64000),
        ("(none)", 1000, {"type": "disabled"}, 1000),
    ],
)
def test_anthropic_messages_thinking(
    suffix: str, max_tokens: int, thinking: dict[str, object], max_out: int
) -> None:
    body = {"model": "claude-sonnet-4-5" + suffix, "max_tokens": max_tokens, "messages": []}
    out = apply_thinking("anthropic", body, parse_model(body["model"]))  # type: ignore[arg-type]
    assert out["model"] == "claude-sonnet-4-5"
    assert out["thinking"] == thinking
    assert out["max_tokens"] == max_out
    assert out["thinking"].get("budget_tokens", 0) < out["max_tokens"] or suffix == "(none)"


def test_anthropic_auto_leaves_provider_default() -> None:
    body = {"model": "claude-x(auto)", "max_tokens": 10, "thinking": {"type": "enabled"}}
    out = apply_thinking("anthropic", body, parse_model(body["model"]), operation="messages")  # type: ignore[arg-type]
    assert out == {"model": "claude-x", "max_tokens": 10}


def test_anthropic_missing_max_tokens_is_left_missing() -> None:
    out = apply_thinking("anthropic", {"model": "c(high)"}, parse_model("c(high)"))
    assert out == {"model": "c", "thinking": {"type": "enabled", "budget_tokens": 24576}}


def test_anthropic_count_tokens_gets_thinking_but_no_max_tokens() -> None:
    body = {"model": "c(4096)", "max_tokens": 5}
    out = apply_thinking(
        "anthropic", body, parse_model("c(4096)"), operation="messages.count_tokens"
    )
    assert out == {
        "model": "c",
        "max_tokens": 5,
        "thinking": {"type": "enabled", "budget_tokens": 4096},
    }


def test_suffix_never_reaches_upstream() -> None:
    for api, operation in [
        ("openai", "chat.completions"),
        ("openai", "responses"),
        ("openai", "completions"),
        ("azure", "chat.completions"),
        ("anthropic", "messages"),
        ("anthropic", "models.list"),
    ]:
        for suffix in ("(high)", "(none)", "(auto)", "(5000)"):
            parsed = parse_model("model-a" + suffix)
            out = apply_thinking(api, {"model": "model-a" + suffix}, parsed, operation=operation)  # type: ignore[arg-type]
            assert out["model"] == "model-a"
