"""The per-request context every layer reads instead of re-deriving facts from the scope.

`RequestContext` is created once, by the classifier or lazily by the first layer that needs it, and
stored at ``scope["llmguard.context"]``: not in ``scope["state"]``, which some servers and test
transports share between requests or leave out.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote_to_bytes

import msgspec

from asgi_llmguard.multipart import MalformedForm, boundary_of, form_fields
from asgi_llmguard.policy import KeyPolicy
from asgi_llmguard.routes import (
    SHARED_PREFIXES,
    MethodNotAllowed,
    Route,
    RouteNotFound,
    classify,
    classify_google,
    classify_websocket,
)
from asgi_llmguard.tokens import TokenUsage
from asgi_llmguard.types import Message, Receive, Scope

SCOPE_KEY = "llmguard.context"


class UniqueIds:
    """Ids unique across processes and restarts with overwhelming probability, and far cheaper
    than a uuid4 each: a random prefix per process, then a count.

    A process forked from one that already made the source (gunicorn ``--preload``, a
    multiprocessing fork) gets a fresh prefix: otherwise two workers would count on from the
    same place and hand out the same ids, which collide wherever an id is stored once (the
    ledger, a budget's reservations).
    """

    __slots__ = ("_count", "_prefix", "_tag")

    def __init__(self, tag: str) -> None:
        self._tag = tag
        self._renew()
        os.register_at_fork(after_in_child=self._renew)

    def _renew(self) -> None:
        self._prefix = self._tag + os.urandom(8).hex()
        self._count: Iterator[int] = itertools.count(1)

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._count):x}"


#: A new request id (``req_`` + 16 random hex digits + a count).
new_request_id = UniqueIds("req_")

#: The response header that carries the gateway's own request id (`RequestContext.request_id`).
GATEWAY_REQUEST_ID_HEADER = "x-llmguard-request-id"


class StreamOptions(msgspec.Struct):
    include_usage: bool | None = None


class Tool(msgspec.Struct):
    type: str | None = None
    #: The remote MCP server of a Responses-API ``mcp`` tool.
    server_url: str | None = None


class McpServer(msgspec.Struct):
    """An entry of Anthropic's ``mcp_servers`` (the MCP connector)."""

    url: str | None = None


class GenerationConfig(msgspec.Struct):
    """Gemini's ``generationConfig`` (AI Studio and Vertex AI)."""

    max_output_tokens: int | None = msgspec.field(default=None, name="maxOutputTokens")


class RequestFields(msgspec.Struct):
    """The few request-body fields the gateway acts on; all other fields are skipped unread."""

    model: str | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    max_output_tokens: int | None = None
    tools: list[Tool] | None = None
    background: bool | None = None
    #: Chat completions' hosted web search (a tool outside ``tools``).
    web_search_options: dict[str, object] | None = None
    #: Anthropic's MCP connector (servers outside ``tools``).
    mcp_servers: list[McpServer] | None = None
    #: How many images (or choices) to make.
    n: int | None = None

    @property
    def max_output(self) -> int | None:
        """The output-token cap, whichever of the providers' names carries it."""
        value = self.max_completion_tokens
        if value is None:
            value = self.max_tokens
            if value is None:
                value = self.max_output_tokens
        return value


class GoogleFields(RequestFields):
    """The fields of a Gemini request (AI Studio and Vertex AI): the output cap is
    ``generationConfig.maxOutputTokens``. Decoded only on those routes, so no other request pays
    for the extra field."""

    generation_config: GenerationConfig | None = msgspec.field(
        default=None, name="generationConfig"
    )

    @property
    def max_output(self) -> int | None:
        config = self.generation_config
        if config is not None and config.max_output_tokens is not None:
            return config.max_output_tokens
        return super().max_output


_EMPTY_FIELDS = RequestFields()
_STREAMING_FIELDS = RequestFields(stream=True)
_decoder = msgspec.json.Decoder(RequestFields)
_google_decoder = msgspec.json.Decoder(GoogleFields)
#: The decoder of each `Endpoint.fields_format`.
_DECODERS: tuple[msgspec.json.Decoder[Any], ...] = (_decoder, _google_decoder)


def _stream_fields(body: bytes | None) -> RequestFields:
    """The fields of a route that always streams: ``stream``, and the output cap its body may set
    (Gemini's ``generationConfig.maxOutputTokens``); the body is the upstream's to judge."""
    if not body or b"maxOutputTokens" not in body:
        return _STREAMING_FIELDS
    try:
        config = _google_decoder.decode(body).generation_config
    except (msgspec.DecodeError, RecursionError):
        return _STREAMING_FIELDS
    return GoogleFields(stream=True, generation_config=config)


#: The form fields read from a multipart upload; every other part (the file) is skipped.
_FORM_FIELDS = ("model", "n", "stream")


class _BedrockInference(msgspec.Struct):
    maxTokens: int | None = None


class _BedrockCaps(msgspec.Struct):
    """Bedrock's output caps: Converse's ``inferenceConfig.maxTokens``, InvokeModel's (Claude's
    body) ``max_tokens``."""

    inferenceConfig: _BedrockInference | None = None
    max_tokens: int | None = None


_bedrock_decoder = msgspec.json.Decoder(_BedrockCaps)


def _bedrock_fields(body: bytes, fields: RequestFields) -> RequestFields:
    """``fields`` with a Bedrock body's output cap (a body that does not decode is the
    upstream's to refuse: ``fields`` as they are)."""
    try:
        caps = _bedrock_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return fields
    config = caps.inferenceConfig
    cap = config.maxTokens if config is not None else None
    cap = caps.max_tokens if cap is None else cap
    return fields if cap is None else msgspec.structs.replace(fields, max_tokens=cap)


class InvalidBody(Exception):
    """The request body is not the JSON object the endpoint takes. The message is safe to show."""


class ClientDisconnected(Exception):
    """The client went away before the request body was complete."""


class Attempt:
    """One upstream attempt that did not serve the request (the forwarder tried another
    credential after it), or one background warm-up. The usage layer records each."""

    __slots__ = (
        "credential_id",
        "error",
        "latency",
        "model",
        "request_id",
        "started_at",
        "status",
        "usage",
    )

    def __init__(
        self,
        credential_id: str,
        model: str | None,
        *,
        status: int = 0,
        error: str | None = None,
        started_at: float = 0.0,
        latency: float = 0.0,
        usage: TokenUsage | None = None,
        request_id: str | None = None,
    ) -> None:
        self.credential_id = credential_id
        #: Warm-ups only: their own request id (sent upstream as ``x-request-id``).
        self.request_id = request_id
        #: The model sent upstream (alias resolved, thinking suffix removed).
        self.model = model
        #: The upstream's HTTP status, 0 when none came (``error`` says why: connect, timeout...).
        self.status = status
        self.error = error
        self.started_at = started_at
        self.latency = latency
        #: Tokens the upstream reported (warm-ups); failed attempts have none.
        self.usage = usage

    def __repr__(self) -> str:
        return f"<Attempt {self.credential_id} status={self.status} error={self.error}>"


_ANTHROPIC_HEADERS = frozenset({b"anthropic-version", b"anthropic-beta", b"x-api-key"})
#: Google's key header: on ``/v1/models`` it says the caller speaks the Gemini API.
_GOOGLE_KEY_HEADER = b"x-goog-api-key"
#: Where `RequestContext.from_scope` puts a key it took out of a Gemini URL's ``key`` parameter;
#: the key layer reads it when no header carries one.
QUERY_KEY = "llmguard.query_key"


def take_query_key(scope: Scope) -> None:
    """Remove the ``key`` query parameter (the Gemini API's way of sending an API key) from
    ``scope["query_string"]`` and keep its value at ``scope[QUERY_KEY]``, so no layer that records
    or forwards the URL ever sees it."""
    query: bytes = scope.get("query_string", b"")
    if b"key=" not in query:
        return
    kept: list[bytes] = []
    key: bytes | None = None
    for pair in query.split(b"&"):
        if pair.startswith(b"key="):
            if key is None:
                key = unquote_to_bytes(pair[4:].replace(b"+", b" "))
        else:
            kept.append(pair)
    if key is not None:
        scope[QUERY_KEY] = key
        scope["query_string"] = b"&".join(kept)


class RequestContext:
    """What the gateway knows about one request. Layers add to it; none re-derives it."""

    __slots__ = (
        "_fields",
        "attempts",
        "body",
        "client_request_id",
        "content_type",
        "credential_id",
        "disconnected",
        "key",
        "method",
        "path",
        "request_id",
        "route",
        "route_error",
        "start",
        "started_at",
        "translated",
        "upstream_error",
        "upstream_model",
        "usage_tokens",
    )

    def __init__(
        self, method: str, path: str, request_id: str | None = None, anthropic: bool = False
    ) -> None:
        self.method = method
        #: The route path: the ASGI ``path`` with the ``root_path`` of a mount removed.
        self.path = path
        #: The gateway's own id: the request's identity in every record, log line and metric.
        self.request_id = request_id or new_request_id()
        #: The id the caller sent (``x-request-id``), when the access-log layer accepted it; it
        #: is echoed back and sent upstream, and recorded beside ``request_id``, never as a key.
        self.client_request_id: str | None = None
        #: ``perf_counter()`` at arrival, for latencies; ``started_at`` is wall time, for records.
        self.start = time.perf_counter()
        self.started_at = time.time()
        #: The request body once a layer has read it; later layers and the forwarder replay it.
        self.body: bytes | None = None
        self._fields: RequestFields | None = None
        #: The caller's key policy once the key layer has resolved it.
        self.key: KeyPolicy | None = None
        self.route: Route | None = None
        #: Set by the forwarder: the credential that served the request, the kind of upstream
        #: failure if there was one (``connect``, ``timeout``, ``broken``), and whether the
        #: client went away before the answer was complete.
        self.credential_id: str | None = None
        self.upstream_error: str | None = None
        #: The model sent upstream when routing changed it (an alias resolved, a thinking
        #: suffix removed); ``None``: the request's own ``model``.
        self.upstream_model: str | None = None
        #: ``translated`` is set (by the forwarder) only on a request an upstream of another wire
        #: format served (`asgi_llmguard.forward.translation.Served`); unset otherwise, so a
        #: request served in its own format pays nothing for it: read it with ``getattr``.
        #: Attempts that failed before the one that served the request (retries/failover).
        self.attempts: list[Attempt] | None = None
        self.disconnected = False
        #: Set by the usage layer before it returns: the LLM tokens the request used (prompt +
        #: output, estimated when the provider did not say), for token rate limits.
        self.usage_tokens: int | None = None
        self.route_error: RouteNotFound | MethodNotAllowed | None = None
        #: The request's ``Content-Type``, kept for multipart endpoints only (their boundary).
        self.content_type: bytes | None = None
        try:
            self.route = classify(method, path, anthropic)
        except (RouteNotFound, MethodNotAllowed) as exc:
            self.route_error = exc

    @classmethod
    def from_scope(cls, scope: Scope) -> RequestContext:
        path: str = scope["path"]  # `route_path`, inlined
        root: str = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :] or "/"
        try:
            method: str = scope["method"]
        except KeyError:  # an HTTP scope always has one; a WebSocket upgrade has none
            return cls._websocket(path)
        ctx: RequestContext | None = None
        if path.startswith(SHARED_PREFIXES):
            # Model lists, files and skills exist in both dialects: Anthropic's headers pick
            # Anthropic's (``anthropic-beta`` alone too: curl users of the Files API send it with
            # a Bearer key).
            # Google's key (header or ``key`` parameter) picks the Gemini API's model list.
            for name, _ in scope["headers"]:
                if name in _ANTHROPIC_HEADERS:
                    ctx = cls(method, path, None, True)
                    break
                if name == _GOOGLE_KEY_HEADER:
                    ctx = cls._google(method, path)
                    break
            else:
                if b"key=" in scope.get("query_string", b""):
                    ctx = cls._google(method, path)
        if ctx is None:
            ctx = cls(method, path)
        route = ctx.route
        if route is not None and route.endpoint.reads_scope:
            if route.endpoint.multipart:
                for name, value in scope["headers"]:
                    if name == b"content-type":
                        ctx.content_type = value
                        break
            else:  # the Gemini API
                take_query_key(scope)
        return ctx

    @classmethod
    def _google(cls, method: str, path: str) -> RequestContext:
        """The context of a request carrying Google's key on a path OpenAI's API shares."""
        ctx = cls(method, path)
        try:
            ctx.route, ctx.route_error = classify_google(method, path), None
        except (RouteNotFound, MethodNotAllowed) as exc:
            ctx.route, ctx.route_error = None, exc
        return ctx

    @classmethod
    def _websocket(cls, path: str) -> RequestContext:
        """The context of a WebSocket upgrade: its route from the WebSocket routes."""
        ctx = cls("GET", path)  # the HTTP routes' verdict is replaced by the WebSocket routes'
        try:
            ctx.route, ctx.route_error = classify_websocket(path), None
        except RouteNotFound as exc:
            ctx.route, ctx.route_error = None, exc
        return ctx

    def fields(self) -> RequestFields:
        """The decoded request fields; decoded at most once, from the body a layer has read.

        Raises `InvalidBody` for a body that is not a JSON object with fields of the right types.
        Uploads (``multipart/form-data``) get the ``model``, ``n`` and ``stream`` form fields;
        a body that is not the form its ``Content-Type`` declares raises `InvalidBody`.
        Endpoints that take neither get empty fields.
        """
        fields = self._fields
        if fields is None:
            route = self.route
            if self.body is None:
                raise RuntimeError("fields() needs the body: await read_body(ctx, receive) first")
            if route is not None and route.endpoint.multipart:
                fields = self._form_fields()
            elif route is None or not route.endpoint.json_body or not self.body:
                # A route that always streams (the path says so, not a body field).
                streams = route is not None and route.endpoint.streams
                fields = _stream_fields(self.body) if streams else _EMPTY_FIELDS
                if route is not None and route.endpoint.api == "bedrock" and self.body:
                    fields = _bedrock_fields(self.body, fields)
            else:
                body = self.body
                try:
                    # msgspec checks UTF-8 only in the fields it decodes; the upstream must not
                    # get a body that is not UTF-8 anywhere (isascii is a fast pre-check).
                    if not body.isascii():
                        body.decode("utf-8")
                    fields = _DECODERS[route.endpoint.fields_format].decode(body)
                except msgspec.ValidationError as exc:
                    raise InvalidBody(f"Invalid request body: {exc}") from None
                except RecursionError:
                    raise InvalidBody(
                        "The JSON body of your request is nested too deeply."
                    ) from None
                except (msgspec.DecodeError, UnicodeDecodeError):
                    raise InvalidBody(
                        "We could not parse the JSON body of your request. The body must be a "
                        "JSON object encoded as UTF-8."
                    ) from None
            self._fields = fields
        return fields

    def _form_fields(self) -> RequestFields:
        """The fields of a multipart upload, read in place from ``self.body``."""
        try:
            boundary = boundary_of(self.content_type or b"")
            form = form_fields(self.body or b"", boundary, _FORM_FIELDS)
        except MalformedForm as exc:
            raise InvalidBody(str(exc)) from None
        n: int | None = None
        raw_n = form.get("n")
        if raw_n is not None:
            if not raw_n.strip().isdigit():
                raise InvalidBody("Invalid request body: n must be a whole number.")
            n = int(raw_n)
        stream = form.get("stream")
        return RequestFields(
            model=form.get("model") or None,
            n=n,
            stream=None if stream is None else stream.strip().lower() == "true",
        )

    @property
    def model(self) -> str | None:
        """The model asked for: the one the path names (an Azure deployment, Gemini's
        ``models/{model}:...``), else the body's."""
        route = self.route
        if route is not None and route.model is not None:
            return route.model
        fields = self._fields
        if fields is not None:  # decoded already: no call
            return fields.model
        return self.fields().model if self.body is not None else None

    def __repr__(self) -> str:
        return f"<RequestContext {self.request_id} {self.method} {self.path}>"


def route_path(scope: Scope) -> str:
    """The path the routes are matched against: ``path`` minus the ``root_path`` of a mount."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :] or "/"
    return path


def get_context(scope: Scope) -> RequestContext:
    """The request's context, created (and stored) here when no classifier ran in front."""
    ctx: RequestContext | None = scope.get(SCOPE_KEY)
    if ctx is None:
        ctx = RequestContext.from_scope(scope)
        scope[SCOPE_KEY] = ctx
    return ctx


async def read_body(ctx: RequestContext, receive: Receive) -> bytes:
    """Read the whole request body once and keep it on the context.

    Raises `ClientDisconnected` if the client leaves first. Size limits are enforced by whatever
    wraps ``receive`` (the size-limit layer), so this never reads past them.
    """
    body = ctx.body
    if body is not None:
        return body
    message = await receive()
    if message["type"] != "http.request":
        raise ClientDisconnected
    body = message.get("body", b"")
    if message.get("more_body", False):
        parts = [body]
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise ClientDisconnected
            parts.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(parts)
    ctx.body = body
    return body


def replay_receive(ctx: RequestContext, receive: Receive) -> Receive:
    """A ``receive`` that hands the already-read body to the next app, then defers to the server.

    Only needed when the next app is not the gateway's own (which reads ``ctx.body`` directly).
    """
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": ctx.body or b"", "more_body": False}
        return await receive()

    return replay
