"""A fake Amazon Bedrock Runtime: one pure ASGI app speaking ``bedrock-runtime``'s API.

It answers the way ``boto3``'s ``bedrock-runtime`` client and the AWS SDKs expect, event streams
included, with the same fixed reply and token rule as :class:`FakeProvider`, checks SigV4
signatures with its own implementation (or Bedrock API keys sent as ``Authorization: Bearer``),
and can misbehave on demand. Endpoints (the model id, or an inference profile's ARN, is one
URL-encoded path segment, e.g. ``anthropic.claude-3-5-haiku-20241022-v1%3A0``):

=========================================================  =======================================
``POST /model/{modelId}/converse``                         Converse: JSON
``POST /model/{modelId}/converse-stream``                  ConverseStream: event-stream frames
``POST /model/{modelId}/invoke``                           InvokeModel, Anthropic Claude body
``POST /model/{modelId}/invoke-with-response-stream``      the same, streamed as ``chunk`` frames
=========================================================  =======================================

Formats are described in :mod:`asgi_llmguard.testing._bedrock_wire`. Errors answer the status of
the exception with ``x-amzn-errortype: <Name>`` and ``{"message": ...}``; an exception inside a
stream is a frame with ``:message-type: exception`` and ``:exception-type: <name>``.

**Knobs** are :class:`FakeProvider`'s (``latency``, ``chunk_delay``, ``status``, ``retry_after``,
``reset_after_chunks``, ``truncate_after_chunks``, ``chunks``, ``reply``; ``cached_tokens`` is
reported as ``cacheReadInputTokens`` and ``cache_write_5m + cache_write_1h`` as
``cacheWriteInputTokens``), plus ``error`` (an exception name such as ``"ThrottlingException"``:
answer it, with its status, instead of the answer) and ``exception_after_chunks`` (end a stream
with an exception frame, ``error``'s or ``modelStreamErrorException``, after this many content
chunks), ``exception_first`` (a stream's first frame is the exception, ``error``'s or
``throttlingException``, before any event) and ``cut_mid_frame_after_chunks`` (after this many
content chunks, send half of the next frame and reset the connection). Per request: the same
``x-fake-*`` headers, and ``x-fake-error`` / ``x-fake-exception-after-chunks`` /
``x-fake-exception-first`` / ``x-fake-cut-mid-frame-after-chunks``.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import urllib.parse
import uuid
from collections.abc import Mapping
from typing import Any

import orjson

from asgi_llmguard.testing import _bedrock_wire as wire
from asgi_llmguard.testing import _eventstream
from asgi_llmguard.testing._bedrock_checks import BedrockKnobs, authenticate, override, validated
from asgi_llmguard.testing._common import ApiError, Generation, StreamPlan
from asgi_llmguard.testing._http import Exchange, Receive, ReceivedRequest, Scope, Send
from asgi_llmguard.testing._knobs import DEFAULT_REPLY, Knobs, count
from asgi_llmguard.testing._observed import Observed, read_http_request, received_request
from asgi_llmguard.testing.fake import _RESET_FILTER, FakeConnectionReset

_OPERATIONS = ("converse", "converse-stream", "invoke", "invoke-with-response-stream")
_EVENTSTREAM = b"application/vnd.amazon.eventstream"


class FakeBedrock(Observed):
    """A fake Bedrock Runtime as an ASGI app; see the module docstring.

    Args:
        access_keys: ``{access_key_id: secret_access_key}``: requests signed with SigV4 by one of
            these keys (service ``bedrock``) are accepted.
        api_key: A Bedrock API key accepted as ``Authorization: Bearer <key>``.
        region: The region a signature must be scoped to (``None``: any).
        max_clock_skew: Seconds a signature's ``x-amz-date`` may differ from the clock.

        When neither ``access_keys`` nor ``api_key`` is given, requests are not authenticated.
        Refusals are 403 ``MissingAuthenticationTokenException``,
        ``UnrecognizedClientException`` or ``InvalidSignatureException``, as AWS answers.

        The other arguments are the knobs (see the module docstring and :class:`FakeProvider`).

    Observation is :class:`FakeProvider`'s: :attr:`requests` (``path`` is the raw,
    percent-encoded path), :attr:`active_streams`, :attr:`completed`, :attr:`disconnects`,
    :attr:`resets`, :meth:`reset`, :meth:`wait_for`, :meth:`wait_until`; and
    :attr:`signers`, the access key id (or ``"bearer"``) each accepted request used.
    """

    def __init__(
        self,
        *,
        access_keys: Mapping[str, str] | None = None,
        api_key: str | None = None,
        region: str | None = "us-east-1",
        max_clock_skew: float = 300.0,
        reply: str = DEFAULT_REPLY,
        latency: float = 0.0,
        chunk_delay: float = 0.0,
        status: int | None = None,
        retry_after: float | None = None,
        reset_after_chunks: int | None = None,
        truncate_after_chunks: int | None = None,
        chunks: int | None = None,
        cached_tokens: int = 0,
        cache_write_5m: int = 0,
        cache_write_1h: int = 0,
        error: str | None = None,
        exception_after_chunks: int | None = None,
        exception_first: bool = False,
        cut_mid_frame_after_chunks: int | None = None,
        max_requests_kept: int = 1000,
    ) -> None:
        self.access_keys = dict(access_keys) if access_keys is not None else None
        self.api_key = api_key
        self.region = region
        self.max_clock_skew = max_clock_skew
        self._defaults = validated(
            BedrockKnobs(
                Knobs(
                    latency=latency,
                    chunk_delay=chunk_delay,
                    status=status,
                    retry_after=retry_after,
                    reset_after_chunks=reset_after_chunks,
                    truncate_after_chunks=truncate_after_chunks,
                    chunks=chunks,
                    reply=reply,
                    cached_tokens=cached_tokens,
                    cache_write_5m=cache_write_5m,
                    cache_write_1h=cache_write_1h,
                ),
                error=error,
                exception_after_chunks=exception_after_chunks,
                exception_first=exception_first,
                cut_mid_frame_after_chunks=cut_mid_frame_after_chunks,
            )
        )
        self._requests: collections.deque[ReceivedRequest] = collections.deque(
            maxlen=count("max_requests_kept", max_requests_kept, 1)
        )
        self.signers: collections.deque[str] = collections.deque(maxlen=self._requests.maxlen)
        self._lock = threading.Lock()
        self._active = self._completed = self._disconnects = self._resets = 0
        logger = logging.getLogger("uvicorn.error")
        if _RESET_FILTER not in logger.filters:
            logger.addFilter(_RESET_FILTER)

    def configure(self, **knobs: object) -> None:
        """Change default knobs for the requests that follow, e.g.
        ``fake.configure(error="ThrottlingException")``."""
        own = {f.name for f in dataclasses.fields(BedrockKnobs)} - {"common"}
        common = {f.name for f in dataclasses.fields(Knobs)}
        unknown = set(knobs) - own - common
        if unknown:
            raise TypeError(f"unknown knob(s): {', '.join(sorted(unknown))}")
        defaults = self._defaults
        self._defaults = validated(
            dataclasses.replace(
                defaults,
                common=dataclasses.replace(
                    defaults.common,
                    **{k: v for k, v in knobs.items() if k in common},  # type: ignore[arg-type]
                ),
                **{k: v for k, v in knobs.items() if k in own},  # type: ignore[arg-type]
            )
        )

    # -- observation ------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget the recorded requests and zero the counters (except :attr:`active_streams`)."""
        with self._lock:
            self._requests.clear()
            self.signers.clear()
            self._completed = self._disconnects = self._resets = 0

    # -- ASGI -------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await read_http_request(scope, receive, send)
        if body is None:
            return
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        request = received_request(scope, body, raw_path.decode("latin-1"))
        await self._observe(request, receive, send, lambda ex: self._answer(request, scope, ex))

    async def _answer(self, request: ReceivedRequest, scope: Scope, exchange: Exchange) -> None:
        knobs = self._defaults
        try:
            model_id, operation = self._route(request, scope.get("root_path", ""))
            self._authenticate(request, scope)
            knobs = override(knobs, request.headers)
            await exchange.pause(knobs.common.latency)
            in_stream = (
                knobs.exception_after_chunks is not None or knobs.exception_first
            ) and operation.endswith("stream")
            retry = knobs.common.retry_after
            headers = [] if retry is None else [(b"retry-after", f"{retry:g}".encode())]
            if knobs.error is not None and not in_stream:
                raise ApiError(
                    wire.ERRORS[knobs.error],
                    f"Fake Bedrock: {knobs.error}",
                    kind=knobs.error,
                    headers=headers,
                )
            status = knobs.common.status
            if status is not None and status >= 400:
                raise ApiError(status, f"Fake Bedrock: HTTP {status}", headers=headers)
            result = self._dispatch(request, model_id, operation, knobs)
        except ApiError as error:
            await self._send_error(exchange, error)
            return
        if isinstance(result, StreamPlan):
            await self._stream(exchange, result, knobs)
            return
        body, headers = result
        data = orjson.dumps(body)
        await exchange.start(
            200,
            [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
                _request_id(),
                *headers,
            ],
        )
        await exchange.body(data, more=False)

    @staticmethod
    def _route(request: ReceivedRequest, root_path: str) -> tuple[str, str]:
        path = request.path
        if root_path and path.startswith(root_path):
            path = path[len(root_path) :]
        rest = path.removeprefix("/model/")
        model_raw, _, operation = rest.rpartition("/")
        if rest == path or not model_raw or operation not in _OPERATIONS:
            raise ApiError(
                404, f"Unknown operation: {request.method} {path}", kind="UnknownOperationException"
            )
        if request.method != "POST":
            raise ApiError(
                405, f"Method {request.method} not allowed", kind="UnknownOperationException"
            )
        return urllib.parse.unquote(model_raw), operation

    def _authenticate(self, request: ReceivedRequest, scope: Scope) -> None:
        if self.access_keys is None and self.api_key is None:
            return
        signer = authenticate(
            request,
            scope.get("raw_path") or scope["path"].encode(),
            scope.get("query_string", b""),
            access_keys=self.access_keys or {},
            api_key=self.api_key,
            region=self.region,
            max_skew=self.max_clock_skew,
        )
        self.signers.append(signer)

    @staticmethod
    def _dispatch(
        request: ReceivedRequest, model_id: str, operation: str, knobs: BedrockKnobs
    ) -> tuple[dict[str, Any], list[tuple[bytes, bytes]]] | StreamPlan:
        try:
            body = orjson.loads(request.body)
        except orjson.JSONDecodeError:
            raise ApiError(
                400,
                "Malformed input request, please reformat your input and try again.",
                kind="ValidationException",
            ) from None
        if not isinstance(body, dict):
            raise ApiError(
                400,
                "Malformed input request, please reformat your input and try again.",
                kind="ValidationException",
            )
        k = knobs.common
        gen = Generation(
            reply=k.reply,
            chunks=k.chunks,
            model=model_id,
            cached_tokens=k.cached_tokens,
            cache_write_5m=k.cache_write_5m,
            cache_write_1h=k.cache_write_1h,
        )
        stream = operation.endswith("stream")
        if operation.startswith("converse"):
            result = wire.converse(body, gen, stream=stream)
            return result if isinstance(result, StreamPlan) else (result, [])
        return wire.invoke(body, gen, stream=stream)

    # -- sending ----------------------------------------------------------------------------------

    @staticmethod
    async def _send_error(exchange: Exchange, error: ApiError) -> None:
        name = error.kind or wire.error_name(error.status)
        data = orjson.dumps({"message": error.message})
        await exchange.start(
            error.status,
            [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
                (b"x-amzn-errortype", name.encode()),
                _request_id(),
                *error.headers,
            ],
        )
        await exchange.body(data, more=False)

    @staticmethod
    async def _stream(exchange: Exchange, plan: StreamPlan, knobs: BedrockKnobs) -> None:
        await exchange.start(
            200,
            [
                (b"content-type", _EVENTSTREAM),
                (b"x-amzn-bedrock-content-type", b"application/json"),
                _request_id(),
            ],
        )
        if knobs.exception_first:
            name = wire.stream_exception_name(knobs.error or "ThrottlingException")
            frame = _eventstream.exception(name, f"Fake Bedrock: stream ended by {name}")
            await exchange.body(frame, more=False)
            return
        if plan.head:
            await exchange.body(b"".join(plan.head))
        common = knobs.common
        for sent in range(len(plan.content) + 1):
            if sent:
                await exchange.pause(common.chunk_delay)
                await exchange.body(plan.content[sent - 1])
            if knobs.cut_mid_frame_after_chunks == sent:
                following = [*plan.content[sent:], *plan.tail]
                if following:
                    await exchange.body(following[0][: max(1, len(following[0]) // 2)])
                raise FakeConnectionReset(f"fake Bedrock cut a frame after {sent} chunks")
            if common.reset_after_chunks == sent:
                raise FakeConnectionReset(f"fake Bedrock reset the connection after {sent} chunks")
            if common.truncate_after_chunks == sent:
                await exchange.body(b"", more=False)
                return
            if knobs.exception_after_chunks == sent:
                name = wire.stream_exception_name(knobs.error or "ModelStreamErrorException")
                frame = _eventstream.exception(name, f"Fake Bedrock: stream ended by {name}")
                await exchange.body(frame, more=False)
                return
        await exchange.body(b"".join(plan.tail), more=False)


def _request_id() -> tuple[bytes, bytes]:
    return b"x-amzn-requestid", str(uuid.uuid4()).encode()
