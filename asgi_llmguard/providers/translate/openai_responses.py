"""OpenAI Responses <-> the internal model, for clients that speak Responses (Codex, the
Agents SDK) served by upstreams of another format.

Reads a Responses request and writes a Responses answer and SSE stream; the reverse directions
(writing a request, reading an answer and a stream) are there too, so the codec's round trips can
be checked. What only OpenAI's own service can do (built-in tools, stored responses through
``previous_response_id`` or ``conversation``, ``store``) is named in :attr:`Turn.unsupported`,
so a writer for a Chat Completions or Messages upstream refuses it unless it may be dropped.

A reasoning item's ``encrypted_content`` is carried as the thinking's signature, so reasoning
that Codex sends back with ``include: ["reasoning.encrypted_content"]`` reaches the upstream it
came from intact.

The stream encoder keeps the text of the open output item and the items already done: the format
repeats them in its ``.done`` events and in ``response.completed``, so its memory grows with the
answer (as :class:`AnswerCollector`'s does), unlike the decoders'.
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
    "store": False,
    "background": False,
    "truncation": "disabled",
    "metadata": {},
}
#: The keys of a function tool the model holds (``defer_loading``, ``output_schema``, ... it does
#: not).
_TOOL_KEYS = frozenset({"type", "name", "description", "parameters", "strict"})
#: ``include`` values the model can honour (signatures travel as ``encrypted_content``).
_INCLUDES = frozenset({"reasoning.encrypted_content"})
#: Why an answer is incomplete, by finish reason, and back.
_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}
_INCOMPLETE_IN: dict[str, FinishReason] = {
    "max_output_tokens": "length",
    "content_filter": "content_filter",
}


# -- requests ---------------------------------------------------------------------------------


def _text_content(content: Any, where: str, unsupported: list[str]) -> list[Text]:
    if isinstance(content, str):
        return [Text(content)]
    texts = []
    for item in as_list(content, where):
        kind = as_dict(item, where).get("type")
        if kind in ("input_text", "output_text", "text"):
            texts.append(Text(as_str(item.get("text"), where + ".text")))
        else:
            unsupported.append(f"{where}.{kind}")
    return texts


def _image_in(item: dict[str, Any], unsupported: list[str]) -> Image | None:
    if item.get("detail", "auto") != "auto":
        unsupported.append("input.content.input_image.detail")
    url = item.get("image_url")
    if url is None:
        unsupported.append("input.content.input_image.file_id")
        return None
    inline = data_uri(as_str(url, "input_image.image_url"))
    return Image(url=url) if inline is None else Image(None, inline[1], inline[0])


def _user_content(content: Any, unsupported: list[str]) -> list[Text | Image]:
    if isinstance(content, str):
        return [Text(content)]
    parts: list[Text | Image] = []
    for item in as_list(content, "input.content"):
        kind = as_dict(item, "input.content[]").get("type")
        if kind == "input_text":
            parts.append(Text(as_str(item.get("text"), "input_text.text")))
        elif kind == "input_image":
            image = _image_in(item, unsupported)
            if image is not None:
                parts.append(image)
        else:
            unsupported.append(f"input.content.{kind}")
    return parts


def _is_results(message: Message) -> bool:
    return message.role == "user" and all(isinstance(p, ToolResult) for p in message.parts)


def read_request(body: bytes | dict[str, Any]) -> Turn:
    """A Responses request body as a :class:`Turn`."""
    req = as_dict(_decode(body) if isinstance(body, bytes | bytearray) else body, "body")
    unsupported: list[str] = []
    system: list[Text] = []
    if req.get("instructions") is not None:
        system.append(Text(as_str(req["instructions"], "instructions")))
    messages: list[Message] = []

    def assistant(part: Part) -> None:
        if messages and messages[-1].role == "assistant":
            messages[-1] = Message("assistant", (*messages[-1].parts, part))
        else:
            messages.append(Message("assistant", (part,)))

    raw_input = req.get("input")
    items = [{"role": "user", "content": raw_input}] if isinstance(raw_input, str) else raw_input
    for item in as_list(items, "input"):
        item = as_dict(item, "input[]")
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            content = item.get("content")
            if role in ("system", "developer"):
                texts = _text_content(content, "input.content", unsupported)
                if messages:
                    messages.append(Message("system", tuple(texts)))
                else:
                    system.extend(texts)
            elif role == "user":
                parts = _user_content(content, unsupported)
                if messages and _is_results(messages[-1]):
                    messages[-1] = Message("user", (*messages[-1].parts, *parts))
                else:
                    messages.append(Message("user", tuple(parts)))
            elif role == "assistant":
                if isinstance(content, str):
                    assistant(Text(content))
                    continue
                for part in as_list(content, "input.content"):
                    part = as_dict(part, "input.content[]")
                    ptype = part.get("type")
                    if ptype == "output_text":
                        assistant(Text(as_str(part.get("text"), "output_text.text")))
                    elif ptype == "refusal":
                        assistant(Refusal(as_str(part.get("refusal"), "refusal.refusal")))
                    else:
                        unsupported.append(f"input.content.{ptype}")
            else:
                raise MalformedInput(f"input message role {role!r} is not known")
        elif kind == "function_call":
            assistant(
                ToolCall(
                    as_str(item.get("call_id"), "function_call.call_id"),
                    as_str(item.get("name"), "function_call.name"),
                    as_str(item.get("arguments", "{}"), "function_call.arguments"),
                )
            )
        elif kind == "function_call_output":
            output = item.get("output")
            result = ToolResult(
                as_str(item.get("call_id"), "function_call_output.call_id"),
                tuple(_user_content(output if output is not None else "", unsupported)),
            )
            if messages and _is_results(messages[-1]):
                messages[-1] = Message("user", (*messages[-1].parts, result))
            else:
                messages.append(Message("user", (result,)))
        elif kind == "reasoning":
            summary = as_list(item.get("summary") or [], "reasoning.summary")
            text = "".join(
                as_str(as_dict(s, "reasoning.summary[]").get("text"), "summary.text")
                for s in summary
            )
            assistant(Thinking(text, opt_str(item.get("encrypted_content"), "encrypted_content")))
        else:
            unsupported.append(f"input.{kind}")

    tools: list[Tool] = []
    for raw in as_list(req.get("tools") or [], "tools"):
        raw = as_dict(raw, "tools[]")
        if raw.get("type") != "function":
            unsupported.append(f"tools.{raw.get('type')}")
            continue
        for key, value in raw.items():
            if key not in _TOOL_KEYS and value is not None and value is not False:
                unsupported.append(f"tools.function.{key}")
        tools.append(
            Tool(
                as_str(raw.get("name"), "tools[].name"),
                opt_str(raw.get("description"), "tools[].description"),
                as_dict(raw.get("parameters") or {}, "tools[].parameters"),
                raw.get("strict"),
            )
        )
    choice = req.get("tool_choice")
    tool_choice: ToolChoice | None = None
    if isinstance(choice, str):
        if choice not in ("auto", "none", "required"):
            raise MalformedInput(f"tool_choice {choice!r} is not auto, none or required")
        tool_choice = ToolChoice(choice)  # type: ignore[arg-type]
    elif choice is not None:
        choice = as_dict(choice, "tool_choice")
        if choice.get("type") == "function":
            tool_choice = ToolChoice("named", as_str(choice.get("name"), "tool_choice.name"))
        else:
            unsupported.append(f"tool_choice.{choice.get('type')}")

    structured = None
    for key, value in opt_dict(req.get("text"), "text").items():
        if key == "format" and value is not None:
            fmt = as_dict(value, "text.format")
            ftype = fmt.get("type")
            if ftype == "json_schema":
                structured = StructuredOutput(
                    as_str(fmt.get("name"), "text.format.name"),
                    as_dict(fmt.get("schema", {}), "text.format.schema"),
                    fmt.get("strict"),
                    opt_str(fmt.get("description"), "text.format.description"),
                )
            elif ftype != "text":
                unsupported.append(f"text.format.{ftype}")
        elif key == "verbosity" and value not in (None, "medium"):
            unsupported.append("text.verbosity")
    effort = None
    reasoning = opt_dict(req.get("reasoning"), "reasoning")
    if reasoning.get("effort") is not None:
        effort = as_str(reasoning["effort"], "reasoning.effort")
    for value in as_list(req.get("include") or [], "include"):
        if as_str(value, "include[]") not in _INCLUDES:
            unsupported.append(f"include.{value}")
    handled = {
        "model", "input", "instructions", "tools", "tool_choice", "parallel_tool_calls", "text",
        "reasoning", "include", "max_output_tokens", "temperature", "top_p", "stream",
        "stream_options", "user",
    }  # fmt: skip
    for key, value in req.items():
        if key not in handled and value is not None and _NEUTRAL.get(key, ...) != value:
            unsupported.append(key)
    parallel = req.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise MalformedInput("parallel_tool_calls must be a boolean")
    max_tokens = req.get("max_output_tokens")
    return Turn(
        model=as_str(req.get("model"), "model"),
        messages=tuple(messages),
        system=tuple(system),
        tools=tuple(tools),
        tool_choice=tool_choice,
        parallel_tool_calls=parallel,
        structured_output=structured,
        max_output_tokens=None if max_tokens is None else as_int(max_tokens, "max_output_tokens"),
        temperature=_number(req, "temperature"),
        top_p=_number(req, "top_p"),
        reasoning_effort=effort,
        stream=bool(req.get("stream")),
        user=opt_str(req.get("user"), "user"),
        unsupported=tuple(dict.fromkeys(unsupported)),
    )


def _image_out(image: Image) -> dict[str, Any]:
    url = image.url if image.url is not None else f"data:{image.media_type};base64,{image.data}"
    return {"type": "input_image", "image_url": url, "detail": "auto"}


def _user_out(parts: list[Text | Image]) -> list[dict[str, Any]]:
    return [
        {"type": "input_text", "text": p.text} if isinstance(p, Text) else _image_out(p)
        for p in parts
    ]


def write_request(
    turn: Turn, *, drop: frozenset[str] | set[str] = frozenset()
) -> tuple[dict[str, Any], list[str]]:
    """``turn`` as a Responses request body, and the fields dropped (all in ``drop``)."""
    refusals = _Refusals(drop)
    for field in turn.unsupported:
        refusals.refuse(field, "the translation layer cannot carry this field")
    items: list[dict[str, Any]] = []
    body: dict[str, Any] = {"model": turn.model}
    if len(turn.system) == 1:
        body["instructions"] = turn.system[0].text
    elif turn.system:
        items.append({"role": "system", "content": _user_out(list(turn.system))})
    for message in turn.messages:
        if message.role == "system":
            said = [p for p in message.parts if isinstance(p, Text)]
            items.append({"role": "system", "content": _user_out(list(said))})
        elif message.role == "user":
            rest: list[Text | Image] = []
            for part in message.parts:
                if isinstance(part, ToolResult):
                    if part.is_error:
                        refusals.refuse(
                            "messages.tool_result.is_error",
                            "Responses cannot mark a function call output as an error",
                        )
                    content = part.content
                    output: Any = (
                        content[0].text
                        if len(content) == 1 and isinstance(content[0], Text)
                        else _user_out(list(content))
                    )
                    items.append(
                        {"type": "function_call_output", "call_id": part.call_id, "output": output}
                    )
                elif isinstance(part, Text | Image):
                    rest.append(part)
                else:
                    raise Untranslatable(f"messages.user.{type(part).__name__}", "not a user part")
            if rest or not any(isinstance(p, ToolResult) for p in message.parts):
                items.append({"role": "user", "content": _user_out(rest)})
        else:
            texts: list[dict[str, Any]] = []  # the content of the open message item
            for part in message.parts:
                if isinstance(part, Text | Refusal):
                    if not texts:
                        items.append({"type": "message", "role": "assistant", "content": texts})
                    texts.append(
                        {"type": "output_text", "text": part.text}
                        if isinstance(part, Text)
                        else {"type": "refusal", "refusal": part.text}
                    )
                    continue
                texts = []
                if isinstance(part, ToolCall):
                    items.append(
                        {
                            "type": "function_call",
                            "call_id": part.id,
                            "name": part.name,
                            "arguments": part.arguments,
                        }
                    )
                elif isinstance(part, Thinking):
                    item: dict[str, Any] = {
                        "type": "reasoning",
                        "summary": [{"type": "summary_text", "text": part.text}],
                    }
                    if part.signature is not None:
                        item["encrypted_content"] = part.signature
                    items.append(item)
                elif isinstance(part, RedactedThinking):
                    refusals.refuse(
                        "messages.redacted_thinking", "Responses has no redacted reasoning"
                    )
                else:
                    raise Untranslatable(
                        f"messages.assistant.{type(part).__name__}", "not an assistant part"
                    )
    body["input"] = items
    if turn.tools:
        tools = []
        for tool in turn.tools:
            spec: dict[str, Any] = {"type": "function", "name": tool.name}
            if tool.description is not None:
                spec["description"] = tool.description
            spec["parameters"] = tool.parameters
            if tool.strict is not None:
                spec["strict"] = tool.strict
            tools.append(spec)
        body["tools"] = tools
        if turn.parallel_tool_calls is not None:
            body["parallel_tool_calls"] = turn.parallel_tool_calls
    if turn.tool_choice is not None:
        choice = turn.tool_choice
        body["tool_choice"] = (
            {"type": "function", "name": choice.name} if choice.mode == "named" else choice.mode
        )
    if turn.structured_output is not None:
        so = turn.structured_output
        fmt: dict[str, Any] = {"type": "json_schema", "name": so.name, "schema": so.schema}
        if so.strict is not None:
            fmt["strict"] = so.strict
        if so.description is not None:
            fmt["description"] = so.description
        body["text"] = {"format": fmt}
    if turn.stop:
        refusals.refuse("stop", "Responses takes no stop sequences")
    if turn.max_output_tokens is not None:
        body["max_output_tokens"] = turn.max_output_tokens
    if turn.temperature is not None:
        body["temperature"] = turn.temperature
    if turn.top_p is not None:
        body["top_p"] = turn.top_p
    effort = turn.reasoning_effort
    if effort is None and turn.thinking_budget is not None:
        effort = effort_for_budget(turn.thinking_budget)
    if effort is not None:
        body["reasoning"] = {"effort": effort}
    if turn.stream:
        body["stream"] = True
    if turn.user is not None:
        body["user"] = turn.user
    body["store"] = False
    return body, refusals.dropped


# -- answers ----------------------------------------------------------------------------------


def usage_in(raw: dict[str, Any]) -> TokenUsage:
    """Responses usage as a :class:`TokenUsage` (``input_tokens`` includes the cached ones)."""
    details = opt_dict(raw.get("input_tokens_details"), "usage.input_tokens_details")
    out = opt_dict(raw.get("output_tokens_details"), "usage.output_tokens_details")
    return TokenUsage(
        input_tokens=count(raw, "input_tokens"),
        output_tokens=count(raw, "output_tokens"),
        cached_input_tokens=count(details, "cached_tokens"),
        reasoning_tokens=count(out, "reasoning_tokens"),
    )


def usage_out(usage: TokenUsage) -> dict[str, Any]:
    return {
        "input_tokens": usage.input_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_input_tokens},
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.input_tokens + usage.output_tokens,
    }


def _item_id(prefix: str, answer_id: str, index: int) -> str:
    return f"{prefix}_{answer_id}_{index}"


def _message_item(item_id: str, texts: list[dict[str, Any]], status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": texts,
    }


def _output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _reasoning_item(item_id: str, text: str, signature: str | None) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": item_id,
        "type": "reasoning",
        "summary": [{"type": "summary_text", "text": text}] if text else [],
    }
    if signature:
        item["encrypted_content"] = signature
    return item


def _call_item(
    item_id: str, call_id: str, name: str, arguments: str, status: str
) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }


def _status(finish: FinishReason | None) -> tuple[str, dict[str, Any] | None]:
    reason = _INCOMPLETE.get(finish or "")
    return ("incomplete", {"reason": reason}) if reason else ("completed", None)


def _response(
    id: str,
    model: str,
    created: int,
    status: str,
    output: list[dict[str, Any]],
    incomplete: dict[str, Any] | None = None,
    usage: TokenUsage | None = None,
) -> dict[str, Any]:
    return {
        "id": id,
        "object": "response",
        "created_at": created,
        "status": status,
        "error": None,
        "incomplete_details": incomplete,
        "instructions": None,
        "max_output_tokens": None,
        "model": model,
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": False,
        "temperature": None,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": None,
        "truncation": "disabled",
        "usage": None if usage is None else usage_out(usage),
        "user": None,
        "metadata": {},
    }


def write_answer(answer: Answer, *, created: int | None = None) -> bytes:
    """``answer`` as a Responses answer body (``object: response``). Redacted thinking has no
    item and is left out; a signature is the reasoning item's ``encrypted_content``."""
    output: list[dict[str, Any]] = []
    texts: list[dict[str, Any]] = []
    for index, part in enumerate(answer.parts):
        if isinstance(part, Text | Refusal):
            if not texts:
                output.append(_message_item(_item_id("msg", answer.id, index), texts, "completed"))
            texts.append(
                _output_text(part.text)
                if isinstance(part, Text)
                else {"type": "refusal", "refusal": part.text}
            )
            continue
        texts = []
        if isinstance(part, ToolCall):
            item_id = _item_id("fc", answer.id, index)
            output.append(_call_item(item_id, part.id, part.name, part.arguments, "completed"))
        elif isinstance(part, Thinking):
            output.append(
                _reasoning_item(_item_id("rs", answer.id, index), part.text, part.signature)
            )
        elif not isinstance(part, RedactedThinking):
            raise Untranslatable(f"content.{type(part).__name__}", "not an answer part")
    status, incomplete = _status(answer.finish_reason)
    body = _response(
        answer.id,
        answer.model,
        int(time.time()) if created is None else created,
        status,
        output,
        incomplete,
        answer.usage,
    )
    return _encode(body)


def _finish_in(status: str | None, incomplete: Any, calls: bool) -> FinishReason | None:
    if status == "incomplete":
        reason = opt_dict(incomplete, "incomplete_details").get("reason")
        return _INCOMPLETE_IN.get(reason, "other")  # type: ignore[arg-type]
    if status == "completed":
        return "tool_calls" if calls else "stop"
    return None if status in (None, "in_progress", "queued") else "other"


def read_answer(body: bytes | dict[str, Any]) -> Answer:
    """A Responses answer (``object: response``) as an :class:`Answer`."""
    raw = as_dict(_decode(body) if isinstance(body, bytes | bytearray) else body, "body")
    parts: list[Part] = []
    for item in as_list(raw.get("output") or [], "output"):
        item = as_dict(item, "output[]")
        kind = item.get("type")
        if kind == "message":
            for content in as_list(item.get("content") or [], "output.content"):
                content = as_dict(content, "output.content[]")
                if content.get("type") == "refusal":
                    parts.append(Refusal(as_str(content.get("refusal"), "refusal")))
                else:
                    parts.append(Text(as_str(content.get("text"), "output_text.text")))
        elif kind == "function_call":
            parts.append(
                ToolCall(
                    as_str(item.get("call_id"), "function_call.call_id"),
                    as_str(item.get("name"), "function_call.name"),
                    as_str(item.get("arguments", ""), "function_call.arguments"),
                )
            )
        elif kind == "reasoning":
            summary = as_list(item.get("summary") or [], "reasoning.summary")
            text = "".join(
                as_str(as_dict(s, "summary[]").get("text"), "summary.text") for s in summary
            )
            parts.append(
                Thinking(text, opt_str(item.get("encrypted_content"), "encrypted_content"))
            )
        else:
            raise Untranslatable(f"output.{kind}", "the translation layer has no such item")
    usage = raw.get("usage")
    calls = any(isinstance(p, ToolCall) for p in parts)
    return Answer(
        id=opt_str(raw.get("id"), "id") or "",
        model=opt_str(raw.get("model"), "model") or "",
        parts=tuple(parts),
        finish_reason=_finish_in(raw.get("status"), raw.get("incomplete_details"), calls),
        usage=None if usage is None else usage_in(as_dict(usage, "usage")),
    )


# -- streams ----------------------------------------------------------------------------------

_NONE, _TEXT, _THINKING, _TOOL = 0, 1, 2, 3


class StreamEncoder:
    """:data:`Delta` events into Responses SSE bytes, ``sequence_number`` on every event.

    Each part of the answer is one output item: text a ``message`` with one ``output_text``,
    thinking a ``reasoning`` item with one summary part, a tool call a ``function_call``.
    """

    __slots__ = (
        "_call", "_created", "_finish", "_id", "_item", "_kind", "_model", "_output", "_part",
        "_seq", "_signature", "_text", "_usage",
    )  # fmt: skip

    def __init__(self, *, created: int | None = None) -> None:
        self._created = int(time.time()) if created is None else created
        self._seq = 0
        self._id = ""
        self._model = ""
        self._output: list[dict[str, Any]] = []  # the items done
        self._kind = _NONE
        self._part = -1  # the incoming part index of the open item
        self._item = b""  # ',"item_id":"...","output_index":N'
        self._text: list[str] = []
        self._signature: str | None = None
        self._call: ToolCallStart | None = None
        self._finish: Finish | None = None
        self._usage: TokenUsage | None = None

    def encode_many(self, deltas: list[Delta]) -> bytes:
        return b"".join([self.encode(d) for d in deltas])

    def _event(self, name: str, payload: dict[str, Any]) -> bytes:
        self._seq += 1
        payload = {"type": name, "sequence_number": self._seq - 1, **payload}
        return b"event: " + name.encode() + b"\ndata: " + _encode(payload) + b"\n\n"

    def _fast(self, name: bytes, body: bytes) -> bytes:
        self._seq += 1
        return (
            b"event: " + name + b'\ndata: {"type":"' + name + b'","sequence_number":'
            + str(self._seq - 1).encode() + self._item + body + b"}\n\n"
        )  # fmt: skip

    def _open(self, kind: int, part: int, item: dict[str, Any]) -> bytes:
        head = self._close()
        self._kind = kind
        self._part = part
        index = len(self._output)
        self._item = (
            b',"item_id":' + _encode(item["id"]) + b',"output_index":' + str(index).encode()
        )
        self._text = []
        self._signature = None
        head += self._event("response.output_item.added", {"output_index": index, "item": item})
        ids = {"item_id": item["id"], "output_index": index}
        if kind == _TEXT:
            part_added = {**ids, "content_index": 0, "part": _output_text("")}
            head += self._event("response.content_part.added", part_added)
        elif kind == _THINKING:
            summary = {**ids, "summary_index": 0, "part": {"type": "summary_text", "text": ""}}
            head += self._event("response.reasoning_summary_part.added", summary)
        return head

    def _close(self) -> bytes:
        kind = self._kind
        if kind == _NONE:
            return b""
        self._kind = _NONE
        self._part = -1
        index = len(self._output)
        item_id = _decode(self._item[11 : self._item.index(b',"output_index"')])
        ids = {"item_id": item_id, "output_index": index}
        text = "".join(self._text)
        out = b""
        if kind == _TEXT:
            at = {**ids, "content_index": 0}
            done = {**at, "text": text, "logprobs": []}
            out += self._event("response.output_text.done", done)
            out += self._event("response.content_part.done", {**at, "part": _output_text(text)})
            item = _message_item(item_id, [_output_text(text)], "completed")
        elif kind == _THINKING:
            if text:
                at = {**ids, "summary_index": 0}
                part = {"type": "summary_text", "text": text}
                out += self._event("response.reasoning_summary_text.done", {**at, "text": text})
                out += self._event("response.reasoning_summary_part.done", {**at, "part": part})
            item = _reasoning_item(item_id, text, self._signature)
        else:
            call = self._call
            assert call is not None
            done = {**ids, "arguments": text}
            out += self._event("response.function_call_arguments.done", done)
            item = _call_item(item_id, call.id, call.name, text, "completed")
        self._output.append(item)
        self._text = []
        return out + self._event("response.output_item.done", {"output_index": index, "item": item})

    def _item_id(self, prefix: str, index: int) -> str:
        return _item_id(prefix, self._id, index)

    def encode(self, delta: Delta) -> bytes:
        if isinstance(delta, TextDelta):
            head = b""
            if self._part != delta.index or self._kind != _TEXT:
                item = _message_item(self._item_id("msg", delta.index), [], "in_progress")
                head = self._open(_TEXT, delta.index, item)
            self._text.append(delta.text)
            return head + self._fast(
                b"response.output_text.delta",
                b',"content_index":0,"delta":' + _encode(delta.text) + b',"logprobs":[]',
            )
        if isinstance(delta, ToolArgumentsDelta):
            if self._part != delta.index or self._kind != _TOOL:
                raise MalformedInput("tool arguments for a part that is not open")
            self._text.append(delta.json)
            return self._fast(
                b"response.function_call_arguments.delta", b',"delta":' + _encode(delta.json)
            )
        if isinstance(delta, ThinkingDelta | SignatureDelta):
            head = b""
            if self._part != delta.index or self._kind != _THINKING:
                item = _reasoning_item(self._item_id("rs", delta.index), "", None)
                head = self._open(_THINKING, delta.index, item)
            if isinstance(delta, SignatureDelta):
                self._signature = (self._signature or "") + delta.signature
                return head
            self._text.append(delta.text)
            return head + self._fast(
                b"response.reasoning_summary_text.delta",
                b',"summary_index":0,"delta":' + _encode(delta.text),
            )
        if isinstance(delta, ToolCallStart):
            item = _call_item(
                self._item_id("fc", delta.index), delta.id, delta.name, "", "in_progress"
            )
            head = self._open(_TOOL, delta.index, item)
            self._call = delta
            return head
        if isinstance(delta, PartStop):
            return self._close() if delta.index == self._part else b""
        if isinstance(delta, MessageStart):
            self._id, self._model = delta.id, delta.model
            response = _response(delta.id, delta.model, self._created, "in_progress", [])
            return self._event("response.created", {"response": response}) + self._event(
                "response.in_progress", {"response": response}
            )
        if isinstance(delta, Finish):
            self._finish = delta
            return self._close()
        if isinstance(delta, UsageDelta):
            self._usage = delta.usage
            return b""
        if isinstance(delta, MessageStop):
            head = self._close()
            status, incomplete = _status(None if self._finish is None else self._finish.reason)
            response = _response(
                self._id, self._model, self._created, status, self._output, incomplete, self._usage
            )
            return head + self._event(f"response.{status}", {"response": response})
        if isinstance(delta, StreamError):
            return self._close() + self._event(
                "error", {"code": delta.kind, "message": delta.message, "param": None}
            )
        # Responses has no redacted reasoning: like Chat Completions, it is left out.
        assert isinstance(delta, RedactedThinkingPart)
        return b""


class _Item(msgspec.Struct):
    type: str
    call_id: str | None = None
    name: str | None = None
    encrypted_content: str | None = None


class _Response(msgspec.Struct):
    id: str = ""
    model: str = ""
    status: str | None = None
    incomplete_details: dict[str, Any] | None = None
    usage: dict[str, Any] | None = None


class _Event(msgspec.Struct):
    type: str
    output_index: int = 0
    delta: str | None = None
    item: _Item | None = None
    response: _Response | None = None
    code: str | None = None
    message: str | None = None


_event_decoder = msgspec.json.Decoder(_Event)


class StreamDecoder:
    """Responses SSE bytes, fed as they arrive, into :data:`Delta` events; an output item's
    ``output_index`` is its part's index. Keeps only the unfinished event and a few flags."""

    __slots__ = ("_calls", "_done", "_splitter")

    def __init__(self, max_event: int = 8 << 20) -> None:
        self._splitter = EventSplitter(max_event)
        self._calls = False
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

    def _event(self, raw: bytes, out: list[Delta]) -> None:
        _, data = sse_fields(raw)
        if not data:
            return
        try:
            event = _event_decoder.decode(data)
        except msgspec.DecodeError as exc:
            raise MalformedInput(f"a stream event is not valid: {exc}") from None
        kind, index = event.type, event.output_index
        if kind == "response.output_text.delta" or kind == "response.refusal.delta":
            out.append(TextDelta(index, event.delta or ""))
        elif kind == "response.function_call_arguments.delta":
            out.append(ToolArgumentsDelta(index, event.delta or ""))
        elif kind == "response.reasoning_summary_text.delta":
            out.append(ThinkingDelta(index, event.delta or ""))
        elif kind == "response.output_item.added":
            item = event.item
            if item is not None and item.type == "function_call":
                self._calls = True
                out.append(ToolCallStart(index, item.call_id or "", item.name or ""))
        elif kind == "response.output_item.done":
            item = event.item
            if item is not None and item.encrypted_content:
                out.append(SignatureDelta(index, item.encrypted_content))
            out.append(PartStop(index))
        elif kind == "response.created":
            response = event.response or _Response()
            out.append(MessageStart(response.id, response.model))
        elif kind in ("response.completed", "response.incomplete"):
            response = event.response or _Response()
            finish = _finish_in(response.status, response.incomplete_details, self._calls)
            out.append(Finish(finish or "other"))
            if response.usage is not None:
                out.append(UsageDelta(usage_in(response.usage)))
            out.append(MessageStop())
            self._done = True
        elif kind == "error":
            out.append(StreamError(event.code or "api_error", event.message or ""))
        elif kind == "response.failed":
            out.append(StreamError("api_error", "the response failed"))
            self._done = True
        # the other events repeat what the deltas said
