"""Hypothesis strategies for turns and answers that both Chat Completions and Messages express."""

from __future__ import annotations

import msgspec
from hypothesis import strategies as st

from asgi_llmguard.providers.translate.model import (
    Answer,
    Image,
    Message,
    RedactedThinking,
    StructuredOutput,
    Text,
    Thinking,
    Tool,
    ToolCall,
    ToolChoice,
    ToolResult,
    Turn,
)
from asgi_llmguard.tokens import TokenUsage

names = st.text("abcdefghijklmnopqrstuvwxyz_-0123456789", min_size=1, max_size=12)
ids = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789_", min_size=1, max_size=16)
texts = st.text(max_size=40)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(names, inner, max_size=3),
    max_leaves=8,
)
arguments = st.dictionaries(names, json_values, max_size=4).map(
    lambda d: msgspec.json.encode(d).decode()
)
images = st.one_of(
    st.builds(Image, url=st.sampled_from(["https://example.com/a.png", "https://x.test/b.jpg"])),
    st.builds(
        Image,
        data=st.text("ABCDEFabcdef0123456789+/", min_size=4, max_size=24),
        media_type=st.sampled_from(["image/png", "image/jpeg", "image/gif", "image/webp"]),
    ),
)
user_parts = st.lists(st.builds(Text, texts) | images, min_size=1, max_size=3)


@st.composite
def assistant_message(draw: st.DrawFn) -> Message:
    parts: list = [Text(t) for t in draw(st.lists(texts, max_size=2))]
    parts += draw(
        st.lists(st.builds(ToolCall, ids, names, arguments), max_size=3, unique_by=lambda c: c.id)
    )
    if not parts:
        parts = [Text(draw(texts))]
    return Message("assistant", tuple(parts))


@st.composite
def conversations(draw: st.DrawFn) -> tuple[Message, ...]:
    messages = [Message("user", tuple(draw(user_parts)))]
    for _ in range(draw(st.integers(0, 3))):
        assistant = draw(assistant_message())
        messages.append(assistant)
        calls = [p for p in assistant.parts if isinstance(p, ToolCall)]
        results = [
            ToolResult(c.id, tuple(Text(t) for t in draw(st.lists(texts, min_size=1, max_size=2))))
            for c in calls
        ]
        rest = draw(user_parts) if not results or draw(st.booleans()) else []
        messages.append(Message("user", (*results, *rest)))
    return tuple(messages)


tools_ = st.lists(
    st.builds(
        Tool,
        names,
        st.none() | texts,
        st.fixed_dictionaries(
            {
                "type": st.just("object"),
                "properties": st.dictionaries(names, st.just({"type": "string"}), max_size=2),
            }
        ),
    ),
    max_size=3,
    unique_by=lambda t: t.name,
)


@st.composite
def turns(draw: st.DrawFn) -> Turn:
    """A Chat Completions request the Messages codec can express in full."""
    messages = draw(conversations())
    tools = tuple(draw(tools_))
    last = next((m for m in reversed(messages) if m.role == "assistant"), None)
    tool_loop = last is not None and any(isinstance(p, ToolCall) for p in last.parts)
    effort = (
        None
        if tool_loop
        else draw(st.none() | st.sampled_from(["minimal", "low", "medium", "high"]))
    )
    choice = None
    parallel = None
    structured = None
    if tools:
        modes = ["auto", "none"] if effort else ["auto", "none", "required", "named"]
        mode = draw(st.none() | st.sampled_from(modes))
        if mode is not None:
            choice = ToolChoice(
                mode, draw(st.sampled_from([t.name for t in tools])) if mode == "named" else None
            )
        parallel = draw(st.none() | st.booleans())
    elif effort is None and draw(st.booleans()):
        structured = StructuredOutput(
            draw(names),
            {"type": "object", "properties": {"answer": {"type": "string"}}},
            draw(st.none() | st.just(False)),
            draw(st.none() | texts),
        )
    return Turn(
        model=draw(names),
        messages=messages,
        system=tuple(Text(t) for t in draw(st.lists(texts, max_size=2))),
        tools=tools,
        tool_choice=choice,
        parallel_tool_calls=parallel,
        structured_output=structured,
        stop=tuple(draw(st.lists(st.text(min_size=1, max_size=5), max_size=3))),
        max_output_tokens=draw(st.integers(30_000, 64_000)),
        temperature=None if effort else draw(st.none() | st.floats(0, 1)),
        top_p=draw(st.none() | st.floats(0.95 if effort else 0, 1)),
        reasoning_effort=effort,
        stream=draw(st.booleans()),
        user=draw(st.none() | ids),
    )


@st.composite
def usages(draw: st.DrawFn, *, anthropic: bool) -> TokenUsage:
    """Usage as the source reports it: OpenAI has reasoning tokens and no cache writes,
    Anthropic has cache writes and no reasoning tokens."""
    cached = draw(st.integers(0, 10_000))
    written = draw(st.integers(0, 10_000)) if anthropic else 0
    output = draw(st.integers(0, 10_000))
    return TokenUsage(
        input_tokens=cached + written + draw(st.integers(0, 10_000)),
        output_tokens=output,
        cached_input_tokens=cached,
        cache_creation_tokens=written,
        cache_creation_1h_tokens=draw(st.integers(0, written)) if anthropic else 0,
        reasoning_tokens=0 if anthropic else draw(st.integers(0, output)),
    )


@st.composite
def answers(draw: st.DrawFn, *, anthropic: bool) -> Answer:
    """An answer as the source format's upstream sends it."""
    parts: list = []
    if draw(st.booleans()):
        signature = (
            draw(st.text("abcdef0123456789", min_size=8, max_size=40)) if anthropic else None
        )
        parts.append(Thinking(draw(st.text(min_size=1, max_size=200)), signature))
    if anthropic and draw(st.booleans()):
        parts.append(
            RedactedThinking(draw(st.text("ABCDEF0123456789+/=", min_size=1, max_size=40)))
        )
    if draw(st.booleans()):
        parts.append(Text(draw(st.text(min_size=1, max_size=300))))
    calls = draw(
        st.lists(st.builds(ToolCall, ids, names, arguments), max_size=3, unique_by=lambda c: c.id)
    )
    parts += calls
    finish = "tool_calls" if calls else draw(st.sampled_from(["stop", "length", "content_filter"]))
    stop_sequence = None
    if anthropic and finish == "stop" and draw(st.booleans()):
        stop_sequence = draw(st.text(min_size=1, max_size=4))
    return Answer(
        id=draw(ids),
        model=draw(names),
        parts=tuple(parts),
        finish_reason=finish,
        stop_sequence=stop_sequence,
        usage=draw(usages(anthropic=anthropic)),
    )
