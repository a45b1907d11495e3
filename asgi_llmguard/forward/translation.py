"""Serving a route from an upstream of another wire format, through the translation layer.

A `Translation` belongs to one credential and one route API it serves by translation (an
``anthropic`` upstream serving OpenAI Chat Completions routes, an ``openai`` upstream serving
Anthropic Messages routes). It is built once, with the credential; the forwarder asks it for
each attempt's body and URL (`Translation.prepare`), then relays the answer through the
`Exchange` that returns: upstream errors in the client's dialect with the upstream's status,
whole answers translated back, and streams translated event by event as they arrive (memory per
stream: the codecs' unfinished event and counters).

The usage layer meters the client's bytes as it does for every route; for a translated answer it
takes the usage from the upstream's own format instead (`Served`, left on the request context),
so what is recorded is what the provider reported, in the provider's terms.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Collection
from types import ModuleType
from typing import Any

import msgspec
import orjson

from asgi_llmguard.context import RequestContext
from asgi_llmguard.errors import send_error
from asgi_llmguard.forward.engines import UpstreamError, UpstreamResponse
from asgi_llmguard.forward.headers import request_drop_set
from asgi_llmguard.forward.relay import Watch
from asgi_llmguard.forward.target import Target
from asgi_llmguard.forward.thinking import ParsedModel, apply_thinking
from asgi_llmguard.providers.base import Provider, Upstream
from asgi_llmguard.providers.metering import Served, stream_meter
from asgi_llmguard.providers.sse import EventSplitter
from asgi_llmguard.providers.translate import anthropic_messages, openai_chat
from asgi_llmguard.providers.translate.model import (
    Answer,
    Delta,
    MalformedInput,
    MessageStart,
    StreamError,
    Untranslatable,
)
from asgi_llmguard.routes import Api, Dialect, classify
from asgi_llmguard.types import Send

logger = logging.getLogger("asgi_llmguard.forward")

#: (route API, upstream provider) -> (the operation served, the upstream's path for it).
#: The operations the layer translates: Chat Completions and Anthropic Messages, both ways.
PAIRS: dict[tuple[Api, str], tuple[str, str]] = {
    ("openai", "anthropic"): ("chat.completions", "/v1/messages"),
    ("anthropic", "openai"): ("messages", "/v1/chat/completions"),
}
_CODECS: dict[Api, ModuleType] = {"openai": openai_chat, "anthropic": anthropic_messages}
#: An error answer read whole to find its message (providers' error bodies are small).
_ERROR_BODY = 64 << 10


def identity_target(target: Target) -> Target:
    """``target`` asking for uncompressed answers: the forwarder relays bytes as the upstream
    encoded them, but a translation has to read them."""
    plain = copy.copy(target)
    plain.static = [*target.static, ("accept-encoding", "identity")]
    plain.drop = request_drop_set(plain.static)
    return plain


class Translation:
    """How one credential serves one route API by translation; built once per credential."""

    __slots__ = (
        "client",
        "client_api",
        "drop",
        "operation",
        "served",
        "served_api",
        "served_endpoint",
        "url",
    )

    def __init__(
        self, client_api: Api, upstream: Upstream, provider: Provider, drop: Collection[str]
    ) -> None:
        self.client_api = client_api
        operation, path = PAIRS[(client_api, upstream.provider)]
        self.operation = operation
        endpoint = classify("POST", path).endpoint
        self.served_endpoint = endpoint
        self.served_api: Api = endpoint.api
        self.client = _CODECS[client_api]
        self.served = _CODECS[endpoint.api]
        self.url = provider.target(upstream, RequestContext("POST", path), b"")
        self.drop = frozenset(drop)

    def prepare(
        self, ctx: RequestContext, parsed: ParsedModel | None, body: bytes
    ) -> tuple[bytes, Exchange]:
        """The upstream body for one attempt and the `Exchange` that relays its answer.

        Raises `Untranslatable` (a field the upstream's format cannot carry, not allowed to be
        dropped) or `MalformedInput`; both are ``ValueError``s."""
        route = ctx.route
        if route is None or route.endpoint.operation != self.operation:
            raise Untranslatable(
                "model",
                f"this model is served by a {self.served_api} upstream, which only "
                f"{self.operation} requests reach",
            )
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise MalformedInput("the request body is not JSON") from None
        if not isinstance(document, dict):
            raise MalformedInput("the request body must be a JSON object")
        options = document.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        turn = self.client.read_request(document)
        drop = self.drop
        key = ctx.key
        if key is not None and key.translate_drop:
            drop = drop | key.translate_drop
        written, dropped = self.served.write_request(turn, drop=drop)
        model = parsed.base if parsed is not None else turn.model
        written["model"] = model
        if parsed is not None and parsed.thinking is not None:
            written = apply_thinking(
                self.served_api, written, parsed, operation=self.served_endpoint.operation
            )
        # Upstream, the served model always names the attempt (its price, its record).
        ctx.upstream_model = model
        served = Served(self.served_api, self.served_endpoint, dropped)
        structured = turn.structured_output.name if turn.structured_output is not None else None
        exchange = Exchange(self, served, turn.stream, include_usage, structured)
        return orjson.dumps(written), exchange


class Exchange:
    """One translated attempt's answer, relayed to the client (per request, never shared)."""

    __slots__ = ("include_usage", "served", "stream", "structured", "translation")

    def __init__(
        self,
        translation: Translation,
        served: Served,
        stream: bool,
        include_usage: bool,
        structured: str | None,
    ) -> None:
        self.translation = translation
        self.served = served
        self.stream = stream
        self.include_usage = include_usage
        self.structured = structured

    async def relay(
        self,
        ctx: RequestContext,
        resp: UpstreamResponse,
        send: Send,
        watch: Watch,
        dialect: Dialect,
        alias: str | None,
        held: bytes,
    ) -> None:
        """Send the upstream's answer to the client in the client's format."""
        ctx.translated = self.served  # type: ignore[attr-defined]
        status = resp.status
        if status >= 300:
            await self._error(ctx, resp, send, watch, dialect, held)
        elif self.stream:
            await self._stream(ctx, resp, send, watch, dialect, alias, held)
        else:
            await self._answer(ctx, resp, send, watch, dialect, alias, held)

    async def _error(
        self,
        ctx: RequestContext,
        resp: UpstreamResponse,
        send: Send,
        watch: Watch,
        dialect: Dialect,
        held: bytes,
    ) -> None:
        status = resp.status
        try:
            body = held + await resp.read_all()
        except UpstreamError as exc:
            ctx.upstream_error = exc.kind
            body = held
        headers = [(n, v) for n, v in resp.headers if n == b"retry-after"]
        watch.started = True
        watch.finished = True
        await send_error(
            send,
            status,
            _error_message(body[:_ERROR_BODY], status),
            dialect=dialect,
            code="upstream_error",
            headers=headers,
        )

    async def _answer(
        self,
        ctx: RequestContext,
        resp: UpstreamResponse,
        send: Send,
        watch: Watch,
        dialect: Dialect,
        alias: str | None,
        held: bytes,
    ) -> None:
        translation = self.translation
        try:
            data = held + await resp.read_all()
        except UpstreamError as exc:
            ctx.upstream_error = exc.kind
            await send_error(
                send,
                502 if exc.kind != "timeout" else 504,
                str(exc),
                dialect=dialect,
                code="upstream_error",
            )
            return
        self.served.json = data
        try:
            if translation.served is anthropic_messages:
                answer: Answer = anthropic_messages.read_answer(
                    data, structured_tool=self.structured
                )
            else:
                answer = openai_chat.read_answer(data)
            if alias is not None:
                answer = msgspec.structs.replace(answer, model=alias)
            out = translation.client.write_answer(answer)
        except ValueError as exc:
            ctx.upstream_error = "broken"
            logger.warning("untranslatable answer to %s: %s", ctx.request_id, exc)
            await send_error(
                send,
                502,
                f"The upstream's answer could not be translated: {exc}",
                dialect=dialect,
                code="upstream_error",
            )
            return
        watch.started = True
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(out)).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        watch.finished = True
        await send({"type": "http.response.body", "body": out, "more_body": False})

    async def _stream(
        self,
        ctx: RequestContext,
        resp: UpstreamResponse,
        send: Send,
        watch: Watch,
        dialect: Dialect,
        alias: str | None,
        held: bytes,
    ) -> None:
        translation = self.translation
        decoder: Any
        if translation.served is anthropic_messages:
            decoder = anthropic_messages.StreamDecoder(structured_tool=self.structured)
        else:
            decoder = openai_chat.StreamDecoder()
        encoder: Any
        if translation.client is openai_chat:
            encoder = openai_chat.StreamEncoder(include_usage=self.include_usage)
        else:
            encoder = anthropic_messages.StreamEncoder()
        meter = stream_meter(translation.served_endpoint)
        self.served.meter = meter
        splitter = EventSplitter() if meter is not None else None
        watch.started = True
        watch.sse = True
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        try:
            chunk = held or await resp.read_chunk()
            while chunk:
                if splitter is not None:
                    assert meter is not None
                    for event in splitter.feed(chunk):
                        meter.event(event)
                out = encoder.encode_many(_named(decoder.feed(chunk), alias))
                if out:
                    await send({"type": "http.response.body", "body": out, "more_body": True})
                chunk = await resp.read_chunk()
            if splitter is not None:
                assert meter is not None
                for event in splitter.close():
                    meter.event(event)
            rest = encoder.encode_many(_named(decoder.close(), alias))
        except UpstreamError as exc:
            ctx.upstream_error = exc.kind
            logger.warning(
                "upstream %s broke mid-response to %s: %s", ctx.credential_id, ctx.request_id, exc
            )
            try:
                rest = encoder.encode_many(decoder.close())
            except ValueError:
                rest = b""
            if not rest:
                rest = encoder.encode(StreamError("api_error", str(exc)))
        except ValueError as exc:  # Untranslatable / MalformedInput mid-stream
            ctx.upstream_error = "broken"
            logger.warning("untranslatable stream to %s: %s", ctx.request_id, exc)
            rest = encoder.encode(
                StreamError("api_error", f"The upstream's stream could not be translated: {exc}")
            )
        if rest:
            await send({"type": "http.response.body", "body": rest, "more_body": True})
        watch.finished = True
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _named(deltas: list[Delta], alias: str | None) -> list[Delta]:
    """Deltas with the alias as the model of the stream's start, when there is one."""
    if alias is not None:
        for i, delta in enumerate(deltas):
            if isinstance(delta, MessageStart):
                deltas[i] = MessageStart(delta.id, alias)
    return deltas


def _error_message(body: bytes, status: int) -> str:
    """The message of an upstream's error answer (OpenAI's and Anthropic's shapes)."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        document = None
    if isinstance(document, dict):
        error = document.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])[:2000]
        if isinstance(document.get("message"), str):
            return str(document["message"])[:2000]
    return f"The upstream answered with status {status}."
