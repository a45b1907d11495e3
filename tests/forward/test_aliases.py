"""Model aliases: rotation, fallbacks, suffixes carried over, response model rewriting."""

from __future__ import annotations

from collections import Counter

import orjson
import pytest

from asgi_llmguard.errors import ConfigurationError
from asgi_llmguard.forward.aliases import AliasTable


def table(**kwargs: list[str]) -> AliasTable:
    return AliasTable(kwargs)


def test_rotation_is_even_and_fallbacks_follow_pool_order() -> None:
    aliases = table(fast=["a", "b", "c"])
    orders = [aliases.next("fast") for _ in range(6)]
    assert orders[:3] == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"]]
    assert orders[3:] == orders[:3]
    firsts = Counter(aliases.next("fast")[0] for _ in range(300))
    assert firsts == {"a": 100, "b": 100, "c": 100}


def test_repeated_members_are_weights_not_extra_fallbacks() -> None:
    aliases = table(w=["a", "a", "b"])
    orders = [aliases.next("w") for _ in range(3)]
    assert orders == [["a", "b"], ["a", "b"], ["b", "a"]]
    firsts = Counter(aliases.next("w")[0] for _ in range(300))
    assert firsts == {"a": 200, "b": 100}


def test_rotation_is_per_alias() -> None:
    aliases = table(x=["a", "b"], y=["c", "d"])
    assert aliases.next("x")[0] == "a"
    assert aliases.next("y")[0] == "c"
    assert aliases.next("x")[0] == "b"
    assert aliases.next("y")[0] == "d"


def test_peek_never_advances() -> None:
    peeked, plain = table(p=["a", "b", "c"]), table(p=["a", "b", "c"])
    peeked.next("p")
    plain.next("p")
    for _ in range(1000):
        assert peeked.peek("p") == "b"
    assert [peeked.next("p") for _ in range(5)] == [plain.next("p") for _ in range(5)]
    assert peeked.peek("p(high)") == plain.peek("p") + "(high)"


def test_resolve() -> None:
    aliases = table(fast=["a", "b"])
    assert aliases.resolve("gpt-5") == ["gpt-5"]
    assert aliases.resolve("gpt-5(high)") == ["gpt-5(high)"]
    assert aliases.resolve("fast") == ["a", "b"]
    assert aliases.resolve("fast(low)") == ["b(low)", "a(low)"]  # shares the rotation
    with pytest.raises(ValueError, match="thinking suffix"):
        aliases.resolve("fast(bogus)")
    with pytest.raises(KeyError):
        aliases.next("gpt-5")
    with pytest.raises(KeyError):
        aliases.peek("gpt-5")


def test_suffix_carried_over_and_overrides_member_suffix() -> None:
    aliases = table(deep=["claude-opus(24576)", "gpt-5"])
    assert aliases.next("deep(high)") == ["claude-opus(high)", "gpt-5(high)"]
    assert aliases.next("deep") == ["gpt-5", "claude-opus(24576)"]
    assert aliases.next("deep(2048)") == ["claude-opus(2048)", "gpt-5(2048)"]


def test_membership() -> None:
    aliases = table(fast=["a"])
    assert "fast" in aliases
    assert "fast(high)" in aliases
    assert "fast(bad)" not in aliases
    assert "a" not in aliases
    assert 3 not in aliases
    assert len(aliases) == 1


def test_state_is_bounded_by_configuration() -> None:
    aliases = table(fast=["a", "b"])
    for i in range(1000):
        aliases.resolve(f"model-{i}")
        aliases.next("fast")
    assert aliases._position == {"fast": 0}


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"x": []}, "no members"),
        ({"x": "gpt-5"}, "not a string"),
        ({"": ["a"]}, "non-empty"),
        ({"x(high)": ["a"]}, "thinking suffix"),
        ({"x": ["a(bogus)"]}, "unknown thinking suffix"),
        ({"x": ["y"], "y": ["a"]}, "another alias"),
        ({"x": ["x"]}, "another alias"),
        ({"x": ["(high)"]}, "no model"),
    ],
)
def test_configuration_errors(config: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        AliasTable(config)  # type: ignore[arg-type]


# --- response model rewrite -------------------------------------------------------------------


def test_rewrite_json_top_level_model_only() -> None:
    aliases = table(fast=["gpt-5-mini"])
    body = orjson.dumps(
        {
            "id": "x",
            "model": "gpt-5-mini-2025-08-07",
            "choices": [{"message": {"content": 'say "model":"no"', "model": "inner"}}],
            "metadata": {"model": "nested"},
        }
    )
    out = orjson.loads(aliases.rewrite_model(body, "fast(high)"))
    assert out["model"] == "fast(high)"
    assert out["choices"][0]["message"] == {"content": 'say "model":"no"', "model": "inner"}
    assert out["metadata"] == {"model": "nested"}


def test_rewrite_handles_whitespace_escapes_and_unicode() -> None:
    aliases = table(fast=["a"])
    body = b'{\n  "content": "\\"model\\": \\"x\\"",\n  "model" :  "gpt-\\"5\\"\xc3\xa9"\n}'
    out = orjson.loads(aliases.rewrite_model(body, 'f\u00e9"'))
    assert out == {"content": '"model": "x"', "model": 'f\u00e9"'}


def test_rewrite_sse_lines() -> None:
    aliases = table(fast=["a"])
    stream = (
        b'data: {"id":"1","model":"gpt-5-mini","choices":[]}\n\n'
        b'data:{"id":"2","model":"gpt-5-mini"}\n\n'
        b"data: [DONE]\n\n"
    )
    out = aliases.rewrite_model(stream, "fast")
    assert out == (
        b'data: {"id":"1","model":"fast","choices":[]}\n\n'
        b'data:{"id":"2","model":"fast"}\n\n'
        b"data: [DONE]\n\n"
    )


def test_rewrite_anthropic_and_responses_stream_wrappers() -> None:
    aliases = table(fast=["a"])
    stream = (
        b"event: message_start\n"
        b'data: {"type":"message_start","message":{"id":"m","model":"claude-x","content":[]}}\n\n'
        b"event: response.created\n"
        b'data: {"type":"response.created","response":{"model":"gpt-5","tools":[{"model":"k"}]}}\n'
    )
    out = aliases.rewrite_model(stream, "fast")
    lines = [orjson.loads(line[5:]) for line in out.split(b"\n") if line.startswith(b"data:")]
    assert lines[0]["message"]["model"] == "fast"
    assert lines[1]["response"]["model"] == "fast"
    assert lines[1]["response"]["tools"] == [{"model": "k"}]
    assert b"event: message_start\n" in out


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b'{"model": 5}',
        b'{"model": null, "x": "model"}',
        b'{"model": "unterminated',
        b"}}]]{{[[",
        b'["model", "x"]',
        b'data: {"model":',
        b": keep-alive\n\n",
    ],
)
def test_rewrite_malformed_input_never_raises(body: bytes) -> None:
    out = table(fast=["a"]).rewrite_model(body, "fast")
    assert isinstance(out, bytes)
    if b'"model": "' not in body and b'"model":"' not in body:
        assert out == body


def test_rewrite_can_be_turned_off() -> None:
    aliases = AliasTable({"fast": ["a"]}, rewrite_response_model=False)
    body = b'{"model":"a"}'
    assert aliases.rewrite_model(body, "fast") is body
