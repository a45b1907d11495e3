"""Bedrock Converse <-> the internal model: requests, answers and ConverseStream events.

The model id and streaming are in the URL (``/model/<id>/converse`` or ``/converse-stream``),
and an answer carries neither id nor model: the readers are told them. A ConverseStream answer is
an AWS event stream; its binary framing is the gateway's ``providers.eventstream``, which this
pure layer does not import. :class:`StreamDecoder` takes each frame's event type and JSON payload
(``feed_event``), and :class:`StreamEncoder` gives them back as pairs for the caller to frame.

Images travel as bytes (base64 in JSON): an image by URL has no Converse spelling. Thinking is
asked for in ``additionalModelRequestFields.thinking`` (Claude models on Bedrock).
"""

from __future__ import annotations

from typing import Any

import msgspec

from asgi_llmguard.providers.translate._common import (
    as_dict,
    as_int,
    as_list,
    as_str,
    count,
    data_uri,
    opt_str,
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

STOP_IN: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}
STOP_OUT: dict[str, str] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "content_filtered",
    "pause": "end_turn",
    "other": "end_turn",
}
#: The exception events of a ConverseStream answer.
EXCEPTIONS = frozenset(
    {
        "internalServerException",
        "modelStreamErrorException",
        "validationException",
        "throttlingException",
        "serviceUnavailableException",
    }
)
_FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/gif": "gif", "image/webp": "webp"}


def _stop_reason(reason: str | None, stop_sequence: str | None) -> str | None:
    if reason is None:
        return None
    if reason == "stop" and stop_sequence is not None:
        return "stop_sequence"
    return STOP_OUT[reason]


def _args(arguments: str, field: str) -> dict[str, Any]:
    try:
        value = _decode(arguments) if arguments else {}
    except msgspec.DecodeError:
        value = None
    if not isinstance(value, dict):
        raise Untranslatable(field, "tool call arguments are not a JSON object")
    return value


# -- blocks -----------------------------------------------------------------------------------


def _image_in(raw: Any, unsupported: list[str]) -> Image | None:
    image = as_dict(raw, "image")
    source = as_dict(image.get("source"), "image.source")
    if "bytes" not in source:
        unsupported.append(f"image.source.{next(iter(source), 'empty')}")
        return None
    fmt = as_str(image.get("format"), "image.format")
    return Image(data=as_str(source["bytes"], "image.source.bytes"), media_type=f"image/{fmt}")


def _blocks_in(content: Any, unsupported: list[str]) -> tuple[Part, ...]:
    parts: list[Part] = []
    for block in as_list(content, "content"):
        block = as_dict(block, "content[]")
        if "text" in block:
            parts.append(Text(as_str(block["text"], "text")))
        elif "image" in block:
            image = _image_in(block["image"], unsupported)
            if image is not None:
                parts.append(image)
        elif "toolUse" in block:
            use = as_dict(block["toolUse"], "toolUse")
            parts.append(
                ToolCall(
                    as_str(use.get("toolUseId"), "toolUse.toolUseId"),
                    as_str(use.get("name"), "toolUse.name"),
                    _encode(as_dict(use.get("input", {}), "toolUse.input")).decode(),
                )
            )
        elif "toolResult" in block:
            result = as_dict(block["toolResult"], "toolResult")
            items: list[Text | Image] = []
            for item in as_list(result.get("content") or [], "toolResult.content"):
                item = as_dict(item, "toolResult.content[]")
                if "text" in item:
                    items.append(Text(as_str(item["text"], "toolResult.content.text")))
                elif "json" in item:
                    items.append(Text(_encode(item["json"]).decode()))
                elif "image" in item:
                    image = _image_in(item["image"], unsupported)
                    if image is not None:
                        items.append(image)
                else:
                    unsupported.append(f"toolResult.content.{next(iter(item), 'empty')}")
            parts.append(
                ToolResult(
                    as_str(result.get("toolUseId"), "toolResult.toolUseId"),
                    tuple(items),
                    result.get("status") == "error",
                )
            )
        elif "reasoningContent" in block:
            reasoning = as_dict(block["reasoningContent"], "reasoningContent")
            if "redactedContent" in reasoning:
                data = as_str(reasoning["redactedContent"], "reasoningContent.redactedContent")
                parts.append(RedactedThinking(data))
            else:
                text = as_dict(reasoning.get("reasoningText"), "reasoningContent.reasoningText")
                parts.append(
                    Thinking(
                        as_str(text.get("text"), "reasoningText.text"),
                        opt_str(text.get("signature"), "reasoningText.signature"),
                    )
                )
        else:
            unsupported.append(f"content.{next(iter(block), 'empty')}")
    return tuple(parts)


def _image_out(image: Image, refusals: _Refusals | None) -> dict[str, Any] | None:
    if image.url is not None:
        inline = data_uri(image.url)
        if inline is None:
            if refusals is not None:
                refusals.refuse(
                    "messages.content.image_url", "Converse takes images as bytes, not URLs"
                )
            return None
        media_type, data = inline
    else:
        media_type, data = image.media_type or "", image.data or ""
    fmt = _FORMATS.get(media_type)
    if fmt is None:
        if refusals is not None:
            refusals.refuse("messages.content.image", f"Converse takes no {media_type!r} images")
        return None
    return {"image": {"format": fmt, "source": {"bytes": data}}}


def _blocks_out(parts: tuple[Part, ...], refusals: _Refusals | None) -> list[dict[str, Any]]:
    """Converse content blocks; without ``refusals`` (answers), what has no block raises."""
    out: list[dict[str, Any]] = []
    for part in parts:
        if isinstance(part, Text):
            out.append({"text": part.text})
        elif isinstance(part, ToolCall):
            use = {
                "toolUseId": part.id,
                "name": part.name,
                "input": _args(part.arguments, "messages.tool_calls.arguments"),
            }
            out.append({"toolUse": use})
        elif isinstance(part, ToolResult):
            content: list[dict[str, Any]] = []
            for item in part.content:
                if isinstance(item, Text):
                    content.append({"text": item.text})
                else:
                    image = _image_out(item, refusals)
                    if image is not None:
                        content.append(image)
            result: dict[str, Any] = {"toolUseId": part.call_id, "content": content}
            if part.is_error:
                result["status"] = "error"
            out.append({"toolResult": result})
        elif isinstance(part, Image):
            image = _image_out(part, refusals)
            if image is not None:
                out.append(image)
        elif isinstance(part, Thinking):
            text: dict[str, Any] = {"text": part.text}
            if part.signature is not None:
                text["signature"] = part.signature
            out.append({"reasoningContent": {"reasoningText": text}})
        elif isinstance(part, RedactedThinking):
            out.append({"reasoningContent": {"redactedContent": part.data}})
        elif refusals is None:
            out.append({"text": part.text})  # a refusal in an answer is text
        else:
            refusals.refuse("messages.refusal", "Converse has no refusal block")
    if len(out) > 1:  # Converse rejects blank text beside other blocks; there it says nothing
        kept = [b for b in out if b.get("text", True) != ""]
        out = kept or out[:1]
    return out


# -- requests ---------------------------------------------------------------------------------


def read_request(body: bytes | dict[str, Any], *, model: str = "", stream: bool = False) -> Turn:
    """A Converse request body as a :class:`Turn`; ``model`` and ``stream`` come from the URL
    (the body's ``modelId``, which the SDKs leave out, wins when present)."""
    req = as_dict(_decode(body) if isinstance(body, bytes | bytearray) else body, "body")
    unsupported: list[str] = []
    system = []
    for block in as_list(req.get("system") or [], "system"):
        block = as_dict(block, "system[]")
        if "text" in block:
            system.append(Text(as_str(block["text"], "system[].text")))
        else:
            unsupported.append(f"system.{next(iter(block), 'empty')}")
    messages = []
    for raw in as_list(req.get("messages"), "messages"):
        raw = as_dict(raw, "messages[]")
        role = raw.get("role")
        if role not in ("user", "assistant"):
            raise MalformedInput(f"message role {role!r} is not user or assistant")
        messages.append(Message(role, _blocks_in(raw.get("content"), unsupported)))

    tools: list[Tool] = []
    tool_choice = None
    config = req.get("toolConfig")
    if config is not None:
        config = as_dict(config, "toolConfig")
        for raw in as_list(config.get("tools") or [], "toolConfig.tools"):
            raw = as_dict(raw, "toolConfig.tools[]")
            if "toolSpec" not in raw:
                unsupported.append(f"toolConfig.tools.{next(iter(raw), 'empty')}")
                continue
            spec = as_dict(raw["toolSpec"], "toolSpec")
            for key, value in spec.items():
                if (
                    key not in ("name", "description", "inputSchema", "strict")
                    and value is not None
                ):
                    unsupported.append(f"toolSpec.{key}")
            schema = as_dict(spec.get("inputSchema") or {}, "toolSpec.inputSchema").get("json")
            tools.append(
                Tool(
                    as_str(spec.get("name"), "toolSpec.name"),
                    opt_str(spec.get("description"), "toolSpec.description"),
                    {} if schema is None else as_dict(schema, "toolSpec.inputSchema.json"),
                    spec.get("strict"),
                )
            )
        choice = config.get("toolChoice")
        if choice is not None:
            choice = as_dict(choice, "toolConfig.toolChoice")
            if "auto" in choice:
                tool_choice = ToolChoice("auto")
            elif "any" in choice:
                tool_choice = ToolChoice("required")
            elif "tool" in choice:
                name = as_dict(choice["tool"], "toolChoice.tool").get("name")
                tool_choice = ToolChoice("named", as_str(name, "toolChoice.tool.name"))
            else:
                raise MalformedInput("toolConfig.toolChoice must be auto, any or tool")

    structured = None
    output = req.get("outputConfig")
    if output is not None:
        fmt = as_dict(as_dict(output, "outputConfig").get("textFormat"), "outputConfig.textFormat")
        spec = as_dict(
            as_dict(fmt.get("structure"), "textFormat.structure").get("jsonSchema"),
            "textFormat.structure.jsonSchema",
        )
        try:
            schema = _decode(as_str(spec.get("schema"), "jsonSchema.schema"))
        except msgspec.DecodeError:
            raise MalformedInput("outputConfig's jsonSchema.schema is not JSON") from None
        structured = StructuredOutput(
            opt_str(spec.get("name"), "jsonSchema.name") or "response",
            as_dict(schema, "jsonSchema.schema"),
            None,
            opt_str(spec.get("description"), "jsonSchema.description"),
        )

    budget = None
    extra = req.get("additionalModelRequestFields")
    if extra is not None:
        for key, value in as_dict(extra, "additionalModelRequestFields").items():
            if key == "thinking" and value is not None:
                kind = as_dict(value, "thinking").get("type")
                if kind == "enabled":
                    budget = as_int(value.get("budget_tokens"), "thinking.budget_tokens")
                elif kind != "disabled":
                    unsupported.append(f"additionalModelRequestFields.thinking.{kind}")
            elif value is not None:
                unsupported.append(f"additionalModelRequestFields.{key}")
    inference = as_dict(req.get("inferenceConfig") or {}, "inferenceConfig")
    for key, value in inference.items():
        if key not in ("maxTokens", "temperature", "topP", "stopSequences") and value is not None:
            unsupported.append(f"inferenceConfig.{key}")
    handled = {
        "modelId", "messages", "system", "inferenceConfig", "toolConfig", "outputConfig",
        "additionalModelRequestFields",
    }  # fmt: skip
    for key, value in req.items():
        if key not in handled and value is not None:
            unsupported.append(key)
    max_tokens = inference.get("maxTokens")
    return Turn(
        model=opt_str(req.get("modelId"), "modelId") or model,
        messages=tuple(messages),
        system=tuple(system),
        tools=tuple(tools),
        tool_choice=tool_choice,
        structured_output=structured,
        stop=tuple(
            as_str(s, "stopSequences[]")
            for s in as_list(inference.get("stopSequences") or [], "inferenceConfig.stopSequences")
        ),
        max_output_tokens=None if max_tokens is None else as_int(max_tokens, "maxTokens"),
        temperature=_number(inference, "temperature"),
        top_p=_number(inference, "topP"),
        thinking_budget=budget,
        stream=stream,
        unsupported=tuple(dict.fromkeys(unsupported)),
    )


def write_request(
    turn: Turn, *, drop: frozenset[str] | set[str] = frozenset()
) -> tuple[dict[str, Any], list[str]]:
    """``turn`` as a Converse body, and the fields dropped (all in ``drop``).

    The model id and streaming go in the URL, which the caller builds. Raises
    :class:`Untranslatable` for the first field Converse cannot express and ``drop`` does not
    name.
    """
    refusals = _Refusals(drop)
    for field in turn.unsupported:
        refusals.refuse(field, "the translation layer cannot carry this field")
    messages: list[dict[str, Any]] = []
    for message in turn.messages:
        if message.role == "system":
            refusals.refuse(
                "messages.system", "Converse takes a system prompt only before the conversation"
            )
            continue
        messages.append({"role": message.role, "content": _blocks_out(message.parts, refusals)})
    body: dict[str, Any] = {"messages": messages}
    if turn.system:
        body["system"] = [{"text": t.text} for t in turn.system]

    budget = turn.thinking_budget
    if turn.reasoning_effort is not None:
        if turn.reasoning_effort == "none":
            budget = None
        elif turn.reasoning_effort in EFFORT_BUDGETS:
            budget = EFFORT_BUDGETS[turn.reasoning_effort]  # type: ignore[index]  # checked
        else:
            refusals.refuse("reasoning_effort", f"{turn.reasoning_effort!r} has no budget")
    limit = turn.max_output_tokens
    if budget is not None and limit is not None and budget >= limit:
        budget = limit - 1  # the caller's limit counts thinking too
        if budget < ANTHROPIC_MIN_BUDGET:
            refusals.refuse("reasoning_effort", f"max tokens {limit} leave no room for thinking")
            budget = None

    inference: dict[str, Any] = {}
    if turn.max_output_tokens is not None:
        inference["maxTokens"] = turn.max_output_tokens
    if turn.temperature is not None:
        inference["temperature"] = turn.temperature
    if turn.top_p is not None:
        inference["topP"] = turn.top_p
    if turn.stop:
        inference["stopSequences"] = list(turn.stop)
    if inference:
        body["inferenceConfig"] = inference

    if turn.tools:
        tools = []
        for tool in turn.tools:
            spec: dict[str, Any] = {"name": tool.name}
            if tool.description is not None:
                spec["description"] = tool.description
            spec["inputSchema"] = {"json": tool.parameters}
            if tool.strict is not None:
                spec["strict"] = tool.strict
            tools.append({"toolSpec": spec})
        config: dict[str, Any] = {"tools": tools}
        choice = turn.tool_choice
        if choice is not None:
            if choice.mode == "auto":
                config["toolChoice"] = {"auto": {}}
            elif choice.mode == "required":
                config["toolChoice"] = {"any": {}}
            elif choice.mode == "named":
                config["toolChoice"] = {"tool": {"name": choice.name}}
            else:
                refusals.refuse("tool_choice", "Converse cannot forbid calls to its tools")
        body["toolConfig"] = config
        if turn.parallel_tool_calls is False and (choice is None or choice.mode != "none"):
            refusals.refuse("parallel_tool_calls", "Converse cannot limit an answer to one call")
    so = turn.structured_output
    if so is not None:
        spec = {"schema": _encode(so.schema).decode(), "name": so.name}
        if so.description is not None:
            spec["description"] = so.description
        body["outputConfig"] = {
            "textFormat": {"type": "json_schema", "structure": {"jsonSchema": spec}}
        }
    if budget is not None:
        body["additionalModelRequestFields"] = {
            "thinking": {"type": "enabled", "budget_tokens": budget}
        }
    if turn.user is not None:
        refusals.refuse("user", "Converse requests carry no end-user id")
    return body, refusals.dropped


# -- answers ----------------------------------------------------------------------------------


def usage_in(raw: dict[str, Any]) -> TokenUsage:
    """Converse's usage as a :class:`TokenUsage`: its ``inputTokens`` excludes cache reads and
    writes, as Anthropic's does; the gateway's includes them."""
    read = count(raw, "cacheReadInputTokens")
    written = count(raw, "cacheWriteInputTokens")
    return TokenUsage(
        input_tokens=count(raw, "inputTokens") + read + written,
        output_tokens=count(raw, "outputTokens"),
        cached_input_tokens=read,
        cache_creation_tokens=written,
    )


def usage_out(usage: TokenUsage) -> dict[str, Any]:
    fresh = max(0, usage.input_tokens - usage.cached_input_tokens - usage.cache_creation_tokens)
    return {
        "inputTokens": fresh,
        "outputTokens": usage.output_tokens,
        "totalTokens": usage.input_tokens + usage.output_tokens,
        "cacheReadInputTokens": usage.cached_input_tokens,
        "cacheWriteInputTokens": usage.cache_creation_tokens,
    }


def read_answer(body: bytes | dict[str, Any], *, id: str = "", model: str = "") -> Answer:
    """A Converse answer as an :class:`Answer`; it names neither itself nor its model, so the
    caller passes them (the request id header, the URL's model id)."""
    raw = as_dict(_decode(body) if isinstance(body, bytes | bytearray) else body, "body")
    output = as_dict(raw.get("output"), "output")
    message = as_dict(output.get("message"), "output.message")
    unsupported: list[str] = []
    parts = _blocks_in(message.get("content") or [], unsupported)
    if unsupported:
        raise Untranslatable(unsupported[0], "the translation layer has no such part")
    stop = opt_str(raw.get("stopReason"), "stopReason")
    usage = raw.get("usage")
    return Answer(
        id=id,
        model=model,
        parts=parts,
        finish_reason=None if stop is None else STOP_IN.get(stop, "other"),
        usage=None if usage is None else usage_in(as_dict(usage, "usage")),
    )


def write_answer(answer: Answer) -> bytes:
    """``answer`` as a Converse answer body. A refusal is written as text; the stop sequence is
    named by the stop reason only."""
    body: dict[str, Any] = {
        "output": {"message": {"role": "assistant", "content": _blocks_out(answer.parts, None)}},
        "stopReason": _stop_reason(answer.finish_reason, answer.stop_sequence) or "end_turn",
        "usage": usage_out(answer.usage or TokenUsage()),
        "metrics": {"latencyMs": 0},
    }
    return _encode(body)


# -- streams ----------------------------------------------------------------------------------


class _ToolStart(msgspec.Struct):
    toolUseId: str
    name: str


class _Start(msgspec.Struct):
    toolUse: _ToolStart | None = None


class _BlockStart(msgspec.Struct):
    start: _Start
    contentBlockIndex: int = 0


class _ToolInput(msgspec.Struct):
    input: str = ""


class _Reasoning(msgspec.Struct):
    text: str | None = None
    signature: str | None = None
    redactedContent: str | None = None


class _Inner(msgspec.Struct):
    text: str | None = None
    toolUse: _ToolInput | None = None
    reasoningContent: _Reasoning | None = None


class _BlockDelta(msgspec.Struct):
    delta: _Inner
    contentBlockIndex: int = 0


class _Index(msgspec.Struct):
    contentBlockIndex: int = 0


class _Stop(msgspec.Struct):
    stopReason: str = "end_turn"


class _Metadata(msgspec.Struct):
    usage: dict[str, Any] | None = None


class _Exception(msgspec.Struct):
    message: str = ""


_start_decoder = msgspec.json.Decoder(_BlockStart)
_delta_decoder = msgspec.json.Decoder(_BlockDelta)
_index_decoder = msgspec.json.Decoder(_Index)
_stop_decoder = msgspec.json.Decoder(_Stop)
_metadata_decoder = msgspec.json.Decoder(_Metadata)
_exception_decoder = msgspec.json.Decoder(_Exception)


class StreamDecoder:
    """ConverseStream events, each as its event type and JSON payload (one event-stream frame),
    into :data:`Delta` events. ``id`` and ``model`` name the answer, which the stream does not.

    The stream is complete at ``metadata`` (after ``messageStop``), which carries the usage.
    Keeps only a few flags.
    """

    __slots__ = ("_done", "_id", "_model", "_started", "_stopped")

    def __init__(self, *, id: str = "", model: str = "") -> None:
        self._id = id
        self._model = model
        self._started = False
        self._stopped = False
        self._done = False

    def feed_event(self, event_type: str, payload: bytes) -> list[Delta]:
        out: list[Delta] = []
        try:
            self._event(event_type, payload, out)
        except msgspec.DecodeError as exc:
            raise MalformedInput(f"a stream event is not valid: {exc}") from None
        return out

    def close(self) -> list[Delta]:
        if self._done:
            return []
        self._done = True
        if self._stopped:
            return [MessageStop()]
        return [StreamError("internalServerException", "the upstream stream ended early")]

    def _start(self, out: list[Delta]) -> None:
        self._started = True
        out.append(MessageStart(self._id, self._model))

    def _event(self, kind: str, payload: bytes, out: list[Delta]) -> None:
        if not self._started and kind not in EXCEPTIONS:
            self._start(out)
        if kind == "contentBlockDelta":
            event = _delta_decoder.decode(payload)
            delta, index = event.delta, event.contentBlockIndex
            if delta.text is not None:
                out.append(TextDelta(index, delta.text))
            elif delta.toolUse is not None:
                out.append(ToolArgumentsDelta(index, delta.toolUse.input))
            elif delta.reasoningContent is not None:
                reasoning = delta.reasoningContent
                if reasoning.text is not None:
                    out.append(ThinkingDelta(index, reasoning.text))
                if reasoning.signature is not None:
                    out.append(SignatureDelta(index, reasoning.signature))
                if reasoning.redactedContent is not None:
                    out.append(RedactedThinkingPart(index, reasoning.redactedContent))
            else:
                raise Untranslatable("contentBlockDelta", "the translation layer has no such delta")
        elif kind == "contentBlockStart":
            event_start = _start_decoder.decode(payload)
            use = event_start.start.toolUse
            if use is None:
                raise Untranslatable("contentBlockStart", "the translation layer has no such part")
            out.append(ToolCallStart(event_start.contentBlockIndex, use.toolUseId, use.name))
        elif kind == "contentBlockStop":
            out.append(PartStop(_index_decoder.decode(payload).contentBlockIndex))
        elif kind == "messageStop":
            self._stopped = True
            out.append(Finish(STOP_IN.get(_stop_decoder.decode(payload).stopReason, "other")))
        elif kind == "metadata":
            usage = _metadata_decoder.decode(payload).usage
            if usage is not None:
                out.append(UsageDelta(usage_in(usage)))
            out.append(MessageStop())
            self._done = True
        elif kind in EXCEPTIONS:
            out.append(StreamError(kind, _exception_decoder.decode(payload).message))
            self._done = True
        # messageStart and event types added later carry nothing the model holds


Event = tuple[str, bytes]


class StreamEncoder:
    """:data:`Delta` events into ConverseStream events: ``(event type, JSON payload)`` pairs for
    the caller to frame. Numbers its own content blocks, so parts it has no block for leave no
    gap."""

    __slots__ = ("_block", "_finish", "_kind", "_next", "_part", "_usage")

    def __init__(self) -> None:
        self._usage: TokenUsage | None = None
        self._finish: Finish | None = None
        self._part = -1
        self._block = b"0"
        self._kind = ""
        self._next = 0

    def encode_many(self, deltas: list[Delta]) -> list[Event]:
        out: list[Event] = []
        for delta in deltas:
            out += self.encode(delta)
        return out

    def _close(self, out: list[Event]) -> None:
        if self._kind:
            out.append(("contentBlockStop", b'{"contentBlockIndex":' + self._block + b"}"))
            self._kind = ""
            self._part = -1

    def _open(self, part: int, kind: str, out: list[Event]) -> None:
        self._close(out)
        self._part = part
        self._kind = kind
        self._block = str(self._next).encode()
        self._next += 1

    def _delta(self, inner: bytes) -> Event:
        return (
            "contentBlockDelta",
            b'{"contentBlockIndex":' + self._block + b',"delta":' + inner + b"}",
        )

    def encode(self, delta: Delta) -> list[Event]:
        out: list[Event] = []
        if isinstance(delta, TextDelta):
            if self._part != delta.index or self._kind != "text":
                self._open(delta.index, "text", out)
            out.append(self._delta(b'{"text":' + _encode(delta.text) + b"}"))
        elif isinstance(delta, ToolArgumentsDelta):
            if self._part != delta.index or self._kind != "tool":
                raise MalformedInput("tool arguments for a part that is not open")
            out.append(self._delta(b'{"toolUse":{"input":' + _encode(delta.json) + b"}}"))
        elif isinstance(delta, ThinkingDelta | SignatureDelta | RedactedThinkingPart):
            if self._part != delta.index or self._kind != "reasoning":
                self._open(delta.index, "reasoning", out)
            if isinstance(delta, ThinkingDelta):
                inner = b'{"text":' + _encode(delta.text) + b"}"
            elif isinstance(delta, SignatureDelta):
                inner = b'{"signature":' + _encode(delta.signature) + b"}"
            else:
                inner = b'{"redactedContent":' + _encode(delta.data) + b"}"
            out.append(self._delta(b'{"reasoningContent":' + inner + b"}"))
        elif isinstance(delta, ToolCallStart):
            self._open(delta.index, "tool", out)
            start = {
                "contentBlockIndex": self._next - 1,
                "start": {"toolUse": {"toolUseId": delta.id, "name": delta.name}},
            }
            out.append(("contentBlockStart", _encode(start)))
        elif isinstance(delta, PartStop):
            if delta.index == self._part:
                self._close(out)
        elif isinstance(delta, MessageStart):
            out.append(("messageStart", b'{"role":"assistant"}'))
        elif isinstance(delta, Finish):
            self._close(out)
            reason = _stop_reason(delta.reason, delta.stop_sequence) or "end_turn"
            out.append(("messageStop", b'{"stopReason":"' + reason.encode() + b'"}'))
            self._finish = delta
        elif isinstance(delta, UsageDelta):
            self._usage = delta.usage
        elif isinstance(delta, MessageStop):
            self._close(out)
            if self._finish is None:
                out.append(("messageStop", b'{"stopReason":"end_turn"}'))
            metadata = {
                "usage": usage_out(self._usage or TokenUsage()),
                "metrics": {"latencyMs": 0},
            }
            out.append(("metadata", _encode(metadata)))
        else:
            assert isinstance(delta, StreamError)
            self._close(out)
            kind = delta.kind if delta.kind in EXCEPTIONS else "internalServerException"
            out.append((kind, _encode({"message": delta.message})))
        return out
