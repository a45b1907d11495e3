"""Anthropic Messages <-> the internal model: requests, answers and SSE streams.

Structured output has no field of its own here: the request writer expresses it as a forced tool
whose input schema is the schema, and the answer readers and stream decoder, told that tool's
name (``structured_tool``), turn its input back into the answer's text.
"""

from __future__ import annotations

from typing import Any

import msgspec

from asgi_llmguard.providers.sse import EventSplitter
from asgi_llmguard.providers.translate._common import (
    as_dict,
    as_int,
    as_list,
    as_str,
    count,
    data_uri,
    opt_dict,
    opt_str,
    sse_fields,
)
from asgi_llmguard.providers.translate._common import (
    number as _number,
)
from asgi_llmguard.providers.translate.effort import ANTHROPIC_MIN_BUDGET, EFFORT_BUDGETS
from asgi_llmguard.providers.translate.model import (
    Answer,
    Delta,
    Finish,
    FinishReason,
    Image,
    MalformedInput,
    Message,
    MessageStart,
    MessageStop,
    Part,
    PartStop,
    RedactedThinking,
    RedactedThinkingPart,
    Refusal,
    SignatureDelta,
    StreamError,
    StructuredOutput,
    Text,
    TextDelta,
    Thinking,
    ThinkingDelta,
    Tool,
    ToolArgumentsDelta,
    ToolCall,
    ToolCallStart,
    ToolChoice,
    ToolResult,
    Turn,
    Untranslatable,
    UsageDelta,
    _Refusals,
)
from asgi_llmguard.tokens import TokenUsage

_decode = msgspec.json.decode
_encode = msgspec.json.encode

#: ``max_tokens`` when the source request sets no output limit (Anthropic requires one).
DEFAULT_MAX_TOKENS = 4096

STOP_IN: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
    "pause_turn": "pause",
}
STOP_OUT: dict[str, str] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
    "pause": "pause_turn",
    "other": "end_turn",
}
#: The service tiers Messages reports in ``usage.service_tier``.
_TIERS = frozenset({"standard", "priority", "batch"})
_TOOL_CHOICE_OUT = {"auto": "auto", "none": "none", "required": "any", "named": "tool"}
_TOOL_CHOICE_IN = {"auto": "auto", "none": "none", "any": "required", "tool": "named"}


def _stop_reason(reason: str | None, stop_sequence: str | None) -> str | None:
    if reason is None:
        return None
    if reason == "stop" and stop_sequence is not None:
        return "stop_sequence"
    return STOP_OUT[reason]


# -- requests ---------------------------------------------------------------------------------


def _check_block(block: dict[str, Any], unsupported: list[str]) -> None:
    if block.get("cache_control") is not None:
        unsupported.append("cache_control")
    if block.get("citations"):
        unsupported.append("citations")


def _image_in(block: dict[str, Any], unsupported: list[str]) -> Image | None:
    source = as_dict(block.get("source"), "image.source")
    kind = source.get("type")
    if kind == "base64":
        return Image(
            data=as_str(source.get("data"), "image.source.data"),
            media_type=as_str(source.get("media_type"), "image.source.media_type"),
        )
    if kind == "url":
        return Image(url=as_str(source.get("url"), "image.source.url"))
    unsupported.append(f"image.source.{kind}")
    return None


def _blocks_in(content: Any, role: str, unsupported: list[str]) -> tuple[Part, ...]:
    if isinstance(content, str):
        return (Text(content),)
    parts: list[Part] = []
    for block in as_list(content, "messages[].content"):
        block = as_dict(block, "messages[].content[]")
        _check_block(block, unsupported)
        kind = block.get("type")
        if kind == "text":
            parts.append(Text(as_str(block.get("text"), "text")))
        elif kind == "image":
            image = _image_in(block, unsupported)
            if image is not None:
                parts.append(image)
        elif kind == "tool_use":
            parts.append(
                ToolCall(
                    as_str(block.get("id"), "tool_use.id"),
                    as_str(block.get("name"), "tool_use.name"),
                    _encode(as_dict(block.get("input", {}), "tool_use.input")).decode(),
                )
            )
        elif kind == "tool_result":
            result = block.get("content")
            inner = () if result is None else _blocks_in(result, role, unsupported)
            items = []
            for part in inner:
                if isinstance(part, Text | Image):
                    items.append(part)
                else:
                    unsupported.append("tool_result.content")
            parts.append(
                ToolResult(
                    as_str(block.get("tool_use_id"), "tool_result.tool_use_id"),
                    tuple(items),
                    bool(block.get("is_error", False)),
                )
            )
        elif kind == "thinking":
            parts.append(
                Thinking(as_str(block.get("thinking"), "thinking"), block.get("signature") or None)
            )
        elif kind == "redacted_thinking":
            parts.append(RedactedThinking(as_str(block.get("data"), "redacted_thinking.data")))
        else:
            unsupported.append(f"content.{kind}")
    return tuple(parts)


def read_request(body: bytes | dict[str, Any], *, structured_tool: str | None = None) -> Turn:
    """A Messages request body as a :class:`Turn`.

    ``structured_tool``: the name this codec's writer gave the forced tool standing for a
    structured output; a request forcing that tool is read back as the structured output.
    """
    req = as_dict(_decode(body) if isinstance(body, bytes | bytearray) else body, "body")
    unsupported: list[str] = []
    system: tuple[Text, ...] = ()
    raw_system = req.get("system")
    if isinstance(raw_system, str):
        system = (Text(raw_system),)
    elif raw_system is not None:
        texts = []
        for block in as_list(raw_system, "system"):
            block = as_dict(block, "system[]")
            _check_block(block, unsupported)
            if block.get("type") != "text":
                raise MalformedInput("system blocks must be text")
            texts.append(Text(as_str(block.get("text"), "system[].text")))
        system = tuple(texts)
    messages = []
    for raw in as_list(req.get("messages"), "messages"):
        raw = as_dict(raw, "messages[]")
        role = raw.get("role")
        if role not in ("user", "assistant"):
            raise MalformedInput(f"message role {role!r} is not user or assistant")
        messages.append(Message(role, _blocks_in(raw.get("content"), role, unsupported)))

    tools: list[Tool] = []
    for raw in as_list(req.get("tools") or [], "tools"):
        raw = as_dict(raw, "tools[]")
        _check_block(raw, unsupported)
        if raw.get("type", "custom") != "custom":
            unsupported.append(f"tools.{raw.get('type')}")
            continue
        tools.append(
            Tool(
                as_str(raw.get("name"), "tools[].name"),
                raw.get("description"),
                as_dict(raw.get("input_schema", {}), "tools[].input_schema"),
                raw.get("strict"),
            )
        )
    tool_choice = None
    parallel = None
    choice = req.get("tool_choice")
    if choice is not None:
        choice = as_dict(choice, "tool_choice")
        mode = _TOOL_CHOICE_IN.get(choice.get("type"))  # type: ignore[arg-type]
        if mode is None:
            raise MalformedInput(f"tool_choice type {choice.get('type')!r} is unknown")
        tool_choice = ToolChoice(mode, choice.get("name"))  # type: ignore[arg-type]
        if choice.get("disable_parallel_tool_use"):
            parallel = False
    structured = None
    if (
        structured_tool is not None
        and tool_choice is not None
        and tool_choice.mode == "named"
        and tool_choice.name == structured_tool
    ):
        for tool in tools:
            if tool.name == structured_tool:
                structured = StructuredOutput(tool.name, tool.parameters, None, tool.description)
                tools.remove(tool)
                tool_choice = None
                break

    budget = None
    thinking = req.get("thinking")
    if thinking is not None:
        kind = as_dict(thinking, "thinking").get("type")
        if kind == "enabled":
            budget = as_int(thinking.get("budget_tokens"), "thinking.budget_tokens")
        elif kind != "disabled":
            unsupported.append(f"thinking.{kind}")
    user = None
    metadata = req.get("metadata")
    if metadata is not None:
        for key, value in as_dict(metadata, "metadata").items():
            if key == "user_id":
                user = value
            elif value is not None:
                unsupported.append(f"metadata.{key}")
    handled = {
        "model", "max_tokens", "system", "messages", "tools", "tool_choice", "thinking",
        "stop_sequences", "temperature", "top_p", "stream", "metadata",
    }  # fmt: skip
    for key, value in req.items():
        if key not in handled and value is not None:
            unsupported.append(key)
    max_tokens = req.get("max_tokens")
    return Turn(
        model=as_str(req.get("model"), "model"),
        messages=tuple(messages),
        system=system,
        tools=tuple(tools),
        tool_choice=tool_choice,
        parallel_tool_calls=parallel,
        structured_output=structured,
        stop=tuple(as_list(req.get("stop_sequences") or [], "stop_sequences")),
        max_output_tokens=None if max_tokens is None else as_int(max_tokens, "max_tokens"),
        temperature=_number(req, "temperature"),
        top_p=_number(req, "top_p"),
        thinking_budget=budget,
        stream=bool(req.get("stream")),
        user=user,
        unsupported=tuple(dict.fromkeys(unsupported)),
    )


def _image_out(image: Image) -> dict[str, Any]:
    if image.url is not None:
        inline = data_uri(image.url)
        if inline is None:
            return {"type": "image", "source": {"type": "url", "url": image.url}}
        media_type, data = inline
    else:
        media_type, data = image.media_type or "", image.data or ""
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}


def _tool_input(arguments: str, field: str) -> Any:
    try:
        value = _decode(arguments) if arguments else {}
    except msgspec.DecodeError:
        value = None
    if not isinstance(value, dict):
        raise Untranslatable(field, "tool call arguments are not a JSON object")
    return value


def _content_out(blocks: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    # Messages rejects empty text blocks; beside other blocks they say nothing, so they go.
    if len(blocks) > 1:
        kept = [b for b in blocks if b["type"] != "text" or b["text"]]
        blocks = kept or blocks[:1]
    if len(blocks) == 1 and blocks[0]["type"] == "text":
        text: str = blocks[0]["text"]
        return text
    return blocks


def _unsigned_tool_loop(messages: tuple[Message, ...]) -> bool:
    """Whether the last assistant message calls tools without signed thinking before them,
    which Messages refuses when thinking is on."""
    for message in reversed(messages):
        if message.role == "assistant":
            parts = message.parts
            calls = any(isinstance(p, ToolCall) for p in parts)
            signed = any(
                isinstance(p, RedactedThinking) or (isinstance(p, Thinking) and p.signature)
                for p in parts
            )
            return calls and not signed
    return False


def write_request(
    turn: Turn,
    *,
    drop: frozenset[str] | set[str] = frozenset(),
    default_max_tokens: int = DEFAULT_MAX_TOKENS,
) -> tuple[dict[str, Any], list[str]]:
    """``turn`` as a Messages request body, and the fields dropped (all in ``drop``).

    ``default_max_tokens`` is the answer room when ``turn`` sets no output limit (Anthropic
    requires ``max_tokens``); thinking, when asked for, is added to it. Raises
    :class:`Untranslatable` for the first field Messages cannot express and ``drop`` does not
    name.
    """
    refusals = _Refusals(drop)
    for field in turn.unsupported:
        refusals.refuse(field, "the translation layer cannot carry this field")
    messages: list[dict[str, Any]] = []
    for message in turn.messages:
        if message.role == "system":
            refusals.refuse(
                "messages.system", "Messages takes a system prompt only before the conversation"
            )
            continue
        blocks: list[dict[str, Any]] = []
        for part in message.parts:
            if isinstance(part, Text):
                blocks.append({"type": "text", "text": part.text})
            elif isinstance(part, ToolCall):
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": part.id,
                        "name": part.name,
                        "input": _tool_input(part.arguments, "messages.tool_calls.arguments"),
                    }
                )
            elif isinstance(part, ToolResult):
                result: dict[str, Any] = {"type": "tool_result", "tool_use_id": part.call_id}
                inner = [
                    {"type": "text", "text": c.text} if isinstance(c, Text) else _image_out(c)
                    for c in part.content
                ]
                if inner:
                    result["content"] = _content_out(inner)
                if part.is_error:
                    result["is_error"] = True
                blocks.append(result)
            elif isinstance(part, Image):
                blocks.append(_image_out(part))
            elif isinstance(part, Thinking):
                if part.signature is None:
                    refusals.refuse("messages.thinking", "Messages takes back only signed thinking")
                    continue
                blocks.append(
                    {"type": "thinking", "thinking": part.text, "signature": part.signature}
                )
            elif isinstance(part, RedactedThinking):
                blocks.append({"type": "redacted_thinking", "data": part.data})
            else:
                refusals.refuse("messages.refusal", "Messages has no refusal part")
        messages.append({"role": message.role, "content": _content_out(blocks)})

    budget = turn.thinking_budget
    if turn.reasoning_effort is not None:
        if turn.reasoning_effort == "none":
            budget = None
        elif turn.reasoning_effort in EFFORT_BUDGETS:
            budget = EFFORT_BUDGETS[turn.reasoning_effort]  # type: ignore[index]  # checked
        else:
            refusals.refuse("reasoning_effort", f"{turn.reasoning_effort!r} has no budget")
    if budget is not None and _unsigned_tool_loop(turn.messages):
        refusals.refuse(
            "reasoning_effort",
            "with thinking, Messages needs the signed thinking of the last tool-calling turn",
        )
        budget = None
    if turn.max_output_tokens is None:
        max_tokens = default_max_tokens + (budget or 0)
    else:
        max_tokens = turn.max_output_tokens
        if budget is not None and budget >= max_tokens:
            # The caller's own limit counts thinking too: think within it.
            budget = max_tokens - 1
            if budget < ANTHROPIC_MIN_BUDGET:
                refusals.refuse(
                    "reasoning_effort",
                    f"max tokens {max_tokens} leave no room for the minimum thinking budget",
                )
                budget = None

    body: dict[str, Any] = {"model": turn.model, "max_tokens": max_tokens}
    if turn.system:
        body["system"] = _content_out([{"type": "text", "text": t.text} for t in turn.system])
    body["messages"] = messages

    tools: list[dict[str, Any]] = []
    for tool in turn.tools:
        spec: dict[str, Any] = {"name": tool.name}
        if tool.description is not None:
            spec["description"] = tool.description
        spec["input_schema"] = tool.parameters
        if tool.strict:
            refusals.refuse("tools.strict", "Messages tools do not enforce their schema strictly")
        tools.append(spec)
    choice: dict[str, Any] | None = None
    if turn.tool_choice is not None and turn.tools:
        choice = {"type": _TOOL_CHOICE_OUT[turn.tool_choice.mode]}
        if turn.tool_choice.mode == "named":
            choice["name"] = turn.tool_choice.name
        if budget is not None and turn.tool_choice.mode in ("required", "named"):
            refusals.refuse("tool_choice", "with thinking, Messages allows only auto or none")
            choice = None
    if turn.parallel_tool_calls is False and turn.tools:
        if choice is None:
            choice = {"type": "auto"}
        if choice["type"] != "none":
            choice["disable_parallel_tool_use"] = True

    so = turn.structured_output
    if so is not None:
        if turn.tools:
            refusals.refuse(
                "response_format", "Messages expresses it as a forced tool, so not with tools"
            )
        elif budget is not None:
            refusals.refuse(
                "response_format", "Messages expresses it as a forced tool, so not with thinking"
            )
        else:
            if so.strict:
                refusals.refuse(
                    "response_format.json_schema.strict",
                    "a forced tool follows the schema without a strict guarantee",
                )
            spec = {"name": so.name}
            if so.description is not None:
                spec["description"] = so.description
            spec["input_schema"] = so.schema
            tools.append(spec)
            choice = {"type": "tool", "name": so.name}
    if tools:
        body["tools"] = tools
    if choice is not None:
        body["tool_choice"] = choice
    if budget is not None:
        body["thinking"] = {"type": "enabled", "budget_tokens": budget}
    if turn.stop:
        body["stop_sequences"] = list(turn.stop)
    if turn.temperature is not None:
        if turn.temperature > 1:
            refusals.refuse("temperature", "Messages takes temperatures from 0 to 1")
        elif budget is not None:
            refusals.refuse("temperature", "Messages takes no temperature with thinking")
        else:
            body["temperature"] = turn.temperature
    if turn.top_p is not None:
        if budget is not None and turn.top_p < 0.95:
            refusals.refuse("top_p", "Messages takes top_p below 0.95 only without thinking")
        else:
            body["top_p"] = turn.top_p
    if turn.stream:
        body["stream"] = True
    if turn.user is not None:
        body["metadata"] = {"user_id": turn.user}
    return body, refusals.dropped


# -- answers ----------------------------------------------------------------------------------


def usage_in(raw: dict[str, Any]) -> TokenUsage:
    """Anthropic's usage as a :class:`TokenUsage`: its ``input_tokens`` excludes cache reads and
    writes, the gateway's includes them."""
    read = count(raw, "cache_read_input_tokens")
    written = count(raw, "cache_creation_input_tokens")
    detail = opt_dict(raw.get("cache_creation"), "usage.cache_creation")
    tier = raw.get("service_tier")
    return TokenUsage(
        input_tokens=count(raw, "input_tokens") + read + written,
        output_tokens=count(raw, "output_tokens"),
        cached_input_tokens=read,
        cache_creation_tokens=written,
        cache_creation_1h_tokens=min(count(detail, "ephemeral_1h_input_tokens"), written),
        service_tier=tier if isinstance(tier, str) else None,
    )


def usage_out(usage: TokenUsage) -> dict[str, Any]:
    out: dict[str, Any] = {
        "input_tokens": max(
            0, usage.input_tokens - usage.cached_input_tokens - usage.cache_creation_tokens
        ),
        "output_tokens": usage.output_tokens,
        "cache_read_input_tokens": usage.cached_input_tokens,
        "cache_creation_input_tokens": usage.cache_creation_tokens,
    }
    if usage.cache_creation_tokens:
        out["cache_creation"] = {
            "ephemeral_5m_input_tokens": usage.cache_creation_tokens
            - usage.cache_creation_1h_tokens,
            "ephemeral_1h_input_tokens": usage.cache_creation_1h_tokens,
        }
    if usage.service_tier in _TIERS:  # another provider's tier names mean nothing here
        out["service_tier"] = usage.service_tier
    return out


def read_answer(body: bytes | dict[str, Any], *, structured_tool: str | None = None) -> Answer:
    """A Messages answer as an :class:`Answer`; with ``structured_tool``, that tool's input is
    the answer's text."""
    raw = as_dict(_decode(body) if isinstance(body, bytes | bytearray) else body, "body")
    parts: list[Part] = []
    structured = False
    for block in as_list(raw.get("content"), "content"):
        block = as_dict(block, "content[]")
        kind = block.get("type")
        if kind == "text":
            parts.append(Text(as_str(block.get("text"), "text")))
        elif kind == "tool_use":
            name = as_str(block.get("name"), "tool_use.name")
            arguments = _encode(as_dict(block.get("input", {}), "tool_use.input")).decode()
            if name == structured_tool:
                structured = True
                parts.append(Text(arguments))
            else:
                parts.append(ToolCall(as_str(block.get("id"), "tool_use.id"), name, arguments))
        elif kind == "thinking":
            text = as_str(block.get("thinking"), "thinking.thinking")
            parts.append(Thinking(text, opt_str(block.get("signature"), "signature") or None))
        elif kind == "redacted_thinking":
            parts.append(RedactedThinking(as_str(block.get("data"), "redacted_thinking.data")))
        else:
            raise Untranslatable(f"content.{kind}", "the translation layer has no such part")
    stop = opt_str(raw.get("stop_reason"), "stop_reason")
    finish: FinishReason | None = None if stop is None else STOP_IN.get(stop, "other")
    if structured and finish == "tool_calls":
        finish = "stop"
    usage = raw.get("usage")
    return Answer(
        id=opt_str(raw.get("id"), "id") or "",
        model=opt_str(raw.get("model"), "model") or "",
        parts=tuple(parts),
        finish_reason=finish,
        stop_sequence=opt_str(raw.get("stop_sequence"), "stop_sequence"),
        usage=None if usage is None else usage_in(as_dict(usage, "usage")),
    )


def write_answer(answer: Answer) -> bytes:
    """``answer`` as a Messages answer body. A refusal is written as text."""
    content: list[dict[str, Any]] = []
    for part in answer.parts:
        if isinstance(part, Text | Refusal):
            content.append({"type": "text", "text": part.text})
        elif isinstance(part, ToolCall):
            content.append(
                {
                    "type": "tool_use",
                    "id": part.id,
                    "name": part.name,
                    "input": _tool_input(part.arguments, "tool_calls.arguments"),
                }
            )
        elif isinstance(part, Thinking):
            content.append(
                {"type": "thinking", "thinking": part.text, "signature": part.signature or ""}
            )
        elif isinstance(part, RedactedThinking):
            content.append({"type": "redacted_thinking", "data": part.data})
        else:
            raise Untranslatable(f"content.{type(part).__name__}", "not an answer part")
    body = {
        "id": answer.id,
        "type": "message",
        "role": "assistant",
        "model": answer.model,
        "content": content,
        "stop_reason": _stop_reason(answer.finish_reason, answer.stop_sequence),
        "stop_sequence": answer.stop_sequence,
        "usage": usage_out(answer.usage or TokenUsage()),
    }
    return _encode(body)


# -- streams ----------------------------------------------------------------------------------


class _Block(msgspec.Struct):
    type: str
    text: str | None = None
    thinking: str | None = None
    id: str | None = None
    name: str | None = None
    data: str | None = None


class _BlockStart(msgspec.Struct):
    index: int
    content_block: _Block


class _Inner(msgspec.Struct):
    type: str
    text: str | None = None
    partial_json: str | None = None
    thinking: str | None = None
    signature: str | None = None


class _BlockDelta(msgspec.Struct):
    index: int
    delta: _Inner


class _Index(msgspec.Struct):
    index: int


class _StartMessage(msgspec.Struct):
    id: str = ""
    model: str = ""
    usage: dict[str, Any] | None = None


class _Start(msgspec.Struct):
    message: _StartMessage


class _Stop(msgspec.Struct):
    stop_reason: str | None = None
    stop_sequence: str | None = None


class _MessageDelta(msgspec.Struct):
    delta: _Stop
    usage: dict[str, Any] | None = None


class _ErrorBody(msgspec.Struct):
    type: str = "api_error"
    message: str = ""


class _Error(msgspec.Struct):
    error: _ErrorBody


class _Typed(msgspec.Struct):
    type: str


_delta_decoder = msgspec.json.Decoder(_BlockDelta)
_start_decoder = msgspec.json.Decoder(_BlockStart)
_index_decoder = msgspec.json.Decoder(_Index)
_message_start_decoder = msgspec.json.Decoder(_Start)
_message_delta_decoder = msgspec.json.Decoder(_MessageDelta)
_error_decoder = msgspec.json.Decoder(_Error)
_typed_decoder = msgspec.json.Decoder(_Typed)


class StreamDecoder:
    """Messages SSE bytes, fed as they arrive, into :data:`Delta` events.

    Keeps the unfinished event, the usage so far and the index of a structured-output block.
    """

    __slots__ = ("_done", "_splitter", "_structured", "_structured_index", "_usage")

    def __init__(self, *, structured_tool: str | None = None, max_event: int = 8 << 20) -> None:
        self._splitter = EventSplitter(max_event)
        self._structured = structured_tool
        self._structured_index = -1
        self._usage: dict[str, Any] = {}
        self._done = False

    def feed(self, chunk: bytes) -> list[Delta]:
        out: list[Delta] = []
        for event in self._splitter.feed(chunk):
            self._event(event, out)
        if self._splitter.oversized:
            raise MalformedInput("a stream event exceeds the size limit")
        return out

    def close(self) -> list[Delta]:
        out: list[Delta] = []
        for event in self._splitter.close():
            self._event(event, out)
        if not self._done:
            out.append(StreamError("api_error", "the upstream stream ended early"))
            self._done = True
        return out

    def _event(self, event: bytes, out: list[Delta]) -> None:
        name, data = sse_fields(event)
        if not data:
            return
        try:
            kind = name.decode() if name else _typed_decoder.decode(data).type
            if kind == "content_block_delta":
                inner = _delta_decoder.decode(data)
                delta, index = inner.delta, inner.index
                dtype = delta.type
                if dtype == "text_delta":
                    out.append(TextDelta(index, delta.text or ""))
                elif dtype == "input_json_delta":
                    if index == self._structured_index:
                        out.append(TextDelta(index, delta.partial_json or ""))
                    else:
                        out.append(ToolArgumentsDelta(index, delta.partial_json or ""))
                elif dtype == "thinking_delta":
                    out.append(ThinkingDelta(index, delta.thinking or ""))
                elif dtype == "signature_delta":
                    out.append(SignatureDelta(index, delta.signature or ""))
                else:
                    raise Untranslatable(
                        f"delta.{dtype}", "the translation layer has no such delta"
                    )
            elif kind == "content_block_start":
                start = _start_decoder.decode(data)
                block, index = start.content_block, start.index
                btype = block.type
                if btype == "text":
                    if block.text:
                        out.append(TextDelta(index, block.text))
                elif btype == "tool_use":
                    if self._structured is not None and block.name == self._structured:
                        self._structured_index = index
                    else:
                        out.append(ToolCallStart(index, block.id or "", block.name or ""))
                elif btype == "thinking":
                    if block.thinking:
                        out.append(ThinkingDelta(index, block.thinking))
                elif btype == "redacted_thinking":
                    out.append(RedactedThinkingPart(index, block.data or ""))
                else:
                    raise Untranslatable(
                        f"content.{btype}", "the translation layer has no such part"
                    )
            elif kind == "content_block_stop":
                out.append(PartStop(_index_decoder.decode(data).index))
            elif kind == "message_start":
                message = _message_start_decoder.decode(data).message
                out.append(MessageStart(message.id, message.model))
                if message.usage:
                    self._usage.update(message.usage)
                    out.append(UsageDelta(usage_in(self._usage)))
            elif kind == "message_delta":
                md = _message_delta_decoder.decode(data)
                reason = md.delta.stop_reason
                if reason is not None:
                    finish = STOP_IN.get(reason, "other")
                    if finish == "tool_calls" and self._structured_index >= 0:
                        finish = "stop"
                    out.append(Finish(finish, md.delta.stop_sequence))
                if md.usage:
                    self._usage.update((k, v) for k, v in md.usage.items() if v is not None)
                    out.append(UsageDelta(usage_in(self._usage)))
            elif kind == "message_stop":
                out.append(MessageStop())
                self._done = True
            elif kind == "error":
                error = _error_decoder.decode(data).error
                out.append(StreamError(error.type, error.message))
            # ping and event types added later carry nothing the model holds
        except msgspec.DecodeError as exc:
            raise MalformedInput(f"a stream event is not valid: {exc}") from None


_BLOCK_DELTA = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":'
_BLOCK_STOP = b'event: content_block_stop\ndata: {"type":"content_block_stop","index":'


def _event(name: bytes, payload: dict[str, Any]) -> bytes:
    return b"event: " + name + b"\ndata: " + _encode(payload) + b"\n\n"


class StreamEncoder:
    """:data:`Delta` events into Messages SSE bytes.

    Numbers its own content blocks, so parts it has no block for leave no gap. The
    ``message_start`` event waits for the usage that immediately follows a
    :class:`MessageStart`, if any; ``message_delta`` carries the stop reason and full usage.
    """

    __slots__ = ("_block", "_finish", "_kind", "_next", "_part", "_start", "_usage")

    def __init__(self) -> None:
        self._start: MessageStart | None = None
        self._usage: TokenUsage | None = None
        self._finish: Finish | None = None
        self._part = -1  # the incoming part index of the open block
        self._block = b""  # the open block's index, as bytes
        self._kind = ""
        self._next = 0

    def encode_many(self, deltas: list[Delta]) -> bytes:
        return b"".join([self.encode(d) for d in deltas])

    def _flush_start(self) -> bytes:
        start, self._start = self._start, None
        if start is None:
            return b""
        usage = usage_out(self._usage) if self._usage is not None else {
            "input_tokens": 0, "output_tokens": 0,
        }  # fmt: skip
        message: dict[str, Any] = {
            "id": start.id,
            "type": "message",
            "role": "assistant",
            "model": start.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage,
        }
        return _event(b"message_start", {"type": "message_start", "message": message})

    def _close(self) -> bytes:
        if not self._kind:
            return b""
        self._kind = ""
        self._part = -1
        return _BLOCK_STOP + self._block + b"}\n\n"

    def _open(self, part: int, kind: str, block: dict[str, Any]) -> bytes:
        head = self._close()
        self._part = part
        self._kind = kind
        self._block = str(self._next).encode()
        self._next += 1
        payload = {"type": "content_block_start", "index": self._next - 1, "content_block": block}
        return head + _event(b"content_block_start", payload)

    def encode(self, delta: Delta) -> bytes:
        head = self._flush_start() if self._start is not None else b""
        if isinstance(delta, TextDelta):
            if self._part != delta.index or self._kind != "text":
                head += self._open(delta.index, "text", {"type": "text", "text": ""})
            return (
                head + _BLOCK_DELTA + self._block + b',"delta":{"type":"text_delta","text":'
                + _encode(delta.text) + b"}}\n\n"
            )  # fmt: skip
        if isinstance(delta, ToolArgumentsDelta):
            if self._part != delta.index or self._kind != "tool":
                raise MalformedInput("tool arguments for a part that is not open")
            return (
                head + _BLOCK_DELTA + self._block
                + b',"delta":{"type":"input_json_delta","partial_json":'
                + _encode(delta.json) + b"}}\n\n"
            )  # fmt: skip
        if isinstance(delta, ThinkingDelta):
            if self._part != delta.index or self._kind != "thinking":
                block: dict[str, Any] = {"type": "thinking", "thinking": "", "signature": ""}
                head += self._open(delta.index, "thinking", block)
            return (
                head + _BLOCK_DELTA + self._block
                + b',"delta":{"type":"thinking_delta","thinking":'
                + _encode(delta.text) + b"}}\n\n"
            )  # fmt: skip
        if isinstance(delta, SignatureDelta):
            if self._part != delta.index or self._kind != "thinking":
                block = {"type": "thinking", "thinking": "", "signature": ""}
                head += self._open(delta.index, "thinking", block)
            return (
                head + _BLOCK_DELTA + self._block
                + b',"delta":{"type":"signature_delta","signature":'
                + _encode(delta.signature) + b"}}\n\n"
            )  # fmt: skip
        if isinstance(delta, ToolCallStart):
            block = {
                "type": "tool_use", "id": delta.id, "name": delta.name, "input": {},
            }  # fmt: skip
            return head + self._open(delta.index, "tool", block)
        if isinstance(delta, RedactedThinkingPart):
            block = {"type": "redacted_thinking", "data": delta.data}
            return head + self._open(delta.index, "redacted", block)
        if isinstance(delta, PartStop):
            return head + (self._close() if delta.index == self._part else b"")
        if isinstance(delta, MessageStart):
            self._start = delta
            return head
        if isinstance(delta, UsageDelta):
            self._usage = delta.usage
            return head
        if isinstance(delta, Finish):
            self._finish = delta
            return head + self._close()
        if isinstance(delta, MessageStop):
            finish = self._finish
            payload = {
                "type": "message_delta",
                "delta": {
                    "stop_reason": _stop_reason(finish.reason, finish.stop_sequence)
                    if finish is not None
                    else "end_turn",
                    "stop_sequence": None if finish is None else finish.stop_sequence,
                },
                "usage": usage_out(self._usage or TokenUsage()),
            }
            return (
                head + self._close() + _event(b"message_delta", payload)
                + b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
            )  # fmt: skip
        assert isinstance(delta, StreamError)
        payload = {"type": "error", "error": {"type": delta.kind, "message": delta.message}}
        return head + self._close() + _event(b"error", payload)
