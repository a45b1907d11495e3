"""A fake LLM provider: one pure ASGI app speaking OpenAI's, Azure OpenAI's, Anthropic's and
Google's Gemini APIs.

It answers the way the official ``openai`` and ``anthropic`` SDKs expect, streaming included, with
a fixed reply and deterministic token counts, and can misbehave on demand (latency, slow streams,
error statuses, cut or reset streams). It records every request it receives, so a test can check
what an app under test sent upstream.

Endpoints (paths as the fake receives them; point an OpenAI SDK at ``<url>/v1``, an Anthropic SDK
at ``<url>`` and an Azure OpenAI SDK at ``azure_endpoint=<url>``):

==========================================================  =====================================
``POST /v1/chat/completions``                                OpenAI chat (``stream`` supported)
``POST /v1/completions``                                     OpenAI legacy completions (idem)
``POST /v1/responses``                                       OpenAI Responses API (idem)
``POST /v1/embeddings``                                      OpenAI embeddings
``GET /v1/models``, ``GET /v1/models/{id}``                  OpenAI's shape, Anthropic's when the
                                                             request has ``anthropic-version``
``POST /v1/audio/transcriptions``, ``.../translations``      OpenAI audio (``multipart/form-data``;
                                                             rules in ``_uploads``)
``POST /v1/images/edits``, ``.../variations``                OpenAI images (``multipart/form-data``)
``POST /v1/images/generations``                              OpenAI images (JSON)
``POST /v1/messages``                                        Anthropic Messages (idem)
``POST /v1/messages/count_tokens``                           Anthropic token counting
``POST /v1/responses/compact``                               OpenAI compaction (one ``compaction``
                                                             item; usage as ``/v1/responses``)
``POST /v1/messages/batches``, ``GET .../batches/{id}``      Anthropic Message Batches (a batch
                                                             ``in_progress``; nothing is run)
``POST /openai/deployments/{name}/chat/completions``         Azure OpenAI; also ``/completions``
                                                             and ``/embeddings``; needs the
                                                             ``api-version`` query parameter
``POST /v1beta/models/{model}:generateContent``              Gemini (also under ``/v1``);
                                                             ``:streamGenerateContent`` (SSE with
                                                             ``?alt=sse``, else a JSON array),
                                                             ``:countTokens``, ``:embedContent``,
                                                             ``:batchEmbedContents``; ``GET
                                                             /v1beta/models[/{model}]``; rules in
                                                             ``_gemini``
``POST /v1beta/openai/chat/completions``, ``.../embeddings``  Gemini's OpenAI-compatible endpoint:
                                                             OpenAI's wire and ``Authorization:
                                                             Bearer``; ``GET /v1beta/openai/
                                                             models[/{id}]`` lists Gemini's
                                                             models (``models/gemini-2.5-flash``)
==========================================================  =====================================

The ``model`` of every answer is the request's ``model`` (for Azure: the deployment name). Errors
use the shape of the API called: ``{"error": {"message", "type", "param", "code"}}`` for OpenAI
and Azure, ``{"type": "error", "error": {"type", "message"}}`` for Anthropic (``/v1/messages*``).
Unknown paths answer 404, a wrong method 405, a body that is not a JSON object 400 (on the upload
endpoints: a body that is not ``multipart/form-data``).

**Uploads.** The audio lasts one second per 1,000 bytes of the uploaded ``file``: ``whisper-1``
reports it as ``duration`` (``verbose_json``) and ``usage: {"type": "duration", "seconds"}``
(rounded up); other models answer ``json`` or ``text`` only, with ``usage: {"type": "tokens"}``
(one audio token per 100 bytes, the words of ``prompt`` as text tokens, the transcript's words as
output). ``text``, ``srt`` and ``vtt`` answers carry no numbers. Images answers carry ``n``
entries; ``gpt-image-*`` ones add token usage.

**Token rule.** A token is a whitespace-separated word (:meth:`FakeProvider.count_tokens`).

* Prompt tokens: the words of all text sent, at least 1: every message's ``content`` (a string,
  or the ``text`` of each part of a list), plus Anthropic's ``system`` and the Responses API's
  ``instructions`` and ``input`` (a string, or its items' ``content``); a legacy ``prompt`` (token
  arrays count their length). Embeddings: the words of every string input plus the length of
  every token-array input.
* Completion tokens: the number of content chunks produced, one per word of the reply (each word
  keeps its leading whitespace, so the chunks concatenate to the reply). ``chunks`` repeats the
  reply's words until exactly that many chunks exist. A request's ``max_tokens``,
  ``max_completion_tokens`` or ``max_output_tokens`` keeps only the first that many; when it cuts
  the reply, ``finish_reason`` is ``"length"`` (Anthropic: ``stop_reason`` ``"max_tokens"``,
  Responses: status ``"incomplete"``). :meth:`FakeProvider.reply_chunks` gives the chunks.
* Anthropic's ``count_tokens`` answers the prompt tokens ``/v1/messages`` would report.

Non-streamed answers carry the same usage their stream would report.

**Knobs.** Every constructor default can be overridden for one request with a header:
``x-fake-latency``, ``x-fake-chunk-delay``, ``x-fake-status``, ``x-fake-retry-after``,
``x-fake-reset-after-chunks``, ``x-fake-truncate-after-chunks``, ``x-fake-chunks``,
``x-fake-reply`` (UTF-8), ``x-fake-cached-tokens`` and ``x-fake-reasoning-tokens`` (OpenAI's
``cached_tokens`` and ``reasoning_tokens`` usage details; reasoning counts in the output),
``x-fake-line-ending`` (``lf``, ``crlf`` or ``cr``: the line ending of streamed events),
``x-fake-usage-in-last-chunk`` (``true``: a chat stream asked for usage carries it on its last
chunk with choices instead of a usage-only chunk), ``x-fake-cache-write-5m`` /
``x-fake-cache-write-1h`` (prompt tokens an Anthropic message reports written to its 5-minute /
1-hour prompt cache, in ``usage.cache_creation``), and ``x-fake-service-tier`` (the service tier
the answer reports as having served it, whatever the request asked for: OpenAI's top-level
``service_tier`` on chat completions and Responses, in the JSON answer, on every chat chunk and on
the ``response`` object of every Responses event; Anthropic's ``usage.service_tier`` in the
message and in ``message_start``; by default ``default`` and ``standard``), and the tool-loop
knobs ``x-fake-tool-call``, ``x-fake-tool-arguments``, ``x-fake-parallel-tool-calls`` and
``x-fake-structured-output`` (the script is in ``_tools``). The value ``none``
clears an optional knob and ``x-fake-status: 200`` turns a default error status off. A bad value
or an unknown ``x-fake-*`` header answers 400.
``chunk_delay``, ``reset_after_chunks`` and ``truncate_after_chunks`` only affect streams.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import http
import logging
import threading
import urllib.parse
from typing import Any

import orjson

from asgi_llmguard.testing import _anthropic, _gemini, _openai, _uploads
from asgi_llmguard.testing._common import (
    ApiError,
    Generation,
    StreamPlan,
    count_tokens,
    new_id,
    reply_chunks,
)
from asgi_llmguard.testing._http import (
    Api,
    Exchange,
    FakeConnectionReset,
    Receive,
    ReceivedRequest,
    Route,
    Scope,
    Send,
    route_of,
)
from asgi_llmguard.testing._knobs import (
    DEFAULT_REPLY,
    Knobs,
    count,
    override,
    validate,
)
from asgi_llmguard.testing._observed import Observed, received_request
from asgi_llmguard.testing._playback import play, with_line_ending
from asgi_llmguard.testing._realtime import realtime_model, serve_realtime
from asgi_llmguard.testing._tools import Script
from asgi_llmguard.testing._websocket import (
    Session,
    SocketDropped,
    check_key,
    deny,
    offered_protocols,
    serve_responses,
)

__all__ = ["FakeConnectionReset", "FakeProvider", "ReceivedRequest"]


class _IgnoreIntentionalResets(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, FakeConnectionReset)


_RESET_FILTER = _IgnoreIntentionalResets()

_JSON_TYPE = (b"content-type", b"application/json")
_FORM_ENDPOINTS = frozenset({"transcriptions", "translations", "images.edits", "images.variations"})
_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


def _format_seconds(value: float) -> str:
    return str(int(value)) if value == int(value) else str(value)


class FakeProvider(Observed):
    """A fake OpenAI / Azure OpenAI / Anthropic API as an ASGI app; see the module docstring.

    Args:
        api_key: When set, requests must carry it: ``Authorization: Bearer <key>`` (OpenAI),
            ``api-key: <key>`` (Azure) or ``x-api-key: <key>`` (Anthropic, which also takes
            ``Authorization: Bearer <key>``, as its 2.x SDK sends); otherwise 401.
        reply: The assistant's text.
        latency: Seconds before the response headers (every response, errors included).
        chunk_delay: Seconds of pause before each content chunk of a stream.
        status: Answer every request with this error status, in the called API's error shape
            (a status below 400 means: answer normally).
        retry_after: With ``status``: the ``Retry-After`` header's value, in seconds.
        reset_after_chunks: Drop the connection after this many content chunks of a stream
            (0: right after the stream's opening events) by raising :class:`FakeConnectionReset`.
        truncate_after_chunks: End the stream's body cleanly after this many content chunks, but
            without its final events: no finish chunk, usage or ``[DONE]``; no ``message_delta``
            or ``message_stop``; no ``response.completed``.
        chunks: Produce exactly this many content chunks, repeating the reply's words.
        cache_write_5m: Prompt tokens an Anthropic message reports written to the 5-minute
            prompt cache (``usage.cache_creation.ephemeral_5m_input_tokens``).
        cache_write_1h: The same for the 1-hour cache (``ephemeral_1h_input_tokens``).
        service_tier: The service tier the answers report as having served them: OpenAI's
            top-level ``service_tier`` (default ``"default"``), Anthropic's
            ``usage.service_tier`` (default ``"standard"``). The request's ``service_tier``
            does not change it, as a provider may serve another tier than the one asked for.
        tool_call: Call a tool when the request offers tools and its last turn is not a tool
            result: ``"auto"`` (the first offered tool) or a tool's name; once tool results
            arrive, answer ``Tool result: <result>``. See ``_tools`` for the whole script.
        tool_arguments: The calls' arguments, a JSON object (default: built from the tool's
            schema).
        parallel_tool_calls: Make two calls in one turn.
        structured_output: Answer a request's response schema (``response_format``,
            ``text.format``, ``output_format``, ``responseSchema``) with JSON built from it.
        max_requests_kept: How many requests :attr:`requests` remembers (oldest dropped first).

    The knobs can be changed later with :meth:`configure`, or per request with ``x-fake-*``
    headers (see the module docstring); :attr:`api_key` can be reassigned.

    Observation: :attr:`requests`, :attr:`active_streams`, :attr:`completed`,
    :attr:`disconnects` and :attr:`resets` are safe to read from any thread; :meth:`reset`
    clears them. :meth:`wait_for` (async) and :meth:`wait_until` (blocking) wait for a condition.
    """

    count_tokens = staticmethod(count_tokens)
    reply_chunks = staticmethod(reply_chunks)
    embed = staticmethod(_openai.embed)

    def __init__(
        self,
        *,
        api_key: str | None = None,
        reply: str = DEFAULT_REPLY,
        latency: float = 0.0,
        chunk_delay: float = 0.0,
        status: int | None = None,
        retry_after: float | None = None,
        reset_after_chunks: int | None = None,
        truncate_after_chunks: int | None = None,
        chunks: int | None = None,
        max_requests_kept: int = 1000,
        cache_write_5m: int = 0,
        cache_write_1h: int = 0,
        service_tier: str | None = None,
        tool_call: str | None = None,
        tool_arguments: str | None = None,
        parallel_tool_calls: bool = False,
        structured_output: bool = False,
    ) -> None:
        self.api_key = api_key
        self._defaults = validate(
            Knobs(
                latency=latency,
                chunk_delay=chunk_delay,
                status=status,
                retry_after=retry_after,
                reset_after_chunks=reset_after_chunks,
                truncate_after_chunks=truncate_after_chunks,
                chunks=chunks,
                reply=reply,
                cache_write_5m=cache_write_5m,
                cache_write_1h=cache_write_1h,
                service_tier=service_tier,
                tool_call=tool_call,
                tool_arguments=tool_arguments,
                parallel_tool_calls=parallel_tool_calls,
                structured_output=structured_output,
            )
        )
        self._requests: collections.deque[ReceivedRequest] = collections.deque(
            maxlen=count("max_requests_kept", max_requests_kept, 1)
        )
        self._lock = threading.Lock()
        self._active = self._completed = self._disconnects = self._resets = 0
        logger = logging.getLogger("uvicorn.error")
        if _RESET_FILTER not in logger.filters:
            logger.addFilter(_RESET_FILTER)

    def configure(self, **knobs: object) -> None:
        """Change default knobs for the requests that follow, e.g. ``fake.configure(status=503)``.

        Takes the constructor's knob names (``reply``, ``latency``, ``chunk_delay``, ``status``,
        ``retry_after``, ``reset_after_chunks``, ``truncate_after_chunks``, ``chunks``,
        ``cache_write_5m``, ``cache_write_1h``, ``service_tier``, ``tool_call``,
        ``tool_arguments``, ``parallel_tool_calls``, ``structured_output``);
        requests already in progress keep the knobs they started with.
        """
        unknown = set(knobs) - {f.name for f in dataclasses.fields(Knobs)}
        if unknown:
            raise TypeError(f"unknown knob(s): {', '.join(sorted(unknown))}")
        self._defaults = validate(dataclasses.replace(self._defaults, **knobs))  # type: ignore[arg-type]

    # -- observation ------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget the recorded requests and zero the counters (except :attr:`active_streams`)."""
        with self._lock:
            self._requests.clear()
            self._completed = self._disconnects = self._resets = 0

    # -- ASGI -------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            return
        body = await self._read_body(receive)
        if body is None:
            return
        request = received_request(scope, body)
        root = scope.get("root_path", "")
        await self._observe(request, receive, send, lambda ex: self._answer(request, root, ex))

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The Responses API's WebSocket mode and the Realtime API (see ``_websocket``)."""
        if (await receive())["type"] != "websocket.connect":
            return
        headers = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope["headers"]]
        query = scope.get("query_string", b"").decode("latin-1")
        path = self._api_path(scope["path"], scope.get("root_path", ""))
        with self._lock:
            self._requests.append(ReceivedRequest("GET", scope["path"], query, headers, b""))
        api = "azure" if path == "/openai/realtime" else "openai"
        model = ""
        try:
            knobs = override(self._defaults, headers)
            if path not in ("/v1/responses", "/v1/realtime", "/openai/realtime"):
                raise ApiError(404, f"Invalid URL (GET {scope['path']})", code="unknown_url")
            if self.api_key is not None:
                check_key(api, headers, self.api_key)
            if knobs.status is not None and knobs.status >= 400:
                raise self._injected_error(knobs)
            if path != "/v1/responses":
                model = realtime_model(api, query, "")
        except ApiError as error:
            await deny(scope, send, error)
            return
        await asyncio.sleep(knobs.latency)
        accept: dict[str, Any] = {"type": "websocket.accept"}
        if "realtime" in offered_protocols(headers):
            accept["subprotocol"] = "realtime"
        await send(accept)

        def on_turn(frame: bytes) -> None:
            with self._lock:
                self._requests.append(
                    ReceivedRequest("WEBSOCKET", scope["path"], query, headers, frame)
                )

        session = Session(receive, send, knobs, asyncio.sleep)
        with self._lock:
            self._active += 1
        outcome = "disconnects"
        try:
            if path == "/v1/responses":
                await serve_responses(session, on_turn)
            else:
                await serve_realtime(session, model, on_turn)
            outcome = "completed"
        except SocketDropped as exc:
            outcome = "resets"
            raise FakeConnectionReset(str(exc)) from None
        except OSError:
            pass  # the client went away while a frame was being sent
        finally:
            with self._lock:
                self._active -= 1
                if outcome == "completed":
                    self._completed += 1
                elif outcome == "disconnects":
                    self._disconnects += 1
                else:
                    self._resets += 1

    @staticmethod
    async def _lifespan(receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    @staticmethod
    async def _read_body(receive: Receive) -> bytes | None:
        parts: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            parts.append(message.get("body", b""))
            if not message.get("more_body", False):
                return b"".join(parts)

    @staticmethod
    def _api_path(path: str, root_path: str) -> str:
        """The path to route on: without the prefix the fake is mounted under, if any."""
        if root_path and path.startswith(root_path):
            return path[len(root_path) :]
        return path

    async def _answer(self, request: ReceivedRequest, root_path: str, exchange: Exchange) -> None:
        route = route_of(request, self._api_path(request.path, root_path))
        knobs = self._defaults
        try:
            knobs = override(knobs, request.headers)
            await exchange.pause(knobs.latency)
            self._check_request(route, request)
            if knobs.status is not None and knobs.status >= 400:
                raise self._injected_error(knobs)
            result = self._dispatch(route, request, knobs)
        except ApiError as error:
            await self._send_error(exchange, route.api, error)
            return
        if isinstance(result, StreamPlan):
            await self._stream(exchange, route.api, result, knobs)
        elif isinstance(result, _uploads.PlainText):
            data = result.body.encode()
            await exchange.start(
                200,
                [
                    (b"content-type", result.content_type.encode()),
                    (b"content-length", str(len(data)).encode()),
                    self._id_header(route.api),
                ],
            )
            await exchange.body(data, more=False)
        else:
            await self._send_json(exchange, route.api, 200, result, [])

    def _check_request(self, route: Route, request: ReceivedRequest) -> None:
        """404, 405, 401 and Azure's missing ``api-version``, in that order."""
        if route.endpoint is None:
            raise ApiError(
                404, f"Invalid URL ({request.method} {request.path})", code="unknown_url"
            )
        if request.method not in route.methods:
            raise ApiError(
                405,
                f"Method {request.method} not allowed on {request.path}",
                headers=[(b"allow", ", ".join(route.methods).encode())],
            )
        if self.api_key is not None:
            self._check_key(route.api, request, self.api_key)
        if route.api == "gemini" and route.endpoint is None:
            raise ApiError(404, f"Invalid URL ({request.method} {request.path})")
        if route.api == "azure":
            query = urllib.parse.parse_qs(request.query_string)
            if not query.get("api-version"):
                raise ApiError(
                    400,
                    "The api-version query parameter (?api-version=) is required for all requests.",
                    code="MissingApiVersionParameter",
                )

    @staticmethod
    def _check_key(api: Api, request: ReceivedRequest, key: str) -> None:
        if api == "openai":
            given = request.header("authorization")
            if given is None:
                raise ApiError(
                    401,
                    "You didn't provide an API key. You need to provide your API key in an "
                    "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                )
            if given != f"Bearer {key}":
                raise ApiError(401, "Incorrect API key provided.")
        elif api == "azure":
            if request.header("api-key") != key:
                raise ApiError(
                    401,
                    "Access denied due to invalid subscription key or wrong API endpoint. Make "
                    "sure to provide a valid key for an active subscription and use a correct "
                    "regional API endpoint for your resource.",
                    code="401",
                )
        elif api == "gemini":
            # Gemini takes ``x-goog-api-key`` or the ``key`` query parameter.
            given = request.header("x-goog-api-key")
            if given is None:
                keys = urllib.parse.parse_qs(request.query_string).get("key")
                given = keys[0] if keys else None
            if given is None:
                raise ApiError(
                    403,
                    "Method doesn't allow unregistered callers (callers without established "
                    "identity). Please use API Key or other form of API consumer identity to "
                    "call this API.",
                )
            if given != key:
                raise ApiError(400, "API key not valid. Please pass a valid API key.")
        else:
            # Anthropic takes ``x-api-key``; its SDK (2.x) sends ``Authorization: Bearer``.
            given = request.header("x-api-key")
            bearer = request.header("authorization")
            if given is None and bearer is None:
                raise ApiError(401, "x-api-key header is required")
            if given != key and bearer != f"Bearer {key}":
                raise ApiError(401, "invalid x-api-key")

    @staticmethod
    def _injected_error(knobs: Knobs) -> ApiError:
        status = knobs.status or 500
        try:
            phrase = http.HTTPStatus(status).phrase
        except ValueError:
            phrase = "Overloaded" if status == 529 else "Error"
        headers = []
        if knobs.retry_after is not None:
            headers.append((b"retry-after", _format_seconds(knobs.retry_after).encode()))
        return ApiError(status, f"Fake provider error: {status} {phrase}", headers=headers)

    @staticmethod
    def _dispatch(
        route: Route, request: ReceivedRequest, knobs: Knobs
    ) -> dict[str, Any] | StreamPlan | _uploads.PlainText:
        if route.endpoint in _FORM_ENDPOINTS:
            form = _uploads.parse_form(request.header("content-type"), request.body)
            upload = Generation(reply=knobs.reply, chunks=None)
            if route.endpoint == "transcriptions":
                return _uploads.audio(form, upload, "transcribe")
            if route.endpoint == "translations":
                return _uploads.audio(form, upload, "translate")
            uploaded = sum(sum(sizes) for sizes in form.files.values())
            return _uploads.images(form.fields, upload, uploaded, needs_image=True)
        if route.api == "gemini" and route.endpoint in ("models", "model"):
            return _gemini.models() if route.endpoint == "models" else _gemini.model(route.arg)
        if route.endpoint == "gemini.models":
            return _gemini.openai_models()
        if route.endpoint == "gemini.model":
            return _gemini.openai_model(route.arg)
        if route.endpoint == "models":
            return _anthropic.models() if route.api == "anthropic" else _openai.models()
        if route.endpoint == "batch":
            return _anthropic.batch(route.arg, 0)
        if route.endpoint == "model":
            if route.api == "anthropic":
                return _anthropic.model(route.arg)
            return _openai.model(route.arg)
        try:
            body = orjson.loads(request.body)
        except orjson.JSONDecodeError:
            raise ApiError(
                400,
                "We could not parse the JSON body of your request. The API expects a JSON "
                "payload, but what was sent was not valid JSON.",
            ) from None
        if not isinstance(body, dict):
            raise ApiError(400, "The request body must be a JSON object.")
        generation = Generation(
            reply=knobs.reply,
            chunks=knobs.chunks,
            model=route.arg if route.api == "azure" else None,
            cached_tokens=knobs.cached_tokens,
            reasoning_tokens=knobs.reasoning_tokens,
            usage_in_last_chunk=knobs.usage_in_last_chunk,
            cache_write_5m=knobs.cache_write_5m,
            cache_write_1h=knobs.cache_write_1h,
            service_tier=knobs.service_tier,
            script=Script(
                knobs.tool_call,
                knobs.tool_arguments,
                knobs.parallel_tool_calls,
                knobs.structured_output,
            ),
        )
        if route.api == "gemini":
            return FakeProvider._gemini(route, body, generation)
        match route.endpoint:
            case "chat":
                return _openai.chat(body, generation)
            case "completions":
                return _openai.completions(body, generation)
            case "responses":
                return _openai.responses(body, generation)
            case "embeddings":
                return _openai.embeddings(body, generation)
            case "compact":
                return _openai.compact(body, generation)
            case "images.generations":
                return _uploads.images(body, generation)
            case "messages":
                return _anthropic.messages(body, generation)
            case "batches.create":
                return _anthropic.batches_create(body)
            case _:
                return _anthropic.count_tokens(body)

    @staticmethod
    def _gemini(
        route: Route, body: dict[str, Any], generation: Generation
    ) -> dict[str, Any] | StreamPlan:
        match route.endpoint:
            case "generateContent":
                return _gemini.generate(route.arg, body, generation)
            case "streamGenerateContent":
                sse = "sse" in urllib.parse.parse_qs(route.query).get("alt", ())
                return _gemini.stream(route.arg, body, generation, sse)
            case "countTokens":
                return _gemini.count(body)
            case "embedContent":
                return _gemini.embed(body)
            case _:
                return _gemini.batch_embed(body)

    # -- sending ----------------------------------------------------------------------------------

    @staticmethod
    def _id_header(api: Api) -> tuple[bytes, bytes]:
        name = b"request-id" if api == "anthropic" else b"x-request-id"
        return name, new_id("req_").encode()

    async def _send_json(
        self,
        exchange: Exchange,
        api: Api,
        status: int,
        obj: dict[str, Any],
        headers: list[tuple[bytes, bytes]],
    ) -> None:
        data = orjson.dumps(obj)
        await exchange.start(
            status,
            [
                _JSON_TYPE,
                (b"content-length", str(len(data)).encode()),
                self._id_header(api),
                *headers,
            ],
        )
        await exchange.body(data, more=False)

    async def _send_error(self, exchange: Exchange, api: Api, error: ApiError) -> None:
        if api == "anthropic":
            body = _anthropic.error_body(error.status, error.message, kind=error.kind)
        elif api == "gemini":
            # Google says how long to wait in the body (``RetryInfo``), not in a header.
            retry = next((v for k, v in error.headers if k == b"retry-after"), None)
            body = _gemini.error_body(
                error.status, error.message, retry_delay=float(retry) if retry else None
            )
            headers = [(k, v) for k, v in error.headers if k != b"retry-after"]
            await self._send_json(exchange, api, error.status, body, headers)
            return
        else:
            body = _openai.error_body(
                error.status, error.message, code=error.code, param=error.param, kind=error.kind
            )
        await self._send_json(exchange, api, error.status, body, error.headers)

    async def _stream(self, exchange: Exchange, api: Api, plan: StreamPlan, knobs: Knobs) -> None:
        plan = with_line_ending(plan, knobs.line_ending)
        headers = _SSE_HEADERS if plan.content_type == b"text/event-stream" else [_JSON_TYPE]
        await play(exchange, plan, knobs, [*headers, self._id_header(api)], "fake provider")
