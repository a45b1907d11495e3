"""OpenAI's wire formats (also spoken by Azure OpenAI): chat, legacy completions, Responses,
embeddings and models, as documented at https://platform.openai.com/docs/api-reference.
"""

from __future__ import annotations

import base64
import hashlib
import struct
import time
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
    c = complete(
        model,
        gen.reply,
        chunks=gen.chunks,
        max_tokens=limit,
        prompt_words=words_in_messages(messages),
    )
    ident, created = new_id("chatcmpl-"), int(time.time())
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

    if include_usage and gen.usage_in_last_chunk:
        tail = [chunk(choice({}, _finish(c)), _chat_usage(c, gen))]
    else:
        tail = [chunk(choice({}, _finish(c)))]
        if include_usage:
            tail.append(chunk([], _chat_usage(c, gen)))
    tail.append(DONE)
    return StreamPlan(
        head=[chunk(choice({"role": "assistant", "content": "", "refusal": None}))],
        content=[chunk(choice({"content": piece})) for piece in c.pieces],
        tail=tail,
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
    c = complete(model, gen.reply, chunks=gen.chunks, max_tokens=limit, prompt_words=words)
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

    final_item = message(final_status, [part(c.text)])
    final = response(final_status, [final_item], done=True)
    if not stream:
        return final

    sequence = 0

    def event(kind: str, **fields: Any) -> bytes:
        nonlocal sequence
        data = {"type": kind, "sequence_number": sequence, **fields}
        sequence += 1
        return sse_event(kind, data)

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
