"""OpenAI Chat Completions <-> the internal model: requests, answers and SSE streams.

The same codec serves OpenAI-compatible servers (vLLM and others): their ``reasoning_content``
(or ``reasoning``) fields are read as thinking and written for thinking.
"""

from __future__ import annotations

import time
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
from asgi_llmguard.providers.translate.effort import effort_for_budget
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

#: Request fields whose value here means "nothing asked": present with it, they are ignored.
_NEUTRAL: dict[str, Any] = {
    "n": 1,
    "logprobs": False,
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "modalities": ["text"],
    "store": False,
}

#: The service tiers Chat Completions reports in ``service_tier``.
_TIERS = frozenset({"auto", "default", "flex", "scale", "priority"})

FINISH_IN: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}
#: OpenAI has no "pause" or "other": both end the answer as a plain stop.
FINISH_OUT: dict[str, str] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "content_filter": "content_filter",
    "pause": "stop",
    "other": "stop",
}


# -- requests ---------------------------------------------------------------------------------


def _text_parts(content: Any, where: str, unsupported: list[str]) -> tuple[Text, ...]:
    if isinstance(content, str):
        return (Text(content),)
    parts = []
    for item in as_list(content, where):
        kind = as_dict(item, where).get("type")
        if kind == "text":
            parts.append(Text(as_str(item.get("text"), where + ".text")))
        else:
            unsupported.append(f"{where}.{kind}")
    return tuple(parts)


def _user_parts(content: Any, unsupported: list[str]) -> list[Part]:
    if isinstance(content, str):
        return [Text(content)]
    parts: list[Part] = []
    for item in as_list(content, "messages.content"):
        kind = as_dict(item, "messages.content").get("type")
        if kind == "text":
            parts.append(Text(as_str(item.get("text"), "messages.content.text")))
        elif kind == "image_url":
            image = item.get("image_url")
            url = as_str(as_dict(image, "image_url").get("url"), "image_url.url")
            if image.get("detail", "auto") != "auto":
                unsupported.append("messages.content.image_url.detail")
            inline = data_uri(url)
            parts.append(Image(url=url) if inline is None else Image(None, inline[1], inline[0]))
        else:
            unsupported.append(f"messages.content.{kind}")
    return parts


def _tool_calls(calls: Any) -> list[Part]:
    parts: list[Part] = []
    for call in as_list(calls, "tool_calls"):
        call = as_dict(call, "tool_calls[]")
        fn = as_dict(call.get("function"), "tool_calls[].function")
        parts.append(
            ToolCall(
                as_str(call.get("id"), "tool_calls[].id"),
                as_str(fn.get("name"), "tool_calls[].function.name"),
                as_str(fn.get("arguments", "{}"), "tool_calls[].function.arguments"),
            )
        )
    return parts


def _bool(value: Any, where: str) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise MalformedInput(f"{where} must be a boolean")
    return value


def _is_results(message: Message) -> bool:
    return message.role == "user" and all(isinstance(p, ToolResult) for p in message.parts)


def read_request(body: bytes | dict[str, Any]) -> Turn:
    """A Chat Completions request body as a :class:`Turn`."""
    req = as_dict(_decode(body) if isinstance(body, bytes | bytearray) else body, "body")
    unsupported: list[str] = []
    system: list[Text] = []
    messages: list[Message] = []
    for raw in as_list(req.get("messages"), "messages"):
        raw = as_dict(raw, "messages[]")
        role = raw.get("role")
        if "name" in raw and raw["name"] is not None:
            unsupported.append("messages.name")
        content = raw.get("content")
        if role in ("system", "developer"):
            texts = _text_parts(content, "messages.content", unsupported)
            if messages:
                messages.append(Message("system", texts))
            else:
                system.extend(texts)
        elif role == "user":
            parts = _user_parts(content, unsupported)
            if messages and _is_results(messages[-1]):
                messages[-1] = Message("user", (*messages[-1].parts, *parts))
            else:
                messages.append(Message("user", tuple(parts)))
        elif role == "assistant":
            parts = []
            for key in ("reasoning_content", "reasoning"):
                if isinstance(raw.get(key), str) and raw[key]:
                    parts.append(Thinking(raw[key]))
                    break
            if content is not None:
                for item in (
                    [{"type": "text", "text": content}]
                    if isinstance(content, str)
                    else as_list(content, "messages.content")
                ):
                    kind = as_dict(item, "messages.content").get("type")
                    if kind == "text":
                        parts.append(Text(as_str(item.get("text"), "messages.content.text")))
                    elif kind == "refusal":
                        parts.append(Refusal(as_str(item.get("refusal"), "refusal")))
                    else:
                        unsupported.append(f"messages.content.{kind}")
            if raw.get("refusal") is not None:
                parts.append(Refusal(as_str(raw["refusal"], "messages.refusal")))
            if raw.get("tool_calls"):
                parts.extend(_tool_calls(raw["tool_calls"]))
            for key in ("function_call", "audio"):
                if raw.get(key) is not None:
                    unsupported.append(f"messages.{key}")
            messages.append(Message("assistant", tuple(parts)))
        elif role == "tool":
            result = ToolResult(
                as_str(raw.get("tool_call_id"), "messages.tool_call_id"),
                _text_parts(
                    content if content is not None else "", "messages.content", unsupported
                ),
            )
            if messages and _is_results(messages[-1]):
                messages[-1] = Message("user", (*messages[-1].parts, result))
            else:
                messages.append(Message("user", (result,)))
        else:
            unsupported.append(f"messages.role.{role}")

    tools: list[Tool] = []
    for raw in as_list(req.get("tools") or [], "tools"):
        raw = as_dict(raw, "tools[]")
        if raw.get("type") != "function":
            unsupported.append(f"tools.{raw.get('type')}")
            continue
        fn = as_dict(raw.get("function"), "tools[].function")
        tools.append(
            Tool(
                as_str(fn.get("name"), "tools[].function.name"),
                fn.get("description"),
                as_dict(fn.get("parameters", {}), "tools[].function.parameters"),
                fn.get("strict"),
            )
        )

    choice = req.get("tool_choice")
    tool_choice: ToolChoice | None = None
    if isinstance(choice, str):
        if choice not in ("auto", "none", "required"):
            raise MalformedInput(f"tool_choice {choice!r} is not auto, none or required")
        tool_choice = ToolChoice(choice)  # type: ignore[arg-type]
    elif isinstance(choice, dict):
        if choice.get("type") == "function":
            name = as_dict(choice.get("function"), "tool_choice.function").get("name")
            tool_choice = ToolChoice("named", as_str(name, "tool_choice.function.name"))
        else:
            unsupported.append(f"tool_choice.{choice.get('type')}")

    structured: StructuredOutput | None = None
    fmt = req.get("response_format")
    if fmt is not None:
        kind = as_dict(fmt, "response_format").get("type")
        if kind == "json_schema":
            spec = as_dict(fmt.get("json_schema"), "response_format.json_schema")
            structured = StructuredOutput(
                as_str(spec.get("name"), "response_format.json_schema.name"),
                as_dict(spec.get("schema", {}), "response_format.json_schema.schema"),
                spec.get("strict"),
                spec.get("description"),
            )
        elif kind != "text":
            unsupported.append(f"response_format.{kind}")

    stop = req.get("stop")
    stops = (stop,) if isinstance(stop, str) else tuple(as_list(stop or [], "stop"))
    max_tokens = req.get("max_completion_tokens", req.get("max_tokens"))
    handled = {
        "model", "messages", "tools", "tool_choice", "parallel_tool_calls", "response_format",
        "stop", "max_tokens", "max_completion_tokens", "temperature", "top_p",
        "reasoning_effort", "stream", "stream_options", "user",
    }  # fmt: skip
    for key, value in req.items():
        if key not in handled and value is not None and _NEUTRAL.get(key, ...) != value:
            unsupported.append(key)
    effort = req.get("reasoning_effort")
    return Turn(
        model=as_str(req.get("model"), "model"),
        messages=tuple(messages),
        system=tuple(system),
        tools=tuple(tools),
        tool_choice=tool_choice,
        parallel_tool_calls=_bool(req.get("parallel_tool_calls"), "parallel_tool_calls"),
        structured_output=structured,
        stop=stops,
        max_output_tokens=None if max_tokens is None else as_int(max_tokens, "max_tokens"),
        temperature=_number(req, "temperature"),
        top_p=_number(req, "top_p"),
        reasoning_effort=None if effort is None else as_str(effort, "reasoning_effort"),
        stream=bool(req.get("stream")),
        user=None if req.get("user") is None else as_str(req["user"], "user"),
        unsupported=tuple(dict.fromkeys(unsupported)),
    )


def _content(parts: list[Text]) -> str | list[dict[str, Any]]:
    if len(parts) == 1:
        return parts[0].text
    return [{"type": "text", "text": p.text} for p in parts]


def _image(image: Image) -> dict[str, Any]:
    url = image.url if image.url is not None else f"data:{image.media_type};base64,{image.data}"
    return {"type": "image_url", "image_url": {"url": url}}


def write_request(
    turn: Turn, *, drop: frozenset[str] | set[str] = frozenset()
) -> tuple[dict[str, Any], list[str]]:
    """``turn`` as a Chat Completions request body, and the fields dropped (all in ``drop``).

    Raises :class:`Untranslatable` for the first field Chat Completions cannot express and
    ``drop`` does not name.
    """
    refusals = _Refusals(drop)
    for field in turn.unsupported:
        refusals.refuse(field, "the translation layer cannot carry this field")
    out: list[dict[str, Any]] = []
    if turn.system:
        out.append({"role": "system", "content": _content(list(turn.system))})
    for message in turn.messages:
        if message.role == "system":
            texts = [p for p in message.parts if isinstance(p, Text)]
            out.append({"role": "system", "content": _content(texts)})
        elif message.role == "user":
            rest: list[dict[str, Any]] = []
            for part in message.parts:
                if isinstance(part, ToolResult):
                    texts = []
                    for item in part.content:
                        if isinstance(item, Text):
                            texts.append(item)
                        else:
                            refusals.refuse(
                                "messages.tool_result.image",
                                "Chat Completions tool messages hold text only",
                            )
                    if part.is_error:
                        refusals.refuse(
                            "messages.tool_result.is_error",
                            "Chat Completions cannot mark a tool result as an error",
                        )
                    content: Any = (
                        texts[0].text
                        if len(texts) == 1
                        else ([{"type": "text", "text": t.text} for t in texts] if texts else "")
                    )
                    out.append({"role": "tool", "tool_call_id": part.call_id, "content": content})
                elif isinstance(part, Text):
                    rest.append({"type": "text", "text": part.text})
                elif isinstance(part, Image):
                    rest.append(_image(part))
                else:
                    raise Untranslatable(f"messages.user.{type(part).__name__}", "not a user part")
            if rest:
                if len(rest) == 1 and rest[0]["type"] == "text":
                    out.append({"role": "user", "content": rest[0]["text"]})
                else:
                    out.append({"role": "user", "content": rest})
            elif not any(isinstance(p, ToolResult) for p in message.parts):
                out.append({"role": "user", "content": ""})
        else:
            texts = []
            calls = []
            refusal = None
            for part in message.parts:
                if isinstance(part, Text):
                    texts.append(part)
                elif isinstance(part, ToolCall):
                    calls.append(
                        {
                            "id": part.id,
                            "type": "function",
                            "function": {"name": part.name, "arguments": part.arguments},
                        }
                    )
                elif isinstance(part, Refusal):
                    refusal = part.text if refusal is None else refusal + part.text
                elif isinstance(part, Thinking | RedactedThinking):
                    refusals.refuse(
                        "messages.thinking", "Chat Completions takes no thinking in the history"
                    )
                else:
                    refusals.refuse(
                        f"messages.assistant.{type(part).__name__.lower()}",
                        "Chat Completions assistant messages hold text and tool calls only",
                    )
            msg: dict[str, Any] = {"role": "assistant"}
            msg["content"] = _content(texts) if texts else None
            if refusal is not None:
                msg["refusal"] = refusal
            if calls:
                msg["tool_calls"] = calls
            out.append(msg)

    body: dict[str, Any] = {"model": turn.model, "messages": out}
    if turn.tools:
        tools = []
        for tool in turn.tools:
            fn: dict[str, Any] = {"name": tool.name}
            if tool.description is not None:
                fn["description"] = tool.description
            fn["parameters"] = tool.parameters
            if tool.strict is not None:
                fn["strict"] = tool.strict
            tools.append({"type": "function", "function": fn})
        body["tools"] = tools
        if turn.parallel_tool_calls is not None:
            body["parallel_tool_calls"] = turn.parallel_tool_calls
    if turn.tool_choice is not None:
        choice = turn.tool_choice
        body["tool_choice"] = (
            {"type": "function", "function": {"name": choice.name}}
            if choice.mode == "named"
            else choice.mode
        )
    if turn.structured_output is not None:
        so = turn.structured_output
        spec: dict[str, Any] = {"name": so.name, "schema": so.schema}
        if so.strict is not None:
            spec["strict"] = so.strict
        if so.description is not None:
            spec["description"] = so.description
        body["response_format"] = {"type": "json_schema", "json_schema": spec}
    if turn.stop:
        body["stop"] = list(turn.stop)
    if turn.max_output_tokens is not None:
        body["max_completion_tokens"] = turn.max_output_tokens
    if turn.temperature is not None:
        body["temperature"] = turn.temperature
    if turn.top_p is not None:
        body["top_p"] = turn.top_p
    if turn.reasoning_effort is not None:
        body["reasoning_effort"] = turn.reasoning_effort
    elif turn.thinking_budget is not None:
        body["reasoning_effort"] = effort_for_budget(turn.thinking_budget)
    if turn.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    if turn.user is not None:
        body["user"] = turn.user
    return body, refusals.dropped


# -- answers ----------------------------------------------------------------------------------


def usage_in(raw: dict[str, Any], service_tier: Any = None) -> TokenUsage:
    """OpenAI's usage object as a :class:`TokenUsage` (``prompt_tokens`` includes the cached
    tokens and the ``cache_write_tokens`` written to the cache)."""
    prompt = opt_dict(raw.get("prompt_tokens_details"), "usage.prompt_tokens_details")
    completion = opt_dict(raw.get("completion_tokens_details"), "usage.completion_tokens_details")
    return TokenUsage(
        input_tokens=count(raw, "prompt_tokens"),
        output_tokens=count(raw, "completion_tokens"),
        cached_input_tokens=count(prompt, "cached_tokens"),
        cache_creation_tokens=count(prompt, "cache_write_tokens"),
        reasoning_tokens=count(completion, "reasoning_tokens"),
        service_tier=service_tier if isinstance(service_tier, str) else None,
    )


def usage_out(usage: TokenUsage) -> dict[str, Any]:
    prompt: dict[str, int] = {"cached_tokens": usage.cached_input_tokens}
    if usage.cache_creation_tokens:
        prompt["cache_write_tokens"] = usage.cache_creation_tokens
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
        "prompt_tokens_details": prompt,
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


def read_answer(body: bytes | dict[str, Any]) -> Answer:
    """A Chat Completions answer (``chat.completion``) as an :class:`Answer`."""
    raw = as_dict(_decode(body) if isinstance(body, bytes | bytearray) else body, "body")
    choices = as_list(raw.get("choices"), "choices")
    if len(choices) != 1:
        raise Untranslatable("choices", "only answers with exactly one choice translate")
    choice = as_dict(choices[0], "choices[0]")
    message = as_dict(choice.get("message"), "choices[0].message")
    parts: list[Part] = []
    for key in ("reasoning_content", "reasoning"):
        if isinstance(message.get(key), str) and message[key]:
            parts.append(Thinking(message[key]))
            break
    content = message.get("content")
    if content:
        parts.append(Text(as_str(content, "message.content")))
    if message.get("refusal"):
        parts.append(Refusal(as_str(message["refusal"], "message.refusal")))
    if message.get("tool_calls"):
        parts.extend(_tool_calls(message["tool_calls"]))
    finish = opt_str(choice.get("finish_reason"), "finish_reason")
    usage = raw.get("usage")
    return Answer(
        id=opt_str(raw.get("id"), "id") or "",
        model=opt_str(raw.get("model"), "model") or "",
        parts=tuple(parts),
        finish_reason=None if finish is None else FINISH_IN.get(finish, "other"),
        usage=None if usage is None else usage_in(as_dict(usage, "usage"), raw.get("service_tier")),
    )


def write_answer(answer: Answer, *, created: int | None = None) -> bytes:
    """``answer`` as a Chat Completions answer body. Thinking is written as
    ``reasoning_content`` (as vLLM does); signatures and redacted thinking have no field."""
    texts = [p.text for p in answer.parts if isinstance(p, Text)]
    thinking = [p.text for p in answer.parts if isinstance(p, Thinking)]
    refusal = [p.text for p in answer.parts if isinstance(p, Refusal)]
    calls = [
        {"id": p.id, "type": "function", "function": {"name": p.name, "arguments": p.arguments}}
        for p in answer.parts
        if isinstance(p, ToolCall)
    ]
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if refusal:
        message["refusal"] = "".join(refusal)
    if thinking:
        message["reasoning_content"] = "".join(thinking)
    if calls:
        message["tool_calls"] = calls
    body: dict[str, Any] = {
        "id": answer.id,
        "object": "chat.completion",
        "created": int(time.time()) if created is None else created,
        "model": answer.model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": None
                if answer.finish_reason is None
                else FINISH_OUT[answer.finish_reason],
            }
        ],
    }
    if answer.usage is not None:
        body["usage"] = usage_out(answer.usage)
        if answer.usage.service_tier in _TIERS:  # another provider's tier names mean nothing
            body["service_tier"] = answer.usage.service_tier
    return _encode(body)


# -- streams ----------------------------------------------------------------------------------


class _Fn(msgspec.Struct):
    name: str | None = None
    arguments: str | None = None


class _CallDelta(msgspec.Struct):
    index: int | None = None
    id: str | None = None
    function: _Fn | None = None


class _ChoiceDelta(msgspec.Struct):
    content: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None
    refusal: str | None = None
    tool_calls: list[_CallDelta] | None = None


class _Choice(msgspec.Struct):
    index: int = 0
    delta: _ChoiceDelta | None = None
    finish_reason: str | None = None


class _Chunk(msgspec.Struct):
    id: str = ""
    model: str = ""
    choices: list[_Choice] = []
    usage: dict[str, Any] | None = None
    service_tier: str | None = None
    error: dict[str, Any] | None = None


_chunk_decoder = msgspec.json.Decoder(_Chunk)
_NONE, _TEXT, _THINKING, _TOOL = 0, 1, 2, 3


class StreamDecoder:
    """Chat Completions SSE bytes, fed as they arrive, into :data:`Delta` events.

    Keeps only the unfinished event and a few counters. Tool calls must arrive one after the
    other (as OpenAI and vLLM send them): arguments for an earlier call after a later one
    started cannot be relayed in order and raise :class:`Untranslatable`.
    """

    __slots__ = ("_done", "_kind", "_next", "_open", "_splitter", "_started", "_tool", "_tool_id")

    def __init__(self, max_event: int = 8 << 20) -> None:
        self._splitter = EventSplitter(max_event)
        self._started = False
        self._done = False
        self._next = 0  # the index of the next part
        self._open = -1  # the index of the open part
        self._kind = _NONE
        self._tool = -1  # OpenAI's index of the open tool call
        self._tool_id: str | None = None

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

    def _open_part(self, kind: int, out: list[Delta]) -> int:
        if self._kind != _NONE:
            out.append(PartStop(self._open))
        self._open = self._next
        self._next += 1
        self._kind = kind
        return self._open

    def _event(self, event: bytes, out: list[Delta]) -> None:
        _, data = sse_fields(event)
        if not data:
            return
        if data == b"[DONE]":
            if self._kind != _NONE:
                out.append(PartStop(self._open))
                self._kind = _NONE
            out.append(MessageStop())
            self._done = True
            return
        try:
            chunk = _chunk_decoder.decode(data)
        except msgspec.DecodeError as exc:
            raise MalformedInput(f"a stream chunk is not valid: {exc}") from None
        if chunk.error is not None:
            out.append(
                StreamError(
                    str(chunk.error.get("type") or "api_error"),
                    str(chunk.error.get("message") or ""),
                )
            )
            return
        if not self._started:
            self._started = True
            out.append(MessageStart(chunk.id, chunk.model))
        for choice in chunk.choices:
            if choice.index:
                raise Untranslatable("choices", "only streams of one choice translate")
            delta = choice.delta
            if delta is not None:
                thinking = delta.reasoning_content or delta.reasoning
                if thinking:
                    index = (
                        self._open if self._kind == _THINKING else self._open_part(_THINKING, out)
                    )
                    out.append(ThinkingDelta(index, thinking))
                text = delta.content or delta.refusal
                if text:
                    index = self._open if self._kind == _TEXT else self._open_part(_TEXT, out)
                    out.append(TextDelta(index, text))
                if delta.tool_calls:
                    for call in delta.tool_calls:
                        fn = call.function
                        # A new call has a new index or, from servers that leave the index
                        # out or repeat it, a new id.
                        new_index = call.index is not None and call.index != self._tool
                        new_id = call.id is not None and call.id != self._tool_id
                        if new_index or new_id or self._kind != _TOOL:
                            position = call.index
                            if position is None:
                                position = self._tool + 1 if new_id else self._tool
                            if position < self._tool or not (new_index or new_id):
                                raise Untranslatable(
                                    "tool_calls", "argument deltas of parallel calls interleave"
                                )
                            if call.id is None or fn is None or fn.name is None:
                                raise MalformedInput("a new tool call has no id or name")
                            self._tool = position
                            self._tool_id = call.id
                            out.append(ToolCallStart(self._open_part(_TOOL, out), call.id, fn.name))
                        if fn is not None and fn.arguments:
                            out.append(ToolArgumentsDelta(self._open, fn.arguments))
            if choice.finish_reason is not None:
                if self._kind != _NONE:
                    out.append(PartStop(self._open))
                    self._kind = _NONE
                out.append(Finish(FINISH_IN.get(choice.finish_reason, "other")))
        if chunk.usage is not None:
            out.append(UsageDelta(usage_in(chunk.usage, chunk.service_tier)))


class StreamEncoder:
    """:data:`Delta` events into Chat Completions SSE bytes.

    ``include_usage``: end with the usage chunk (``choices: []``) that
    ``stream_options.include_usage`` asks for.
    """

    __slots__ = ("_created", "_head", "_include_usage", "_part", "_tool", "_usage")

    def __init__(self, *, include_usage: bool = True, created: int | None = None) -> None:
        self._include_usage = include_usage
        self._created = int(time.time()) if created is None else created
        self._usage: TokenUsage | None = None
        self._tool = -1
        self._part = -1
        self._head = self._prefix("", "")

    def _prefix(self, id: str, model: str) -> bytes:
        return (
            b'data: {"id":' + _encode(id) + b',"object":"chat.completion.chunk","created":'
            + str(self._created).encode() + b',"model":' + _encode(model) + b',"choices":'
        )  # fmt: skip

    def _delta(self, delta: bytes, finish: bytes = b"null") -> bytes:
        return (
            self._head + b'[{"index":0,"delta":' + delta + b',"logprobs":null,"finish_reason":'
            + finish + b"}]}\n\n"
        )  # fmt: skip

    def encode_many(self, deltas: list[Delta]) -> bytes:
        return b"".join([self.encode(d) for d in deltas])

    def encode(self, delta: Delta) -> bytes:
        if isinstance(delta, TextDelta):
            return self._delta(b'{"content":' + _encode(delta.text) + b"}")
        if isinstance(delta, ToolArgumentsDelta):
            if delta.index != self._part:
                raise MalformedInput("tool arguments for a part that is not open")
            return self._delta(
                b'{"tool_calls":[{"index":' + str(self._tool).encode()
                + b',"function":{"arguments":' + _encode(delta.json) + b"}}]}"
            )  # fmt: skip
        if isinstance(delta, ThinkingDelta):
            return self._delta(b'{"reasoning_content":' + _encode(delta.text) + b"}")
        if isinstance(delta, ToolCallStart):
            self._tool += 1
            self._part = delta.index
            call = {
                "index": self._tool,
                "id": delta.id,
                "type": "function",
                "function": {"name": delta.name, "arguments": ""},
            }
            return self._delta(b'{"tool_calls":[' + _encode(call) + b"]}")
        if isinstance(delta, MessageStart):
            self._head = self._prefix(delta.id, delta.model)
            return self._delta(b'{"role":"assistant","content":""}')
        if isinstance(delta, Finish):
            return self._delta(b"{}", b'"' + FINISH_OUT[delta.reason].encode() + b'"')
        if isinstance(delta, UsageDelta):
            self._usage = delta.usage
            return b""
        if isinstance(delta, MessageStop):
            tail = b""
            if self._include_usage and self._usage is not None:
                tail = self._head + b'[],"usage":' + _encode(usage_out(self._usage)) + b"}\n\n"
            return tail + b"data: [DONE]\n\n"
        if isinstance(delta, StreamError):
            error = {"error": {"message": delta.message, "type": delta.kind}}
            return b"data: " + _encode(error) + b"\n\n"
        # SignatureDelta, RedactedThinkingPart, PartStop: Chat Completions has no field for them.
        assert isinstance(delta, SignatureDelta | RedactedThinkingPart | PartStop)
        return b""
