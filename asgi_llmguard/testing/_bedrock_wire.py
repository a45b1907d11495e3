"""Bedrock Runtime's wire formats: Converse, ConverseStream, InvokeModel and
InvokeModelWithResponseStream with Anthropic Claude bodies, and Bedrock's errors, as documented
in the Amazon Bedrock API reference (``bedrock-runtime``) and the Claude-on-Bedrock guide.

Converse answers ``{"output": {"message"}, "stopReason", "usage", "metrics"}``; its stream is
event-stream frames ``messageStart``, ``contentBlockDelta`` (one per content chunk),
``contentBlockStop``, ``messageStop`` and ``metadata`` (``usage`` and ``metrics``), each payload
carrying a ``p`` padding field as Bedrock's do. ``usage`` has ``inputTokens`` (the uncached
prompt), ``outputTokens``, ``totalTokens`` (all of them) and, when a cache was used,
``cacheReadInputTokens`` and ``cacheWriteInputTokens``.

InvokeModel with a Claude body (``anthropic_version``, e.g. ``"bedrock-2023-05-31"``; no ``model``:
the model is in the path) answers Anthropic's Messages JSON, with the
``x-amzn-bedrock-input-token-count`` / ``-output-token-count`` headers; streamed, every Anthropic
event becomes a ``chunk`` frame whose payload is ``{"bytes": <the event's JSON, base64>}``, and
``message_stop`` carries ``amazon-bedrock-invocationMetrics``.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson

from asgi_llmguard.testing import _anthropic
from asgi_llmguard.testing._common import (
    ApiError,
    Generation,
    StreamPlan,
    complete,
    words_in_content,
)
from asgi_llmguard.testing._eventstream import event

#: The modeled errors of ``bedrock-runtime`` and their HTTP statuses.
ERRORS = {
    "ValidationException": 400,
    "ServiceQuotaExceededException": 400,
    "AccessDeniedException": 403,
    "ResourceNotFoundException": 404,
    "ModelTimeoutException": 408,
    "ConflictException": 400,
    "ModelErrorException": 424,
    "ModelNotReadyException": 429,
    "ThrottlingException": 429,
    "InternalServerException": 500,
    "ServiceUnavailableException": 503,
    "ModelStreamErrorException": 424,
}
_BY_STATUS = {
    400: "ValidationException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    408: "ModelTimeoutException",
    424: "ModelErrorException",
    429: "ThrottlingException",
    500: "InternalServerException",
    503: "ServiceUnavailableException",
}
#: The exceptions a stream can end with (as ``:exception-type``, in lower camel case).
STREAM_EXCEPTIONS = frozenset(
    {
        "internalServerException",
        "modelStreamErrorException",
        "validationException",
        "throttlingException",
        "serviceUnavailableException",
        "modelTimeoutException",
    }
)
_PADDING = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123"


def error_name(status: int) -> str:
    """The exception Bedrock answers with for ``status``."""
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return "InternalServerException" if status >= 500 else "ValidationException"


def stream_exception_name(name: str) -> str:
    """``ThrottlingException`` -> ``throttlingException``, the stream's member name."""
    return name[:1].lower() + name[1:]


def _validation(message: str) -> ApiError:
    return ApiError(400, message, kind="ValidationException")


def _malformed(detail: str) -> ApiError:
    return _validation(
        f"Malformed input request: #: {detail}, please reformat your input and try again."
    )


def _prompt_words(body: dict[str, Any]) -> int:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _validation(
            "A conversation must start with a user message. Try again with a conversation "
            "that starts with a user message."
        )
    words = 0
    for message in messages:
        if (
            not isinstance(message, dict)
            or message.get("role") not in ("user", "assistant")
            or not isinstance(message.get("content"), list)
        ):
            raise _validation(
                "1 validation error detected: messages must have a role of 'user' or "
                "'assistant' and a list of content blocks"
            )
        words += words_in_content(message["content"])
    system = body.get("system")
    if system is not None:
        if not isinstance(system, list):
            raise _validation("1 validation error detected: system must be a list of blocks")
        words += words_in_content(system)
    return words


def _max_tokens(body: dict[str, Any]) -> int | None:
    config = body.get("inferenceConfig")
    if config is None:
        return None
    if not isinstance(config, dict):
        raise _validation("1 validation error detected: inferenceConfig must be an object")
    value = config.get("maxTokens")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _validation(
            "1 validation error detected: Value at 'inferenceConfig.maxTokens' failed to "
            "satisfy constraint: Member must have value greater than or equal to 1"
        )
    return value


def _usage(input_tokens: int, output_tokens: int, gen: Generation) -> dict[str, int]:
    read = gen.cached_tokens
    write = gen.cache_write_5m + gen.cache_write_1h
    usage = {
        "inputTokens": input_tokens,
        "outputTokens": output_tokens,
        "totalTokens": input_tokens + output_tokens + read + write,
    }
    if read:
        usage["cacheReadInputTokens"] = read
    if write:
        usage["cacheWriteInputTokens"] = write
    return usage


def _padded(n: int, payload: dict[str, Any]) -> dict[str, Any]:
    payload["p"] = _PADDING[: 1 + n % len(_PADDING)]
    return payload


def converse(body: dict[str, Any], gen: Generation, *, stream: bool) -> dict[str, Any] | StreamPlan:
    """``/converse`` and ``/converse-stream`` for the model ``gen.model``."""
    words = _prompt_words(body)
    limit = _max_tokens(body)
    c = complete(
        gen.model or "", gen.reply, chunks=gen.chunks, max_tokens=limit, prompt_words=words
    )
    stop = "max_tokens" if c.capped else "end_turn"
    usage = _usage(c.prompt_tokens, c.completion_tokens, gen)
    metrics = {"latencyMs": 10 + c.completion_tokens}
    if not stream:
        return {
            "output": {"message": {"role": "assistant", "content": [{"text": c.text}]}},
            "stopReason": stop,
            "usage": usage,
            "metrics": metrics,
        }
    return StreamPlan(
        head=[event("messageStart", _padded(0, {"role": "assistant"}))],
        content=[
            event(
                "contentBlockDelta",
                _padded(n, {"contentBlockIndex": 0, "delta": {"text": piece}}),
            )
            for n, piece in enumerate(c.pieces, start=1)
        ],
        tail=[
            event("contentBlockStop", _padded(1, {"contentBlockIndex": 0})),
            event("messageStop", _padded(2, {"stopReason": stop})),
            event("metadata", _padded(3, {"usage": usage, "metrics": metrics})),
        ],
    )


def invoke(
    body: dict[str, Any], gen: Generation, *, stream: bool
) -> tuple[dict[str, Any], list[tuple[bytes, bytes]]] | StreamPlan:
    """``/invoke`` and ``/invoke-with-response-stream`` with a Claude (Messages) body."""
    if "anthropic_version" not in body:
        raise _malformed("required key [anthropic_version] not found")
    version = body["anthropic_version"]
    if not isinstance(version, str) or not version:
        # Any version is served: ``bedrock-2023-05-31``, or the dated API version recent
        # Anthropic SDKs send through Bedrock too.
        raise _malformed("anthropic_version: expected a non-empty string")
    for extraneous in ("model", "stream"):
        if extraneous in body:
            raise _malformed(f"extraneous key [{extraneous}] is not permitted")
    try:
        result = _anthropic.messages({**body, "stream": stream}, gen)
    except ApiError as exc:
        raise _validation(exc.message) from None
    if isinstance(result, dict):
        usage = result["usage"]
        headers = [
            (b"x-amzn-bedrock-input-token-count", str(usage["input_tokens"]).encode()),
            (b"x-amzn-bedrock-output-token-count", str(usage["output_tokens"]).encode()),
            (b"x-amzn-bedrock-invocation-latency", b"10"),
        ]
        if usage["cache_creation_input_tokens"]:
            headers.append(
                (
                    b"x-amzn-bedrock-cache-write-input-token-count",
                    str(usage["cache_creation_input_tokens"]).encode(),
                )
            )
        return result, headers
    counts: dict[str, int] = {}
    head, content, tail = (
        _chunks(part, counts) for part in (result.head, result.content, result.tail)
    )
    return StreamPlan(head, content, tail)


def _sse_json(sse: bytes) -> dict[str, Any]:
    for line in sse.splitlines():
        if line.startswith(b"data:"):
            decoded = orjson.loads(line[5:])
            if isinstance(decoded, dict):
                return decoded
    raise ValueError("an SSE event without a JSON object")


def _chunks(events: list[bytes], counts: dict[str, int]) -> list[bytes]:
    """Anthropic SSE events as Bedrock ``chunk`` frames (``ping`` is not sent); ``counts``
    carries the token counts seen so far to ``message_stop``'s invocation metrics."""
    frames = []
    for sse in events:
        doc = _sse_json(sse)
        kind = doc.get("type")
        if kind == "ping":
            continue
        if kind == "message_start":
            usage = doc["message"]["usage"]
            counts["input"] = usage["input_tokens"]
            counts["write"] = usage["cache_creation_input_tokens"]
        elif kind == "message_delta":
            counts["output"] = doc["usage"]["output_tokens"]
        elif kind == "message_stop":
            metrics = {
                "inputTokenCount": counts.get("input", 0),
                "outputTokenCount": counts.get("output", 0),
                "invocationLatency": 10,
                "firstByteLatency": 5,
            }
            if counts.get("write"):
                metrics["cacheWriteInputTokenCount"] = counts["write"]
            doc["amazon-bedrock-invocationMetrics"] = metrics
        frames.append(event("chunk", {"bytes": base64.b64encode(orjson.dumps(doc)).decode()}))
    return frames
