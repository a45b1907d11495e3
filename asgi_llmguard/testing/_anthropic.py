"""Anthropic's wire formats: Messages (plain and streamed), token counting and models, as
documented at https://docs.anthropic.com/en/api/messages and .../messages-streaming.
"""

from __future__ import annotations

import time
from typing import Any

from asgi_llmguard.testing._common import (
    ApiError,
    Completion,
    Generation,
    StreamPlan,
    complete,
    new_id,
    optional_limit,
    require_model,
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

MODELS = ("claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-1")
MODELS_CREATED_AT = "2025-01-01T00:00:00Z"

# https://docs.anthropic.com/en/api/errors
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_body(status: int, message: str, *, kind: str | None = None) -> dict[str, Any]:
    """``{"type": "error", "error": {"type", "message"}}``, Anthropic's error shape."""
    fallback = "invalid_request_error" if status < 500 else "api_error"
    return {
        "type": "error",
        "error": {"type": kind or _ERROR_TYPES.get(status, fallback), "message": message},
        "request_id": new_id("req_"),
    }


def _prompt_words(body: dict[str, Any]) -> int:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages: at least one message is required")
    system = body.get("system")
    if system is not None and not isinstance(system, str | list):
        raise ApiError(400, "system: must be a string or an array of text blocks")
    return words_in_messages(messages) + words_in_content(system)


def messages(body: dict[str, Any], gen: Generation) -> dict[str, Any] | StreamPlan:
    """``POST /v1/messages``: a ``message`` object, or its stream of named events."""
    model = gen.model or require_model(body)
    if body.get("max_tokens") is None:
        raise ApiError(400, "max_tokens: Field required")
    limit = optional_limit(body, "max_tokens")
    words = _prompt_words(body)
    stream = wants_stream(body)
    calls, reply = _script(body, gen)
    c = complete(model, reply, chunks=gen.chunks, max_tokens=limit, prompt_words=words)
    if calls:
        pieces = tuple(piece for call in calls for piece in call.pieces)
        c = Completion(c.model, pieces, False, c.prompt_tokens)
    stop_reason = "tool_use" if calls else "max_tokens" if c.capped else "end_turn"

    def message(
        content: list[dict[str, Any]], stop: str | None, output_tokens: int
    ) -> dict[str, Any]:
        return {
            "id": ident,
            "type": "message",
            "role": "assistant",
            "model": c.model,
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": {
                "input_tokens": c.prompt_tokens,
                "cache_creation_input_tokens": gen.cache_write_5m + gen.cache_write_1h,
                "cache_read_input_tokens": 0,
                "cache_creation": {
                    "ephemeral_5m_input_tokens": gen.cache_write_5m,
                    "ephemeral_1h_input_tokens": gen.cache_write_1h,
                },
                "output_tokens": output_tokens,
                "service_tier": gen.service_tier or "standard",
            },
        }

    ident = new_id("msg_")
    if calls and not stream:
        blocks = [_tool_use(call, call.arguments) for call in calls]
        return message(blocks, stop_reason, c.completion_tokens)
    if not stream:
        return message([{"type": "text", "text": c.text}], stop_reason, c.completion_tokens)

    def event(kind: str, **fields: Any) -> bytes:
        return sse_event(kind, {"type": kind, **fields})

    if calls:
        # Each tool_use block starts with an empty input, then input_json_delta pieces.
        content: list[bytes] = []
        for call in calls:
            start = event(
                "content_block_start", index=call.index, content_block=_tool_use(call, {})
            )
            if call.index:
                start = event("content_block_stop", index=call.index - 1) + start
            for n, piece in enumerate(call.pieces):
                delta = {"type": "input_json_delta", "partial_json": piece}
                step = event("content_block_delta", index=call.index, delta=delta)
                content.append(start + step if n == 0 else step)
        return StreamPlan(
            head=[event("message_start", message=message([], None, 1)), event("ping")],
            content=content,
            tail=[
                event("content_block_stop", index=len(calls) - 1),
                event(
                    "message_delta",
                    delta={"stop_reason": stop_reason, "stop_sequence": None},
                    usage={"output_tokens": c.completion_tokens},
                ),
                event("message_stop"),
            ],
        )

    return StreamPlan(
        head=[
            event("message_start", message=message([], None, 1)),
            event("content_block_start", index=0, content_block={"type": "text", "text": ""}),
            event("ping"),
        ],
        content=[
            event("content_block_delta", index=0, delta={"type": "text_delta", "text": piece})
            for piece in c.pieces
        ],
        tail=[
            event("content_block_stop", index=0),
            event(
                "message_delta",
                delta={"stop_reason": stop_reason, "stop_sequence": None},
                usage={"output_tokens": c.completion_tokens},
            ),
            event("message_stop"),
        ],
    )


def _tool_use(call: ToolCall, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"type": "tool_use", "id": f"toolu_{call.key}", "name": call.name, "input": arguments}


def _blocks(message: Any, kind: str) -> list[tuple[int, dict[str, Any]]]:
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, list):
        return []
    return [(j, b) for j, b in enumerate(content) if isinstance(b, dict) and b.get("type") == kind]


def _check_tool_results(messages: list[Any]) -> None:
    """Anthropic's 400s: every ``tool_use`` answered by a ``tool_result`` in the next message,
    and every ``tool_result`` answering a ``tool_use`` of the previous one."""
    for i, message in enumerate(messages):
        previous = messages[i - 1] if i else None
        uses = {b.get("id") for _, b in _blocks(previous, "tool_use")}
        results = _blocks(message, "tool_result")
        for j, block in results:
            if block.get("tool_use_id") not in uses:
                raise ApiError(
                    400,
                    f"messages.{i}.content.{j}: unexpected `tool_use_id` found in `tool_result` "
                    f"blocks: {block.get('tool_use_id')}. Each `tool_result` block must have a "
                    "corresponding `tool_use` block in the previous message.",
                )
        missing = uses - {b.get("tool_use_id") for _, b in results}
        if missing:
            raise ApiError(
                400,
                f"messages.{i - 1}: `tool_use` ids were found without `tool_result` blocks "
                f"immediately after: {', '.join(sorted(map(str, missing)))}. Each `tool_use` "
                "block must have a corresponding `tool_result` block in the next message.",
            )


def _script(body: dict[str, Any], gen: Generation) -> tuple[list[ToolCall], str]:
    """Check the conversation's tool use as Anthropic does, then pick the turn."""
    messages: list[Any] = body["messages"]
    _check_tool_results(messages)
    script = gen.script
    results = _blocks(messages[-1], "tool_result")
    if results:
        quoted = quote_results([result_text(block.get("content", "")) for _, block in results])
        return [], _structured(body, script) or (
            quoted if script.tool_call is not None else gen.reply
        )
    tools = body.get("tools")
    offered = [
        (tool["name"], tool.get("input_schema") or {})
        for tool in (tools if isinstance(tools, list) else [])
        if isinstance(tool, dict)
        and tool.get("type", "custom") == "custom"
        and isinstance(tool.get("name"), str)
    ]
    choice = body.get("tool_choice")
    kind = choice.get("type") if isinstance(choice, dict) else None
    forced = choice.get("name") if isinstance(choice, dict) and kind == "tool" else None
    turn = sum(1 for m in messages if isinstance(m, dict) and m.get("role") == "assistant")
    if kind != "none":
        parallel = not (isinstance(choice, dict) and choice.get("disable_parallel_tool_use"))
        calls = plan_calls(script, offered, turn=turn, forced=forced, parallel=parallel)
        if calls:
            return calls, ""
    return [], _structured(body, script) or gen.reply


def _structured(body: dict[str, Any], script: Script) -> str | None:
    """With ``structured_output``: the JSON answer to ``output_format`` (or
    ``output_config.format``) of type ``json_schema``."""
    if not script.structured_output:
        return None
    fmt = body.get("output_format")
    config = body.get("output_config")
    if fmt is None and isinstance(config, dict):
        fmt = config.get("format")
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        return None
    return structured_reply(fmt.get("schema"))


def count_tokens(body: dict[str, Any]) -> dict[str, Any]:
    """``POST /v1/messages/count_tokens``: what ``input_tokens`` the same message would report."""
    require_model(body)
    return {"input_tokens": max(1, _prompt_words(body))}


def model(model_id: str) -> dict[str, Any]:
    """``GET /v1/models/{id}`` (Anthropic's shape): any id is known to the fake."""
    return {
        "type": "model",
        "id": model_id,
        "display_name": model_id,
        "created_at": MODELS_CREATED_AT,
    }


def batch(batch_id: str, processing: int) -> dict[str, Any]:
    """A ``message_batch`` still in progress (the fake runs no batch)."""
    now = time.time()
    return {
        "id": batch_id,
        "type": "message_batch",
        "processing_status": "in_progress",
        "request_counts": {
            "processing": processing,
            "succeeded": 0,
            "errored": 0,
            "canceled": 0,
            "expired": 0,
        },
        "created_at": _rfc3339(now),
        "expires_at": _rfc3339(now + 86400),
        "ended_at": None,
        "archived_at": None,
        "cancel_initiated_at": None,
        "results_url": None,
    }


def batches_create(body: dict[str, Any]) -> dict[str, Any]:
    """``POST /v1/messages/batches``: the new batch, all its requests processing."""
    requests = body.get("requests")
    if not isinstance(requests, list) or not requests:
        raise ApiError(400, "requests: Field required")
    return batch(new_id("msgbatch_"), len(requests))


def _rfc3339(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def models() -> dict[str, Any]:
    """``GET /v1/models`` (Anthropic's shape)."""
    return {
        "data": [model(m) for m in MODELS],
        "has_more": False,
        "first_id": MODELS[0],
        "last_id": MODELS[-1],
    }
