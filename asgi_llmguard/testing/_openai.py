"""OpenAI's wire formats (also spoken by Azure OpenAI): chat, legacy completions, Responses,
embeddings and models, as documented at https://platform.openai.com/docs/api-reference.
"""

from __future__ import annotations

import base64
import hashlib
import struct
import time
from collections.abc import Callable
from typing import Any

from asgi_llmguard.testing._common import (
    ApiError,
    Completion,
    Generation,
    StreamPlan,
    complete,
    count_tokens,
    new_id,
    optional_limit,
    require_model,
    sse_data,
    sse_event,
    wants_stream,
    words_in_content,
    words_in_messages,
)
from asgi_llmguard.testing._tools import (
    Script,
    ToolCall,
    plan_calls,
    quote_results,
    result_text,
    structured_reply,
)

MODELS = ("gpt-4o", "gpt-4o-mini", "gpt-4.1-mini", "text-embedding-3-small")
MODELS_CREATED = 1_700_000_000
DEFAULT_DIMENSIONS = 8
SYSTEM_FINGERPRINT = "fp_fake"
DONE = b"data: [DONE]\n\n"

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "requests",
}
_ERROR_CODES = {401: "invalid_api_key", 429: "rate_limit_exceeded"}


def error_body(
    status: int,
    message: str,
    *,
    code: str | None = None,
    param: str | None = None,
    kind: str | None = None,
) -> dict[str, Any]:
    """``{"error": {"message", "type", "param", "code"}}``, OpenAI's (and Azure's) error shape."""
    return {
        "error": {
            "message": message,
            "type": kind or _ERROR_TYPES.get(status, "server_error"),
            "param": param,
            "code": code if code is not None else _ERROR_CODES.get(status),
        }
    }


def _finish(c: Completion) -> str:
    return "length" if c.capped else "stop"


def _chat_usage(c: Completion, gen: Generation) -> dict[str, Any]:
    output = c.completion_tokens + gen.reasoning_tokens
    return {
        "prompt_tokens": c.prompt_tokens,
        "completion_tokens": output,
        "total_tokens": c.prompt_tokens + output,
        "prompt_tokens_details": {
            "cached_tokens": min(gen.cached_tokens, c.prompt_tokens),
            "audio_tokens": 0,
        },
        "completion_tokens_details": {
            "reasoning_tokens": gen.reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise ApiError(400, "stream_options must be an object", param="stream_options")
    return options.get("include_usage") is True


# -- chat completions -----------------------------------------------------------------------------


def chat(body: dict[str, Any], gen: Generation) -> dict[str, Any] | StreamPlan:
    """``POST /v1/chat/completions``: a ``chat.completion``, or ``chat.completion.chunk`` events."""
    model = gen.model or require_model(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty array", param="messages")
    limit = optional_limit(body, "max_tokens", "max_completion_tokens")
    stream = wants_stream(body)
    calls, reply = _chat_script(body, messages, gen)
    c = complete(
        model,
        reply,
        chunks=gen.chunks,
        max_tokens=limit,
        prompt_words=words_in_messages(messages),
    )
    if calls:
        c = Completion(c.model, _all_pieces(calls), False, c.prompt_tokens)
    ident, created = new_id("chatcmpl-"), int(time.time())
    if calls and not stream:
        return {
            "id": ident,
            "object": "chat.completion",
            "created": created,
            "model": c.model,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": None,
                        "refusal": None,
                        "annotations": [],
                        "tool_calls": [
                            {
                                "id": f"call_{call.key}",
                                "type": "function",
                                "function": {"name": call.name, "arguments": call.arguments_json},
                            }
                            for call in calls
                        ],
                    },
                    "logprobs": None,
                    "finish_reason": "tool_calls",
                }
            ],
            "usage": _chat_usage(c, gen),
            "service_tier": gen.service_tier or "default",
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }
    if not stream:
        return {
            "id": ident,
            "object": "chat.completion",
            "created": created,
            "model": c.model,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": c.text,
                        "refusal": None,
                        "annotations": [],
                    },
                    "logprobs": None,
                    "finish_reason": _finish(c),
                }
            ],
            "usage": _chat_usage(c, gen),
            "service_tier": gen.service_tier or "default",
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }

    include_usage = _include_usage(body)

    def chunk(choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> bytes:
        obj: dict[str, Any] = {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": created,
            "model": c.model,
            "service_tier": gen.service_tier or "default",
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": choices,
        }
        if include_usage:
            obj["usage"] = usage
        return sse_data(obj)

    def choice(delta: dict[str, Any], finish: str | None = None) -> list[dict[str, Any]]:
        return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]

    finish = "tool_calls" if calls else _finish(c)
    if include_usage and gen.usage_in_last_chunk:
        tail = [chunk(choice({}, finish), _chat_usage(c, gen))]
    else:
        tail = [chunk(choice({}, finish))]
        if include_usage:
            tail.append(chunk([], _chat_usage(c, gen)))
    tail.append(DONE)
    if calls:
        # Each call opens with its id and name (arguments ""), then its arguments in pieces.
        content: list[bytes] = []
        for call in calls:
            opening = {
                "index": call.index,
                "id": f"call_{call.key}",
                "type": "function",
                "function": {"name": call.name, "arguments": ""},
            }
            for n, piece in enumerate(call.pieces):
                delta = {"tool_calls": [{"index": call.index, "function": {"arguments": piece}}]}
                event = chunk(choice(delta))
                content.append(
                    chunk(choice({"tool_calls": [opening]})) + event if n == 0 else event
                )
        return StreamPlan(
            head=[chunk(choice({"role": "assistant", "content": None, "refusal": None}))],
            content=content,
            tail=tail,
        )
    return StreamPlan(
        head=[chunk(choice({"role": "assistant", "content": "", "refusal": None}))],
        content=[chunk(choice({"content": piece})) for piece in c.pieces],
        tail=tail,
    )


def _all_pieces(calls: list[ToolCall]) -> tuple[str, ...]:
    return tuple(piece for call in calls for piece in call.pieces)


def _chat_script(
    body: dict[str, Any], messages: list[Any], gen: Generation
) -> tuple[list[ToolCall], str]:
    """Check the conversation's tool calls and results as OpenAI does, then pick the turn: tool
    calls, a quote of the tool results, a structured answer or the reply."""
    _check_chat_tool_messages(messages)
    script = gen.script
    last = messages[-1] if isinstance(messages[-1], dict) else {}
    if last.get("role") == "tool":
        results: list[str] = []
        for message in reversed(messages):
            if not isinstance(message, dict) or message.get("role") != "tool":
                break
            results.insert(0, result_text(message.get("content")))
        reply = quote_results(results) if script.tool_call is not None else gen.reply
        return [], _structured(body, script) or reply
    offered: list[tuple[str, Any]] = []
    tools = body.get("tools")
    for tool in tools if isinstance(tools, list) else []:
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            offered.append((function["name"], function.get("parameters") or {}))
    choice = body.get("tool_choice")
    forced = None
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        forced = choice["function"].get("name")
    turn = sum(1 for m in messages if isinstance(m, dict) and m.get("role") == "assistant")
    if choice != "none":
        parallel = body.get("parallel_tool_calls") is not False
        calls = plan_calls(script, offered, turn=turn, forced=forced, parallel=parallel)
        if calls:
            return calls, ""
    return [], _structured(body, script) or gen.reply


def _structured(body: dict[str, Any], script: Script) -> str | None:
    """With ``structured_output``: the JSON answer to ``response_format`` (chat) or
    ``text.format`` (Responses) of type ``json_schema``."""
    if not script.structured_output:
        return None
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and isinstance(fmt.get("json_schema"), dict):
        schema = fmt["json_schema"].get("schema")
    else:
        text = body.get("text")
        fmt = text.get("format") if isinstance(text, dict) else None
        schema = fmt.get("schema") if isinstance(fmt, dict) else None
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        return None
    return structured_reply(schema)


def _check_chat_tool_messages(messages: list[Any]) -> None:
    """OpenAI's 400s: a ``tool`` message must answer a call of the assistant message before the
    run of ``tool`` messages, and every call must be answered before the next other message."""
    pending: list[str] = []
    called: set[str] = set()
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        if role == "tool":
            ident = message.get("tool_call_id")
            if not called:
                raise ApiError(
                    400,
                    "Invalid parameter: messages with role 'tool' must be a response to a "
                    "preceeding message with 'tool_calls'.",
                    param=f"messages.[{i}].role",
                )
            if ident not in called:
                raise ApiError(
                    400,
                    f"Invalid parameter: 'tool_call_id' of '{ident}' not found in 'tool_calls' "
                    "of previous message.",
                    param=f"messages.[{i}].tool_call_id",
                )
            if ident in pending:
                pending.remove(ident)
            continue
        if pending:
            raise ApiError(
                400,
                "An assistant message with 'tool_calls' must be followed by tool messages "
                "responding to each 'tool_call_id'. The following tool_call_ids did not have "
                f"response messages: {', '.join(pending)}",
                param=f"messages.[{i}].role",
            )
        calls = message.get("tool_calls") if role == "assistant" else None
        ids = [c.get("id") for c in calls if isinstance(c, dict)] if isinstance(calls, list) else []
        pending = [str(ident) for ident in ids]
        called = set(pending)
    if pending:
        raise ApiError(
            400,
            "An assistant message with 'tool_calls' must be followed by tool messages responding "
            f"to each 'tool_call_id'. The following tool_call_ids did not have response "
            f"messages: {', '.join(pending)}",
            param=f"messages.[{len(messages)}].role",
        )


# -- legacy completions ---------------------------------------------------------------------------


def _prompt_words(prompt: Any) -> int:
    """Words in a legacy ``prompt``: a string, strings, a token array, or token arrays."""
    if isinstance(prompt, str):
        return count_tokens(prompt)
    if isinstance(prompt, list):
        if all(isinstance(p, int) for p in prompt):
            return len(prompt)
        return sum(_prompt_words(p) for p in prompt)
    raise ApiError(400, "prompt must be a string, an array of strings or tokens", param="prompt")


def completions(body: dict[str, Any], gen: Generation) -> dict[str, Any] | StreamPlan:
    """``POST /v1/completions``: a ``text_completion`` (one choice, whatever the prompt count)."""
    model = gen.model or require_model(body)
    prompt_words = _prompt_words(body.get("prompt", ""))
    limit = optional_limit(body, "max_tokens")
    stream = wants_stream(body)
    c = complete(model, gen.reply, chunks=gen.chunks, max_tokens=limit, prompt_words=prompt_words)
    ident, created = new_id("cmpl-"), int(time.time())
    usage = {
        "prompt_tokens": c.prompt_tokens,
        "completion_tokens": c.completion_tokens,
        "total_tokens": c.total_tokens,
    }

    def obj(choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": ident,
            "object": "text_completion",
            "created": created,
            "model": c.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": choices,
        }

    def choice(text: str, finish: str | None) -> list[dict[str, Any]]:
        return [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}]

    if not stream:
        return {**obj(choice(c.text, _finish(c))), "usage": usage}

    include_usage = _include_usage(body)

    def chunk(choices: list[dict[str, Any]], chunk_usage: dict[str, Any] | None = None) -> bytes:
        event = obj(choices)
        if include_usage:
            event["usage"] = chunk_usage
        return sse_data(event)

    tail = [chunk(choice("", _finish(c)))]
    if include_usage:
        tail.append(chunk([], usage))
    tail.append(DONE)
    return StreamPlan(content=[chunk(choice(piece, None)) for piece in c.pieces], tail=tail)


# -- Responses API --------------------------------------------------------------------------------


def _input_words(value: Any) -> int:
    """Words in a Responses ``input``: a string, or items with string or part-list ``content``."""
    if value is None:
        return 0
    if isinstance(value, str):
        return count_tokens(value)
    if isinstance(value, list):
        return sum(
            words_in_content(item.get("content")) for item in value if isinstance(item, dict)
        )
    raise ApiError(400, "input must be a string or an array of input items", param="input")


def responses(body: dict[str, Any], gen: Generation) -> dict[str, Any] | StreamPlan:
    """``POST /v1/responses``: a ``response`` object, or its stream of typed events."""
    model = gen.model or require_model(body)
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise ApiError(400, "instructions must be a string", param="instructions")
    words = _input_words(body.get("input")) + count_tokens(instructions or "")
    limit = optional_limit(body, "max_output_tokens")
    stream = wants_stream(body)
    calls, reply = _responses_script(body, gen)
    c = complete(model, reply, chunks=gen.chunks, max_tokens=limit, prompt_words=words)
    if calls:
        c = Completion(c.model, _all_pieces(calls), False, c.prompt_tokens)
    resp_id, item_id, created = new_id("resp_"), new_id("msg_"), int(time.time())
    final_status = "incomplete" if c.capped else "completed"
    metadata = body.get("metadata")

    def response(status: str, output: list[dict[str, Any]], done: bool) -> dict[str, Any]:
        return {
            "id": resp_id,
            "object": "response",
            "created_at": created,
            "status": status,
            "background": False,
            "completed_at": int(time.time()) if done and status == "completed" else None,
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if done and c.capped else None,
            "instructions": instructions,
            "max_output_tokens": limit,
            "max_tool_calls": None,
            "model": c.model,
            "output": output,
            "parallel_tool_calls": True,
            "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None},
            "service_tier": gen.service_tier or "default",
            "store": True,
            "temperature": body.get("temperature", 1.0),
            "text": {"format": {"type": "text"}, "verbosity": "medium"},
            "tool_choice": "auto",
            "tools": [],
            "top_logprobs": 0,
            "top_p": body.get("top_p", 1.0),
            "truncation": "disabled",
            "usage": (
                {
                    "input_tokens": c.prompt_tokens,
                    "input_tokens_details": {
                        "cached_tokens": min(gen.cached_tokens, c.prompt_tokens)
                    },
                    "output_tokens": c.completion_tokens + gen.reasoning_tokens,
                    "output_tokens_details": {"reasoning_tokens": gen.reasoning_tokens},
                    "total_tokens": c.total_tokens + gen.reasoning_tokens,
                }
                if done
                else None
            ),
            "user": None,
            "metadata": metadata if isinstance(metadata, dict) else {},
        }

    def part(text: str) -> dict[str, Any]:
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}

    def message(status: str, content: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": item_id,
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": content,
        }

    sequence = 0

    def event(kind: str, **fields: Any) -> bytes:
        nonlocal sequence
        data = {"type": kind, "sequence_number": sequence, **fields}
        sequence += 1
        return sse_event(kind, data)

    if calls:
        return _function_calls(calls, response, event, stream)
    final_item = message(final_status, [part(c.text)])
    final = response(final_status, [final_item], done=True)
    if not stream:
        return final

    where = {"item_id": item_id, "output_index": 0, "content_index": 0}
    head = [
        event("response.created", response=response("in_progress", [], done=False)),
        event("response.in_progress", response=response("in_progress", [], done=False)),
        event("response.output_item.added", output_index=0, item=message("in_progress", [])),
        event("response.content_part.added", **where, part=part("")),
    ]
    content = [
        event("response.output_text.delta", **where, delta=piece, logprobs=[]) for piece in c.pieces
    ]
    tail = [
        event("response.output_text.done", **where, text=c.text, logprobs=[]),
        event("response.content_part.done", **where, part=part(c.text)),
        event("response.output_item.done", output_index=0, item=final_item),
        event(f"response.{final_status}", response=final),
    ]
    return StreamPlan(head=head, content=content, tail=tail)


def _function_calls(
    calls: list[ToolCall],
    response: Callable[[str, list[dict[str, Any]], bool], dict[str, Any]],
    event: Callable[..., bytes],
    stream: bool,
) -> dict[str, Any] | StreamPlan:
    """A Responses turn of ``function_call`` output items; streamed, each item is added, its
    arguments sent as ``response.function_call_arguments.delta`` pieces, then done."""

    def item(call: ToolCall, status: str, arguments: str) -> dict[str, Any]:
        return {
            "id": f"fc_{call.key}",
            "type": "function_call",
            "status": status,
            "arguments": arguments,
            "call_id": f"call_{call.key}",
            "name": call.name,
        }

    done = [item(call, "completed", call.arguments_json) for call in calls]
    final = response("completed", done, True)
    if not stream:
        return final
    head = [
        event("response.created", response=response("in_progress", [], False)),
        event("response.in_progress", response=response("in_progress", [], False)),
    ]
    content: list[bytes] = []
    tail: list[bytes] = []
    for call in calls:
        where = {"item_id": f"fc_{call.key}", "output_index": call.index}
        closing = [
            event(
                "response.function_call_arguments.done",
                **where,
                name=call.name,
                arguments=call.arguments_json,
            ),
            event("response.output_item.done", output_index=call.index, item=done[call.index]),
        ]
        opening = event(
            "response.output_item.added",
            output_index=call.index,
            item=item(call, "in_progress", ""),
        )
        for n, piece in enumerate(call.pieces):
            delta = event("response.function_call_arguments.delta", **where, delta=piece)
            content.append(opening + delta if n == 0 else delta)
        if call.index < len(calls) - 1:
            content[-1] += b"".join(closing)
        else:
            tail = closing
    tail.append(event("response.completed", response=final))
    return StreamPlan(head=head, content=content, tail=tail)


def _responses_script(body: dict[str, Any], gen: Generation) -> tuple[list[ToolCall], str]:
    """Check the input's function calls and outputs as OpenAI does, then pick the turn."""
    items = body.get("input")
    items = [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []
    calls = [i.get("call_id") for i in items if i.get("type") == "function_call"]
    outputs = [i.get("call_id") for i in items if i.get("type") == "function_call_output"]
    if body.get("previous_response_id") is None:
        for ident in outputs:
            if ident not in calls:
                raise ApiError(
                    400,
                    f"No tool call found for function call output with call_id {ident}.",
                    param="input",
                )
    for ident in calls:
        if ident not in outputs:
            raise ApiError(400, f"No tool output found for function call {ident}.", param="input")
    script = gen.script
    if items and items[-1].get("type") == "function_call_output":
        results: list[str] = []
        for entry in reversed(items):
            if entry.get("type") != "function_call_output":
                break
            results.insert(0, result_text(entry.get("output")))
        reply = quote_results(results) if script.tool_call is not None else gen.reply
        return [], _structured(body, script) or reply
    tools = body.get("tools")
    offered = [
        (tool["name"], tool.get("parameters") or {})
        for tool in (tools if isinstance(tools, list) else [])
        if isinstance(tool, dict) and tool.get("type") == "function" and "name" in tool
    ]
    choice = body.get("tool_choice")
    forced = choice.get("name") if isinstance(choice, dict) else None
    turn = len(calls) + sum(1 for i in items if i.get("role") == "assistant")
    if choice != "none":
        parallel = body.get("parallel_tool_calls") is not False
        planned = plan_calls(script, offered, turn=turn, forced=forced, parallel=parallel)
        if planned:
            return planned, ""
    return [], _structured(body, script) or gen.reply


# -- embeddings -----------------------------------------------------------------------------------


def compact(body: dict[str, Any], gen: Generation) -> dict[str, Any]:
    """``POST /v1/responses/compact``: a ``response.compaction`` with one opaque compaction item
    and the usage ``/v1/responses`` would report for the same input."""
    full = responses({**body, "stream": False}, gen)
    assert isinstance(full, dict)
    return {
        "id": new_id("resp_"),
        "object": "response.compaction",
        "created_at": int(time.time()),
        "output": [
            {"id": new_id("cmp_"), "type": "compaction", "encrypted_content": "fake-compaction"}
        ],
        "usage": full["usage"],
    }


def embed(value: str | list[int], dimensions: int = DEFAULT_DIMENSIONS) -> list[float]:
    """The fake's embedding of one input: deterministic, exact in float32, in ``[-1, 1)``."""
    seed = (
        value.encode()
        if isinstance(value, str)
        else b"\x00" + struct.pack(f"<{len(value)}q", *value)
    )
    stream = b""
    counter = 0
    while len(stream) < dimensions:
        stream += hashlib.sha256(seed + counter.to_bytes(4, "little")).digest()
        counter += 1
    return [(byte - 128) / 128 for byte in stream[:dimensions]]


def _embedding_inputs(value: Any) -> list[str | list[int]]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return [value]
        if all(isinstance(v, str) for v in value):
            return list(value)
        if all(isinstance(v, list) and v and all(isinstance(t, int) for t in v) for v in value):
            return list(value)
    raise ApiError(
        400,
        "input must be a string, an array of strings, or an array of token arrays",
        param="input",
    )


def embeddings(body: dict[str, Any], gen: Generation) -> dict[str, Any]:
    """``POST /v1/embeddings``: one vector per input, as floats or base64 little-endian float32."""
    model = gen.model or require_model(body)
    inputs = _embedding_inputs(body.get("input"))
    dimensions = body.get("dimensions")
    if dimensions is None:
        dimensions = DEFAULT_DIMENSIONS
    elif isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1:
        raise ApiError(400, "dimensions must be an integer of at least 1", param="dimensions")
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise ApiError(400, "encoding_format must be 'float' or 'base64'", param="encoding_format")
    data: list[dict[str, Any]] = []
    for index, value in enumerate(inputs):
        vector = embed(value, dimensions)
        encoded: list[float] | str = vector
        if encoding == "base64":
            packed = struct.pack(f"<{len(vector)}f", *vector)
            encoded = base64.b64encode(packed).decode("ascii")
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    words = sum(count_tokens(v) if isinstance(v, str) else len(v) for v in inputs)
    tokens = max(1, words)
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


# -- models ---------------------------------------------------------------------------------------


def model(model_id: str) -> dict[str, Any]:
    """``GET /v1/models/{id}``: any id is known to the fake."""
    return {"id": model_id, "object": "model", "created": MODELS_CREATED, "owned_by": "fake"}


def models() -> dict[str, Any]:
    """``GET /v1/models``."""
    return {"object": "list", "data": [model(m) for m in MODELS]}
