"""The Gemini API (Google AI Studio) as the fake speaks it, from Google's documented wire format.

``POST /{v1beta,v1}/models/{model}:generateContent`` answers a ``GenerateContentResponse``:
``candidates[].content.parts[].text``, ``finishReason``, ``usageMetadata`` and ``modelVersion``.
``:streamGenerateContent`` answers the same object in pieces: with ``?alt=sse`` one
``data: {...}`` event per piece (``\\r\\n\\r\\n`` after each, as Google sends them), without it one
JSON array whose elements are the pieces, streamed as they are produced. Every piece carries
``usageMetadata``: the prompt's counts and the candidates' so far; the last one is final.
``:countTokens`` answers ``{"totalTokens"}``, ``:embedContent`` ``{"embedding": {"values"}}`` and
``:batchEmbedContents`` ``{"embeddings": [...]}``. ``GET /{v1beta,v1}/models[/{model}]`` lists
models. Errors are ``{"error": {"code", "message", "status"}}``; a 429 carries a
``google.rpc.RetryInfo`` with ``retryDelay`` in ``error.details`` when a retry-after is set.

Tokens follow the fake's rule: prompt tokens are the words of every ``text`` part of
``contents`` and ``systemInstruction``; one candidate token per reply chunk;
``generationConfig.maxOutputTokens`` caps them (``finishReason: "MAX_TOKENS"``). The cached and
reasoning knobs give ``cachedContentTokenCount`` (part of the prompt) and
``thoughtsTokenCount`` (beside the candidates, in ``totalTokenCount``).
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import orjson

from asgi_llmguard.testing._common import (
    ApiError,
    Completion,
    Generation,
    StreamPlan,
    complete,
    count_tokens,
    new_id,
)
from asgi_llmguard.testing._tools import (
    Script,
    ToolCall,
    plan_calls,
    quote_results,
    result_text,
    structured_reply,
)

#: HTTP status -> the canonical status name (``google.rpc.Code``) Google puts in ``error.status``
#: (the Gemini API and Vertex AI alike).
STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "INVALID_ARGUMENT",
    409: "ABORTED",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
_MODELS = ("gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite", "gemini-2.0-flash")
_EMBEDDING_SIZE = 8


def error_body(status: int, message: str, *, retry_delay: float | None = None) -> dict[str, Any]:
    """``{"error": {"code", "message", "status"}}``; a 429 with ``retry_delay`` carries a
    ``RetryInfo`` detail."""
    fallback = "FAILED_PRECONDITION" if status < 500 else "UNKNOWN"
    error: dict[str, Any] = {
        "code": status,
        "message": message,
        "status": STATUS_NAMES.get(status, fallback),
    }
    if status == 429 and retry_delay is not None:
        delay = str(int(retry_delay)) if retry_delay == int(retry_delay) else str(retry_delay)
        error["details"] = [{"@type": RETRY_INFO, "retryDelay": f"{delay}s"}]
    return {"error": error}


def field(body: dict[str, Any], camel: str, snake: str) -> Any:
    """A request field by its JSON name or its proto name (Google's APIs accept both)."""
    return body.get(camel, body.get(snake))


def words_in_parts(content: Any) -> int:
    """The words of every ``text`` part of one ``Content``."""
    if not isinstance(content, dict):
        return 0
    parts = content.get("parts")
    if not isinstance(parts, list):
        return 0
    return sum(
        count_tokens(part["text"])
        for part in parts
        if isinstance(part, dict) and isinstance(part.get("text"), str)
    )


_NO_CONTENTS = "* GenerateContentRequest.contents: contents is not specified"


def prompt_words(body: dict[str, Any], *, empty: str = _NO_CONTENTS) -> int:
    """Words in every ``contents[].parts[].text`` and in ``systemInstruction``; a request
    without ``contents`` is refused with ``empty``."""
    contents = body.get("contents")
    if isinstance(contents, dict):
        contents = [contents]
    if not isinstance(contents, list) or not contents:
        raise ApiError(400, empty)
    words = sum(words_in_parts(content) for content in contents)
    return words + words_in_parts(field(body, "systemInstruction", "system_instruction"))


def max_output_tokens(body: dict[str, Any]) -> int | None:
    """``generationConfig.maxOutputTokens``, or ``None``; a bad one is a 400."""
    config = field(body, "generationConfig", "generation_config")
    if config is None:
        return None
    if not isinstance(config, dict):
        raise ApiError(400, "Invalid value at 'generation_config': expected an object")
    limit = field(config, "maxOutputTokens", "max_output_tokens")
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ApiError(400, "Invalid value at 'generation_config.max_output_tokens'")
    return limit


def response(
    model: str,
    text: str,
    *,
    finish: str | None,
    usage: dict[str, Any] | None,
    response_id: str,
    created: str | None = None,
) -> dict[str, Any]:
    """A ``GenerateContentResponse`` with one candidate saying ``text``; ``created``: Vertex
    AI's ``createTime``."""
    candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}}
    if finish is not None:
        candidate["finishReason"] = finish
    candidate["index"] = 0
    answer: dict[str, Any] = {"candidates": [candidate]}
    if usage is not None:
        answer["usageMetadata"] = usage
    answer["modelVersion"] = model
    if created is not None:
        answer["createTime"] = created
    answer["responseId"] = response_id
    return answer


def _plan(
    model: str, body: dict[str, Any], generation: Generation
) -> tuple[Completion, list[ToolCall]]:
    calls, reply = _script(model, body, generation)
    c = complete(
        model,
        reply,
        chunks=generation.chunks,
        max_tokens=max_output_tokens(body),
        prompt_words=prompt_words(body),
    )
    if calls:
        pieces = tuple(piece for call in calls for piece in call.pieces)
        c = Completion(c.model, pieces, False, c.prompt_tokens)
    return c, calls


def _parts(content: Any, kind: str) -> list[dict[str, Any]]:
    parts = content.get("parts") if isinstance(content, dict) else None
    if not isinstance(parts, list):
        return []
    snake = "function_call" if kind == "functionCall" else "function_response"
    found = [p.get(kind, p.get(snake)) for p in parts if isinstance(p, dict)]
    return [f for f in found if isinstance(f, dict)]


def _check_function_turns(contents: list[Any]) -> None:
    """Gemini's 400s: a function response turn right after a function call turn, with as many
    response parts as there were calls."""
    for i, content in enumerate(contents):
        responses = _parts(content, "functionResponse")
        calls = _parts(contents[i - 1], "functionCall") if i else []
        if responses and not calls:
            raise ApiError(
                400,
                "Please ensure that function response turn comes immediately after a function "
                "call turn.",
            )
        if calls and len(responses) != len(calls):
            raise ApiError(
                400,
                "Please ensure that the number of function response parts is equal to the "
                "number of function call parts of the function call turn.",
            )


def _response_text(response: Any) -> str:
    """A ``functionResponse.response`` as text: its only string value, else its JSON."""
    if isinstance(response, dict) and len(response) == 1:
        (value,) = response.values()
        if isinstance(value, str):
            return value
    return result_text(response)


def signs_calls(model: str) -> bool:
    """Gemini 3 models sign their function calls and require the signatures back."""
    return model.removeprefix("models/").startswith("gemini-3")


def _signature(key: str) -> str:
    return base64.b64encode(hashlib.sha256(f"signature:{key}".encode()).digest()).decode()


def _check_signatures(contents: list[Any]) -> None:
    """Gemini 3: in the current turn (since the last user text), the first function call of
    every model step must carry the ``thoughtSignature`` it was answered with."""
    start = 0
    for i, content in enumerate(contents):
        if not isinstance(content, dict) or content.get("role", "user") != "user":
            continue
        parts = content.get("parts")
        if isinstance(parts, list) and any(isinstance(p, dict) and "text" in p for p in parts):
            start = i
    for i in range(start, len(contents)):
        parts = contents[i].get("parts") if isinstance(contents[i], dict) else None
        calls = [
            p
            for p in (parts if isinstance(parts, list) else [])
            if isinstance(p, dict) and isinstance(field(p, "functionCall", "function_call"), dict)
        ]
        if calls and not field(calls[0], "thoughtSignature", "thought_signature"):
            name = field(calls[0], "functionCall", "function_call").get("name")
            raise ApiError(
                400,
                "Function call is missing a thought_signature in functionCall parts. This is "
                "required for tools to work correctly, and missing thought_signature may lead "
                f"to degraded model performance. Additional data, function call `default_api:"
                f"{name}` , position {i + 1}. Please refer to "
                "https://ai.google.dev/gemini-api/docs/thought-signatures for more details.",
            )


def _script(model: str, body: dict[str, Any], generation: Generation) -> tuple[list[ToolCall], str]:
    contents = body.get("contents")
    contents = [contents] if isinstance(contents, dict) else contents
    contents = contents if isinstance(contents, list) and contents else [{}]
    _check_function_turns(contents)
    if signs_calls(model):
        _check_signatures(contents)
    script = generation.script
    structured = _structured(body, script)
    responses = _parts(contents[-1], "functionResponse")
    if responses:
        quoted = quote_results([_response_text(r.get("response")) for r in responses])
        return [], structured or (quoted if script.tool_call is not None else generation.reply)
    offered: list[tuple[str, Any]] = []
    tools = body.get("tools")
    for tool in tools if isinstance(tools, list) else []:
        declarations = field(tool, "functionDeclarations", "function_declarations")
        for declaration in declarations if isinstance(declarations, list) else []:
            if isinstance(declaration, dict) and isinstance(declaration.get("name"), str):
                schema = declaration.get("parameters") or field(
                    declaration, "parametersJsonSchema", "parameters_json_schema"
                )
                offered.append((declaration["name"], schema or {}))
    config = field(body, "toolConfig", "tool_config")
    calling = (
        field(config, "functionCallingConfig", "function_calling_config")
        if isinstance(config, dict)
        else None
    )
    mode = calling.get("mode") if isinstance(calling, dict) else None
    allowed = (
        field(calling, "allowedFunctionNames", "allowed_function_names")
        if isinstance(calling, dict)
        else None
    )
    forced = allowed[0] if mode == "ANY" and isinstance(allowed, list) and allowed else None
    turn = sum(1 for c in contents if isinstance(c, dict) and c.get("role") == "model")
    if mode != "NONE":
        calls = plan_calls(script, offered, turn=turn, forced=forced)
        if calls:
            return calls, ""
    return [], structured or generation.reply


def _structured(body: dict[str, Any], script: Script) -> str | None:
    """With ``structured_output``: JSON for ``generationConfig.responseSchema`` (or
    ``responseJsonSchema``)."""
    config = field(body, "generationConfig", "generation_config")
    if not script.structured_output or not isinstance(config, dict):
        return None
    schema = field(config, "responseSchema", "response_schema")
    if schema is None:
        schema = field(config, "responseJsonSchema", "response_json_schema")
    return structured_reply(schema) if isinstance(schema, dict) else None


def _with_calls(answer: dict[str, Any], calls: list[ToolCall]) -> dict[str, Any]:
    """The answer's parts become ``calls``; a Gemini 3 model signs the turn's first call."""
    parts: list[dict[str, Any]] = []
    for call in calls:
        part: dict[str, Any] = {"functionCall": {"name": call.name, "args": call.arguments}}
        if call.index == 0 and signs_calls(answer["modelVersion"]):
            part["thoughtSignature"] = _signature(call.key)
        parts.append(part)
    answer["candidates"][0]["content"]["parts"] = parts
    return answer


def _usage(c: Completion, generation: Generation, candidates: int) -> dict[str, Any]:
    usage: dict[str, Any] = {"promptTokenCount": c.prompt_tokens}
    if candidates:
        usage["candidatesTokenCount"] = candidates
    total = c.prompt_tokens + candidates
    cached = min(generation.cached_tokens, c.prompt_tokens)
    if cached:
        usage["cachedContentTokenCount"] = cached
    if generation.reasoning_tokens:
        usage["thoughtsTokenCount"] = generation.reasoning_tokens
        total += generation.reasoning_tokens
    usage["totalTokenCount"] = total
    usage["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": c.prompt_tokens}]
    return usage


def _piece(
    c: Completion, generation: Generation, text: str, candidates: int, finish: str | None
) -> dict[str, Any]:
    usage = _usage(c, generation, candidates)
    return response(c.model, text, finish=finish, usage=usage, response_id=_RESPONSE_ID)


_RESPONSE_ID = "fake-response"


def generate(model: str, body: dict[str, Any], generation: Generation) -> dict[str, Any]:
    c, calls = _plan(model, body, generation)
    finish = "MAX_TOKENS" if c.capped else "STOP"
    answer = _piece(c, generation, c.text, c.completion_tokens, finish)
    answer["responseId"] = new_id("")
    return _with_calls(answer, calls) if calls else answer


def stream(model: str, body: dict[str, Any], generation: Generation, sse: bool) -> StreamPlan:
    """One piece per reply chunk; the last carries the finish reason and the final usage.
    Function calls come whole, one piece per call (Gemini does not split their ``args``)."""
    c, calls = _plan(model, body, generation)
    finish = "MAX_TOKENS" if c.capped else "STOP"
    if calls:
        so_far = 0
        objects = []
        for call in calls:
            so_far += len(call.pieces)
            last = call.index == len(calls) - 1
            piece = _piece(c, generation, "", so_far, finish if last else None)
            objects.append(_with_calls(piece, [call]))
    else:
        pieces = list(c.pieces) or [""]
        objects = [
            _piece(c, generation, text, i, finish if i == len(pieces) else None)
            for i, text in enumerate(pieces, start=1)
        ]
    if sse:
        events = [b"data: " + orjson.dumps(o) + b"\r\n\r\n" for o in objects]
        return StreamPlan([], events[:-1], events[-1:])
    # A JSON array written as it goes: "[" + piece, then "\n,\r\n" + piece, then "\n]".
    encoded = [orjson.dumps(o, option=orjson.OPT_INDENT_2) for o in objects]
    parts = [b"[" + encoded[0]] + [b"\n,\r\n" + e for e in encoded[1:]]
    return StreamPlan([], parts[:-1], [parts[-1] + b"\n]"], content_type=b"application/json")


def count(body: dict[str, Any]) -> dict[str, Any]:
    request = body.get("generateContentRequest")
    source = request if isinstance(request, dict) else body
    words = max(1, prompt_words(source))
    return {
        "totalTokens": words,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": words}],
    }


def _embedding(content: Any) -> dict[str, Any]:
    words = words_in_parts(content)
    return {"values": [round((words + i) / 10, 3) for i in range(_EMBEDDING_SIZE)]}


def embed(body: dict[str, Any]) -> dict[str, Any]:
    content = body.get("content")
    if not isinstance(content, dict):
        raise ApiError(400, "* EmbedContentRequest.content: content is not specified")
    return {"embedding": _embedding(content)}


def batch_embed(body: dict[str, Any]) -> dict[str, Any]:
    requests = body.get("requests")
    if not isinstance(requests, list) or not requests:
        raise ApiError(400, "* BatchEmbedContentsRequest.requests: requests is not specified")
    return {"embeddings": [embed(r)["embedding"] for r in requests if isinstance(r, dict)]}


def model(name: str) -> dict[str, Any]:
    return {
        "name": f"models/{name}",
        "version": "001",
        "displayName": name,
        "inputTokenLimit": 1048576,
        "outputTokenLimit": 65536,
        "supportedGenerationMethods": ["generateContent", "countTokens"],
    }


def models() -> dict[str, Any]:
    return {"models": [model(name) for name in _MODELS]}


def openai_model(name: str) -> dict[str, Any]:
    """A model of the OpenAI-compatible endpoint's list: OpenAI's shape, Gemini's resource name
    as its ``id`` (``models/gemini-2.5-flash``)."""
    name = name if name.startswith("models/") else f"models/{name}"
    return {"id": name, "object": "model", "owned_by": "google"}


def openai_models() -> dict[str, Any]:
    """``GET /v1beta/openai/models``."""
    return {"object": "list", "data": [openai_model(name) for name in _MODELS]}
