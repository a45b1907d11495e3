"""Gemini ``generateContent`` <-> the internal model: requests, answers and SSE streams.

The Gemini API (AI Studio) and Vertex AI share this body. The model name and streaming are in
the URL (``models/<model>:streamGenerateContent?alt=sse``), not the body: the request reader is
told them, and the writer leaves them to the caller.

Gemini attaches a thought signature to the part it belongs to (often a ``functionCall``) rather
than to a thought part of its own. A signature on a part that is not a thought is read as an
empty, signed :class:`Thinking` just before that part, and written back onto the part that
follows an empty signed thinking, so a signature survives a trip through any format that carries
thinking.

A function response names the function it answers; the model's tool result carries only the
call's id, so the writer looks the name up among the conversation's earlier calls. Calls without
an id (older models) are given ``<response id>-<n>`` (answers) or ``call-<n>`` (requests).
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
    opt_str,
    sse_fields,
)
from asgi_llmguard.providers.translate.effort import EFFORT_BUDGETS
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

FINISH_IN: dict[str, FinishReason] = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
}
#: Gemini ends an answer with function calls as ``STOP``; the reader makes it ``tool_calls``.
FINISH_OUT: dict[str, str] = {
    "stop": "STOP",
    "length": "MAX_TOKENS",
    "tool_calls": "STOP",
    "content_filter": "SAFETY",
    "pause": "OTHER",
    "other": "OTHER",
}
#: The name a structured output read from a Gemini request gets (Gemini's schema has none).
STRUCTURED_NAME = "response"
_MODE_OUT = {"auto": "AUTO", "none": "NONE", "required": "ANY", "named": "ANY"}
_MODE_IN = {"AUTO": "auto", "NONE": "none", "ANY": "required"}
#: The keys of a function declaration the model holds (``response``, ``behavior``, ... it does
#: not).
_DECLARATION_KEYS = frozenset({"name", "description", "parameters", "parametersJsonSchema"})
#: Generation settings that mean "nothing asked" with these values.
_NEUTRAL: dict[str, Any] = {"candidateCount": 1, "presencePenalty": 0, "frequencyPenalty": 0}


def _args(arguments: str, field: str) -> dict[str, Any]:
    try:
        value = _decode(arguments) if arguments else {}
    except msgspec.DecodeError:
        value = None
    if not isinstance(value, dict):
        raise Untranslatable(field, "tool call arguments are not a JSON object")
    return value


# -- parts ------------------------------------------------------------------------------------


def _image_in(part: dict[str, Any]) -> Image:
    if "inlineData" in part:
        blob = as_dict(part["inlineData"], "inlineData")
        return Image(
            data=as_str(blob.get("data"), "inlineData.data"),
            media_type=as_str(blob.get("mimeType"), "inlineData.mimeType"),
        )
    ref = as_dict(part["fileData"], "fileData")
    return Image(url=as_str(ref.get("fileUri"), "fileData.fileUri"))


def _result_in(raw: dict[str, Any], call_id: str) -> ToolResult:
    response = raw.get("response")
    response = {} if response is None else as_dict(response, "functionResponse.response")
    is_error = "error" in response and "output" not in response and len(response) == 1
    value = response.get("error") if is_error else response.get("output")
    if len(response) == 1 and isinstance(value, str):
        content: tuple[Text, ...] = (Text(value),)
    elif len(response) == 1 and isinstance(value, list) and all(isinstance(v, str) for v in value):
        content = tuple(Text(v) for v in value)
    elif not response:
        content = ()
    else:
        content, is_error = (Text(_encode(response).decode()),), False
    return ToolResult(call_id, content, is_error)


class _Ids:
    """Ids for function calls that have none, and the pairing of responses with calls."""

    __slots__ = ("next", "pending", "prefix")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.next = 0
        self.pending: dict[str, list[str]] = {}

    def call(self, raw: dict[str, Any]) -> str:
        call_id = raw.get("id")
        if call_id is None:
            call_id = f"{self.prefix}{self.next}"
            self.next += 1
        name = raw.get("name")
        if isinstance(name, str):
            self.pending.setdefault(name, []).append(as_str(call_id, "functionCall.id"))
        return as_str(call_id, "functionCall.id")

    def response(self, raw: dict[str, Any]) -> str:
        name = as_str(raw.get("name"), "functionResponse.name")
        waiting = self.pending.get(name) or []
        call_id = raw.get("id")
        if call_id is None:
            if not waiting:
                raise MalformedInput(f"a function response for {name!r} answers no call")
            return waiting.pop(0)
        call_id = as_str(call_id, "functionResponse.id")
        if call_id in waiting:
            waiting.remove(call_id)
        return call_id


def _parts_in(raw_parts: Any, ids: _Ids, unsupported: list[str]) -> list[Part]:
    parts: list[Part] = []
    for raw in as_list(raw_parts, "parts"):
        raw = as_dict(raw, "parts[]")
        signature = opt_str(raw.get("thoughtSignature"), "thoughtSignature")
        if raw.get("thought"):
            parts.append(Thinking(as_str(raw.get("text", ""), "text"), signature))
            continue
        if signature is not None:
            parts.append(Thinking("", signature))
        if "text" in raw:
            text = as_str(raw["text"], "text")
            if text or signature is None:
                parts.append(Text(text))
        elif "functionCall" in raw:
            call = as_dict(raw["functionCall"], "functionCall")
            args = call.get("args")
            args = {} if args is None else as_dict(args, "functionCall.args")
            call_id = ids.call(call)
            parts.append(
                ToolCall(
                    call_id, as_str(call.get("name"), "functionCall.name"), _encode(args).decode()
                )
            )
        elif "functionResponse" in raw:
            response = as_dict(raw["functionResponse"], "functionResponse")
            parts.append(_result_in(response, ids.response(response)))
        elif "inlineData" in raw or "fileData" in raw:
            image = _image_in(raw)
            if image.url is None and not (image.media_type or "").startswith("image/"):
                unsupported.append("parts.inlineData")
            else:
                parts.append(image)
        else:
            kind = next((k for k in raw if k not in ("thoughtSignature", "thought")), "empty")
            unsupported.append(f"parts.{kind}")
    return parts


def _image_out(image: Image) -> dict[str, Any]:
    if image.url is not None:
        inline = data_uri(image.url)
        if inline is None:
            return {"fileData": {"fileUri": image.url}}
        media_type, data = inline
    else:
        media_type, data = image.media_type or "", image.data or ""
    return {"inlineData": {"mimeType": media_type, "data": data}}


def _parts_out(
    parts: tuple[Part, ...], names: dict[str, str], refusals: _Refusals | None
) -> list[dict[str, Any]]:
    """Gemini parts for ``parts``; ``names`` maps call ids to function names, and learns the
    calls met here. Without ``refusals`` (answers), what has no part raises."""
    out: list[dict[str, Any]] = []
    carried: str | None = None  # a signature waiting for the part it belongs to
    last = len(parts) - 1
    for i, part in enumerate(parts):
        item: dict[str, Any]
        if isinstance(part, Thinking):
            if (
                not part.text
                and part.signature
                and i < last
                and not isinstance(parts[i + 1], Thinking | RedactedThinking)
            ):
                carried = part.signature
                continue
            item = {"text": part.text, "thought": True}
            if part.signature:
                item["thoughtSignature"] = part.signature
            out.append(item)
            continue
        if isinstance(part, Text):
            item = {"text": part.text}
        elif isinstance(part, ToolCall):
            item = {
                "functionCall": {
                    "id": part.id,
                    "name": part.name,
                    "args": _args(part.arguments, "messages.tool_calls.arguments"),
                }
            }
            names[part.id] = part.name
        elif isinstance(part, ToolResult):
            name = names.get(part.call_id)
            if name is None:
                raise Untranslatable(
                    "messages.tool_result.tool_use_id",
                    f"no earlier call has the id {part.call_id!r}",
                )
            texts = []
            for c in part.content:
                if isinstance(c, Text):
                    texts.append(c.text)
                elif refusals is not None:
                    refusals.refuse(
                        "messages.tool_result.image", "Gemini function responses hold JSON only"
                    )
            key = "error" if part.is_error else "output"
            response: dict[str, Any] = (
                {} if not texts else {key: texts[0] if len(texts) == 1 else texts}
            )
            if part.is_error and not texts:
                response = {"error": ""}
            item = {"functionResponse": {"id": part.call_id, "name": name, "response": response}}
        elif isinstance(part, Image):
            item = _image_out(part)
        elif refusals is None:  # an answer: a refusal is text, redacted thinking has no part
            if isinstance(part, Refusal):
                item = {"text": part.text}
            elif isinstance(part, RedactedThinking):
                continue
            else:
                raise Untranslatable(f"content.{type(part).__name__}", "not an answer part")
        elif isinstance(part, RedactedThinking):
            refusals.refuse("messages.redacted_thinking", "Gemini has no redacted thinking")
            continue
        else:
            refusals.refuse("messages.refusal", "Gemini has no refusal part")
            continue
        if carried is not None:
            item["thoughtSignature"] = carried
            carried = None
        out.append(item)
    return out


# -- requests ---------------------------------------------------------------------------------


def read_request(body: bytes | dict[str, Any], *, model: str = "", stream: bool = False) -> Turn:
    """A ``generateContent`` request body as a :class:`Turn`; ``model`` and ``stream`` come from
    the URL the body was sent to."""
    req = as_dict(_decode(body) if isinstance(body, bytes | bytearray) else body, "body")
    unsupported: list[str] = []
    ids = _Ids("call-")
    system: tuple[Text, ...] = ()
    instruction = req.get("systemInstruction", req.get("system_instruction"))
    if instruction is not None:
        texts = []
        for part in _parts_in(
            as_dict(instruction, "systemInstruction").get("parts", []), ids, unsupported
        ):
            if isinstance(part, Text):
                texts.append(part)
            else:
                unsupported.append("systemInstruction.parts")
        system = tuple(texts)
    messages = []
    for raw in as_list(req.get("contents"), "contents"):
        raw = as_dict(raw, "contents[]")
        role = raw.get("role", "user")
        if role not in ("user", "model", "function"):
            raise MalformedInput(f"content role {role!r} is not user or model")
        parts = tuple(_parts_in(raw.get("parts", []), ids, unsupported))
        messages.append(Message("assistant" if role == "model" else "user", parts))

    tools: list[Tool] = []
    for raw in as_list(req.get("tools") or [], "tools"):
        raw = as_dict(raw, "tools[]")
        for key, value in raw.items():
            if key != "functionDeclarations":
                if value is not None:
                    unsupported.append(f"tools.{key}")
                continue
            for decl in as_list(value, "tools[].functionDeclarations"):
                decl = as_dict(decl, "functionDeclarations[]")
                schema = decl.get("parametersJsonSchema", decl.get("parameters"))
                for key, value in decl.items():
                    if key not in _DECLARATION_KEYS and value is not None:
                        unsupported.append(f"functionDeclarations.{key}")
                tools.append(
                    Tool(
                        as_str(decl.get("name"), "functionDeclarations[].name"),
                        opt_str(decl.get("description"), "functionDeclarations[].description"),
                        {}
                        if schema is None
                        else as_dict(schema, "functionDeclarations[].parametersJsonSchema"),
                    )
                )
    tool_choice = None
    config = req.get("toolConfig")
    if config is not None:
        fcc = as_dict(
            as_dict(config, "toolConfig").get("functionCallingConfig") or {},
            "functionCallingConfig",
        )
        mode = as_str(fcc.get("mode", "AUTO"), "functionCallingConfig.mode")
        allowed = as_list(fcc.get("allowedFunctionNames") or [], "allowedFunctionNames")
        if mode not in _MODE_IN:
            unsupported.append(f"toolConfig.functionCallingConfig.mode.{mode}")
        elif mode == "ANY" and len(allowed) == 1:
            tool_choice = ToolChoice("named", as_str(allowed[0], "allowedFunctionNames[]"))
        else:
            if allowed:
                unsupported.append("toolConfig.functionCallingConfig.allowedFunctionNames")
            tool_choice = ToolChoice(_MODE_IN[mode])  # type: ignore[arg-type]

    gen = as_dict(req.get("generationConfig") or {}, "generationConfig")
    structured = None
    mime = gen.get("responseMimeType")
    schema = gen.get("responseJsonSchema", gen.get("responseSchema"))
    if schema is not None and mime == "application/json":
        structured = StructuredOutput(
            STRUCTURED_NAME, as_dict(schema, "generationConfig.responseJsonSchema")
        )
    elif mime not in (None, "text/plain") or schema is not None:
        unsupported.append("generationConfig.responseMimeType")
    budget = None
    effort = None
    thinking = gen.get("thinkingConfig")
    if thinking is not None:
        thinking = as_dict(thinking, "generationConfig.thinkingConfig")
        raw_budget = thinking.get("thinkingBudget")
        level = thinking.get("thinkingLevel")
        if raw_budget is not None:
            value = as_int(raw_budget, "thinkingBudget")
            if value == 0:
                effort = "none"
            elif value > 0:
                budget = value
        elif level is not None:
            effort = as_str(level, "thinkingLevel").lower()
    handled_gen = {
        "maxOutputTokens", "temperature", "topP", "stopSequences", "responseMimeType",
        "responseJsonSchema", "responseSchema", "thinkingConfig",
    }  # fmt: skip
    for key, value in gen.items():
        if key not in handled_gen and value is not None and _NEUTRAL.get(key, ...) != value:
            unsupported.append(f"generationConfig.{key}")
    handled = {
        "contents",
        "systemInstruction",
        "system_instruction",
        "tools",
        "toolConfig",
        "generationConfig",
    }
    for key, value in req.items():
        if key not in handled and value is not None:
            unsupported.append(key)
    max_tokens = gen.get("maxOutputTokens")
    temperature = gen.get("temperature")
    top_p = gen.get("topP")
    return Turn(
        model=model,
        messages=tuple(messages),
        system=system,
        tools=tuple(tools),
        tool_choice=tool_choice,
        structured_output=structured,
        stop=tuple(
            as_str(s, "stopSequences[]")
            for s in as_list(gen.get("stopSequences") or [], "stopSequences")
        ),
        max_output_tokens=None if max_tokens is None else as_int(max_tokens, "maxOutputTokens"),
        temperature=None if temperature is None else _number(temperature, "temperature"),
        top_p=None if top_p is None else _number(top_p, "topP"),
        reasoning_effort=effort,
        thinking_budget=budget,
        stream=stream,
        unsupported=tuple(dict.fromkeys(unsupported)),
    )


def _number(value: Any, where: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise MalformedInput(f"{where} must be a number")
    return float(value)


def write_request(
    turn: Turn, *, drop: frozenset[str] | set[str] = frozenset()
) -> tuple[dict[str, Any], list[str]]:
    """``turn`` as a ``generateContent`` body, and the fields dropped (all in ``drop``).

    The model and streaming go in the URL, which the caller builds. Raises
    :class:`Untranslatable` for the first field Gemini cannot express and ``drop`` does not name.
    """
    refusals = _Refusals(drop)
    for field in turn.unsupported:
        refusals.refuse(field, "the translation layer cannot carry this field")
    names: dict[str, str] = {}
    contents: list[dict[str, Any]] = []
    for message in turn.messages:
        if message.role == "system":
            refusals.refuse(
                "messages.system", "Gemini takes a system instruction only before the conversation"
            )
            continue
        role = "model" if message.role == "assistant" else "user"
        contents.append({"role": role, "parts": _parts_out(message.parts, names, refusals)})
    body: dict[str, Any] = {"contents": contents}
    if turn.system:
        body["systemInstruction"] = {"parts": [{"text": t.text} for t in turn.system]}
    if turn.tools:
        decls = []
        for tool in turn.tools:
            decl: dict[str, Any] = {"name": tool.name}
            if tool.description is not None:
                decl["description"] = tool.description
            decl["parametersJsonSchema"] = tool.parameters
            if tool.strict:
                refusals.refuse("tools.strict", "Gemini function declarations have no strict mode")
            decls.append(decl)
        body["tools"] = [{"functionDeclarations": decls}]
        if turn.tool_choice is not None:
            fcc: dict[str, Any] = {"mode": _MODE_OUT[turn.tool_choice.mode]}
            if turn.tool_choice.mode == "named":
                fcc["allowedFunctionNames"] = [turn.tool_choice.name]
            body["toolConfig"] = {"functionCallingConfig": fcc}
        if turn.parallel_tool_calls is False and (
            turn.tool_choice is None or turn.tool_choice.mode != "none"
        ):
            refusals.refuse("parallel_tool_calls", "Gemini cannot limit an answer to one call")
    gen: dict[str, Any] = {}
    if turn.max_output_tokens is not None:
        gen["maxOutputTokens"] = turn.max_output_tokens
    if turn.temperature is not None:
        gen["temperature"] = turn.temperature
    if turn.top_p is not None:
        gen["topP"] = turn.top_p
    if turn.stop:
        gen["stopSequences"] = list(turn.stop)
    so = turn.structured_output
    if so is not None:
        if so.description is not None:
            refusals.refuse(
                "response_format.json_schema.description",
                "Gemini's response schema has no description",
            )
        gen["responseMimeType"] = "application/json"
        gen["responseJsonSchema"] = so.schema
    budget = turn.thinking_budget
    if turn.reasoning_effort is not None:
        if turn.reasoning_effort == "none":
            budget = 0
        elif turn.reasoning_effort in EFFORT_BUDGETS:
            budget = EFFORT_BUDGETS[turn.reasoning_effort]  # type: ignore[index]  # checked
        else:
            refusals.refuse("reasoning_effort", f"{turn.reasoning_effort!r} has no budget")
    if budget is not None:
        gen["thinkingConfig"] = {"thinkingBudget": budget, "includeThoughts": budget > 0}
    if gen:
        body["generationConfig"] = gen
    if turn.user is not None:
        refusals.refuse("user", "Gemini requests carry no end-user id")
    return body, refusals.dropped


# -- answers ----------------------------------------------------------------------------------


def usage_in(raw: dict[str, Any]) -> TokenUsage:
    """Gemini's ``usageMetadata`` as a :class:`TokenUsage`: the prompt includes the cached
    content and the tool-use prompt; the output is the candidates and the thoughts."""
    thoughts = count(raw, "thoughtsTokenCount")
    return TokenUsage(
        input_tokens=count(raw, "promptTokenCount") + count(raw, "toolUsePromptTokenCount"),
        output_tokens=count(raw, "candidatesTokenCount") + thoughts,
        cached_input_tokens=count(raw, "cachedContentTokenCount"),
        reasoning_tokens=thoughts,
    )


def usage_out(usage: TokenUsage) -> dict[str, Any]:
    out: dict[str, Any] = {
        "promptTokenCount": usage.input_tokens,
        "candidatesTokenCount": max(0, usage.output_tokens - usage.reasoning_tokens),
        "totalTokenCount": usage.input_tokens + usage.output_tokens,
    }
    if usage.cached_input_tokens:
        out["cachedContentTokenCount"] = usage.cached_input_tokens
    if usage.reasoning_tokens:
        out["thoughtsTokenCount"] = usage.reasoning_tokens
    return out


def _finish(reason: str | None, calls: bool) -> FinishReason | None:
    if reason is None or reason == "FINISH_REASON_UNSPECIFIED":
        return None
    finish = FINISH_IN.get(reason, "other")
    return "tool_calls" if calls and finish == "stop" else finish


def read_answer(body: bytes | dict[str, Any]) -> Answer:
    """A ``generateContent`` answer as an :class:`Answer`. A prompt blocked before any candidate
    is an empty answer finished by ``content_filter``."""
    raw = as_dict(_decode(body) if isinstance(body, bytes | bytearray) else body, "body")
    candidates = as_list(raw.get("candidates") or [], "candidates")
    response_id = opt_str(raw.get("responseId"), "responseId") or ""
    usage = raw.get("usageMetadata")
    parts: list[Part] = []
    finish: FinishReason | None = None
    if len(candidates) > 1:
        raise Untranslatable("candidates", "only answers with exactly one candidate translate")
    if candidates:
        candidate = as_dict(candidates[0], "candidates[0]")
        content = candidate.get("content")
        if content is not None:
            parts = _parts_in(
                as_dict(content, "content").get("parts") or [], _Ids(f"{response_id}-"), []
            )
        calls = any(isinstance(p, ToolCall) for p in parts)
        finish = _finish(opt_str(candidate.get("finishReason"), "finishReason"), calls)
    elif raw.get("promptFeedback") is not None:
        finish = "content_filter"
    return Answer(
        id=response_id,
        model=opt_str(raw.get("modelVersion"), "modelVersion") or "",
        parts=tuple(parts),
        finish_reason=finish,
        usage=None if usage is None else usage_in(as_dict(usage, "usageMetadata")),
    )


def write_answer(answer: Answer) -> bytes:
    """``answer`` as a ``generateContent`` answer body. A refusal is written as text."""
    candidate: dict[str, Any] = {
        "content": {"role": "model", "parts": _parts_out(answer.parts, {}, None)},
        "index": 0,
    }
    if answer.finish_reason is not None:
        candidate["finishReason"] = FINISH_OUT[answer.finish_reason]
    body: dict[str, Any] = {"candidates": [candidate]}
    if answer.usage is not None:
        body["usageMetadata"] = usage_out(answer.usage)
    body["modelVersion"] = answer.model
    body["responseId"] = answer.id
    return _encode(body)


# -- streams ----------------------------------------------------------------------------------


class _Call(msgspec.Struct):
    name: str
    id: str | None = None
    args: dict[str, Any] | None = None


class _Part(msgspec.Struct):
    text: str | None = None
    thought: bool = False
    thoughtSignature: str | None = None
    functionCall: _Call | None = None
    inlineData: dict[str, Any] | None = None
    executableCode: dict[str, Any] | None = None


class _Content(msgspec.Struct):
    parts: list[_Part] = []


class _Candidate(msgspec.Struct):
    content: _Content | None = None
    finishReason: str | None = None
    index: int = 0


class _Chunk(msgspec.Struct):
    candidates: list[_Candidate] = []
    usageMetadata: dict[str, Any] | None = None
    modelVersion: str = ""
    responseId: str = ""
    promptFeedback: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


_chunk_decoder = msgspec.json.Decoder(_Chunk)
_NONE, _TEXT, _THINKING, _TOOL = 0, 1, 2, 3


class StreamDecoder:
    """Gemini SSE bytes (``alt=sse``), fed as they arrive, into :data:`Delta` events.

    Each event is a partial answer; texts continue the open part, a function call arrives whole.
    Gemini sends no terminal event: a stream is complete when a finish reason came before it
    ended. Keeps only the unfinished event and a few counters.
    """

    __slots__ = (
        "_calls",
        "_done",
        "_finished",
        "_id",
        "_kind",
        "_next",
        "_open",
        "_splitter",
        "_started",
        "_usage",
    )

    def __init__(self, max_event: int = 8 << 20) -> None:
        self._splitter = EventSplitter(max_event)
        self._started = False
        self._finished = False
        self._done = False
        self._next = 0
        self._open = -1
        self._kind = _NONE
        self._calls = 0
        self._id = ""
        self._usage: dict[str, Any] | None = None

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
            self._done = True
            if self._finished:
                out.append(MessageStop())
            else:
                out.append(StreamError("api_error", "the upstream stream ended early"))
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
        try:
            chunk = _chunk_decoder.decode(data)
        except msgspec.DecodeError as exc:
            raise MalformedInput(f"a stream chunk is not valid: {exc}") from None
        if chunk.error is not None:
            error = chunk.error
            out.append(
                StreamError(
                    str(error.get("status") or "api_error"), str(error.get("message") or "")
                )
            )
            return
        if not self._started:
            self._started = True
            self._id = chunk.responseId
            out.append(MessageStart(chunk.responseId, chunk.modelVersion))
        if len(chunk.candidates) > 1 or (chunk.candidates and chunk.candidates[0].index):
            raise Untranslatable("candidates", "only streams of one candidate translate")
        finish = None
        for candidate in chunk.candidates:
            if candidate.content is not None:
                for part in candidate.content.parts:
                    self._part(part, out)
            finish = candidate.finishReason
        if not chunk.candidates and chunk.promptFeedback is not None:
            finish = "SAFETY"
        if finish is not None and finish != "FINISH_REASON_UNSPECIFIED":
            if self._kind != _NONE:
                out.append(PartStop(self._open))
                self._kind = _NONE
            self._finished = True
            out.append(Finish(_finish(finish, self._calls > 0) or "other"))
        if chunk.usageMetadata is not None and chunk.usageMetadata != self._usage:
            self._usage = chunk.usageMetadata
            out.append(UsageDelta(usage_in(chunk.usageMetadata)))

    def _part(self, part: _Part, out: list[Delta]) -> None:
        signature = part.thoughtSignature
        if part.thought:
            index = self._open if self._kind == _THINKING else self._open_part(_THINKING, out)
            if part.text:
                out.append(ThinkingDelta(index, part.text))
            if signature:
                out.append(SignatureDelta(index, signature))
            return
        if signature:
            out.append(SignatureDelta(self._open_part(_THINKING, out), signature))
        if part.functionCall is not None:
            call = part.functionCall
            call_id = call.id if call.id is not None else f"{self._id}-{self._calls}"
            self._calls += 1
            index = self._open_part(_TOOL, out)
            out.append(ToolCallStart(index, call_id, call.name))
            out.append(ToolArgumentsDelta(index, _encode(call.args or {}).decode()))
            out.append(PartStop(index))
            self._kind = _NONE
        elif part.text is not None:
            if part.text:
                index = self._open if self._kind == _TEXT else self._open_part(_TEXT, out)
                out.append(TextDelta(index, part.text))
        else:
            kind = "inlineData" if part.inlineData is not None else "executableCode"
            raise Untranslatable(f"parts.{kind}", "the translation layer has no such part")


def _chunk(parts: bytes, tail: bytes) -> bytes:
    return (
        b'data: {"candidates":[{"content":{"role":"model","parts":['
        + parts
        + b']},"index":0}]'
        + tail
        + b"}\n\n"
    )


class StreamEncoder:
    """:data:`Delta` events into Gemini SSE bytes (``alt=sse``), one partial answer per event.

    A function call is written whole when its part stops, so its arguments are held until then
    (one call's arguments at most). The finish reason and usage go into the last event.
    """

    __slots__ = ("_args", "_call", "_finish", "_tail", "_usage")

    def __init__(self) -> None:
        self._tail = b',"modelVersion":"","responseId":""'
        self._call: ToolCallStart | None = None
        self._args: list[str] = []
        self._finish: Finish | None = None
        self._usage: TokenUsage | None = None

    def encode_many(self, deltas: list[Delta]) -> bytes:
        return b"".join([self.encode(d) for d in deltas])

    def _flush_call(self) -> bytes:
        call, self._call = self._call, None
        if call is None:
            return b""
        args = _args("".join(self._args), "tool_calls.arguments")
        self._args = []
        part = {"functionCall": {"id": call.id, "name": call.name, "args": args}}
        return _chunk(_encode(part), self._tail)

    def encode(self, delta: Delta) -> bytes:
        if isinstance(delta, TextDelta):
            return _chunk(b'{"text":' + _encode(delta.text) + b"}", self._tail)
        if isinstance(delta, ThinkingDelta):
            return _chunk(b'{"text":' + _encode(delta.text) + b',"thought":true}', self._tail)
        if isinstance(delta, ToolArgumentsDelta):
            if self._call is None or self._call.index != delta.index:
                raise MalformedInput("tool arguments for a part that is not open")
            self._args.append(delta.json)
            return b""
        if isinstance(delta, SignatureDelta):
            part = (
                b'{"text":"","thought":true,"thoughtSignature":' + _encode(delta.signature) + b"}"
            )
            return _chunk(part, self._tail)
        if isinstance(delta, ToolCallStart):
            head = self._flush_call()
            self._call = delta
            return head
        if isinstance(delta, PartStop):
            return (
                self._flush_call()
                if self._call is not None and self._call.index == delta.index
                else b""
            )
        if isinstance(delta, MessageStart):
            self._tail = (
                b',"modelVersion":' + _encode(delta.model) + b',"responseId":' + _encode(delta.id)
            )
            return b""
        if isinstance(delta, Finish):
            self._finish = delta
            return self._flush_call()
        if isinstance(delta, UsageDelta):
            self._usage = delta.usage
            return b""
        if isinstance(delta, MessageStop):
            reason = FINISH_OUT[self._finish.reason] if self._finish is not None else "STOP"
            tail = (
                b',"usageMetadata":' + _encode(usage_out(self._usage or TokenUsage())) + self._tail
            )
            return self._flush_call() + (
                b'data: {"candidates":[{"content":{"role":"model","parts":[]},"finishReason":"'
                + reason.encode() + b'","index":0}]' + tail + b"}\n\n"
            )  # fmt: skip
        if isinstance(delta, StreamError):
            error = {"error": {"code": 500, "message": delta.message, "status": delta.kind}}
            return self._flush_call() + b"data: " + _encode(error) + b"\n\n"
        # Gemini has no redacted thinking: like Chat Completions, it is left out of answers.
        assert isinstance(delta, RedactedThinkingPart)
        return b""
