"""ASGI plumbing for the fake provider: recorded requests, routing, disconnect-aware sending."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Api = Literal["openai", "azure", "anthropic", "gemini"]


@dataclass(frozen=True)
class ReceivedRequest:
    """One request as the fake received it."""

    method: str
    path: str
    """The path as received, including the prefix the fake is mounted under, if any."""
    query_string: str
    headers: list[tuple[str, str]]
    """Header names lowercased, in arrival order; values decoded as latin-1."""
    body: bytes

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (any case), or None."""
        wanted = name.lower()
        return next((value for key, value in self.headers if key == wanted), None)

    def json(self) -> Any:
        """The body parsed as JSON."""
        return orjson.loads(self.body)


@dataclass(frozen=True)
class Route:
    api: Api
    endpoint: str | None  # None: unknown path
    methods: tuple[str, ...] = ("POST",)
    arg: str = ""  # the Azure deployment or the model id
    query: str = ""  # the query string (Gemini's ``alt=sse``)


_OPENAI_ENDPOINTS = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/responses": "responses",
    "/v1/embeddings": "embeddings",
    "/v1/audio/transcriptions": "transcriptions",
    "/v1/audio/translations": "translations",
    "/v1/images/generations": "images.generations",
    "/v1/images/edits": "images.edits",
    "/v1/images/variations": "images.variations",
}
_AZURE_ENDPOINTS = {
    "chat/completions": "chat",
    "completions": "completions",
    "embeddings": "embeddings",
}
_AZURE_PREFIX = "/openai/deployments/"


#: Gemini's OpenAI-compatible endpoint: OpenAI's wire (``Authorization: Bearer``) under this
#: prefix, Gemini's model ids.
GEMINI_OPENAI_PREFIX = "/v1beta/openai/"
_GEMINI_OPENAI_ENDPOINTS = {"chat/completions": "chat", "embeddings": "embeddings"}
_GEMINI_PREFIXES = ("/v1beta/models", "/v1/models")
_GEMINI_METHODS = frozenset(
    {"generateContent", "streamGenerateContent", "countTokens", "embedContent"}
    | {"batchEmbedContents"}
)


def _gemini_route(request: ReceivedRequest, path: str) -> Route | None:
    """Gemini's ``models/{model}:{method}`` and model list paths, else ``None``."""
    if path == "/v1beta/models":
        return Route("gemini", "models", ("GET",))
    version, _, rest = path[1:].partition("/models/")
    if version not in ("v1beta", "v1") or not rest or "/" in rest:
        return None
    model, colon, method = rest.partition(":")
    if not model:
        return None
    if not colon:
        if version == "v1" and request.header("x-goog-api-key") is None:
            return None  # OpenAI's /v1/models/{id}
        return Route("gemini", "model", ("GET",), model)
    if method in _GEMINI_METHODS:
        return Route("gemini", method, ("POST",), model, request.query_string)
    return Route("gemini", None)


def route_of(request: ReceivedRequest, path: str) -> Route:
    """The endpoint ``path`` (the request's path without any mount prefix) names."""
    if path.startswith(GEMINI_OPENAI_PREFIX):
        rest = path[len(GEMINI_OPENAI_PREFIX) :]
        if rest in _GEMINI_OPENAI_ENDPOINTS:
            return Route("openai", _GEMINI_OPENAI_ENDPOINTS[rest])
        if rest == "models":
            return Route("openai", "gemini.models", ("GET",))
        if rest.startswith("models/") and len(rest) > 7:
            return Route("openai", "gemini.model", ("GET",), rest[7:])
        return Route("openai", None)
    if path.startswith(_GEMINI_PREFIXES):
        gemini = _gemini_route(request, path)
        if gemini is not None:
            return gemini
        if path == "/v1/models" and request.header("x-goog-api-key") is not None:
            return Route("gemini", "models", ("GET",))
    if path in _OPENAI_ENDPOINTS:
        return Route("openai", _OPENAI_ENDPOINTS[path])
    if path == "/v1/messages":
        return Route("anthropic", "messages")
    if path == "/v1/messages/count_tokens":
        return Route("anthropic", "count_tokens")
    if path == "/v1/responses/compact":
        return Route("openai", "compact")
    if path == "/v1/messages/batches":
        return Route("anthropic", "batches.create")
    if path.startswith("/v1/messages/batches/") and "/" not in path[21:]:
        return Route("anthropic", "batch", ("GET",), path[21:])
    if path == "/v1/models" or path.startswith("/v1/models/"):
        api: Api = "anthropic" if request.header("anthropic-version") else "openai"
        model_id = path.removeprefix("/v1/models").removeprefix("/")
        if path == "/v1/models":
            return Route(api, "models", ("GET",))
        if model_id:
            return Route(api, "model", ("GET",), model_id)
    if path.startswith(_AZURE_PREFIX):
        deployment, _, rest = path.removeprefix(_AZURE_PREFIX).partition("/")
        if deployment and rest in _AZURE_ENDPOINTS:
            return Route("azure", _AZURE_ENDPOINTS[rest], arg=deployment)
    if path.startswith("/v1/messages"):
        return Route("anthropic", None)
    if path.startswith("/v1beta/") or request.header("x-goog-api-key") is not None:
        return Route("gemini", None)
    return Route("azure" if path.startswith("/openai/") else "openai", None)


class FakeConnectionReset(Exception):
    """Raised inside the app to drop a connection mid-stream (``reset_after_chunks``).

    Under a real server (uvicorn) the connection is closed without the end of the chunked body,
    so the client sees a protocol or read error. In-process (httpx's ``ASGITransport``) the
    exception reaches the caller. The fake silences uvicorn's traceback for it.
    """


class ClientGone(Exception):
    """The client disconnected before the response was finished."""


class Exchange:
    """Sends one response while watching, concurrently, for the client going away.

    uvicorn's ``send()`` silently does nothing once the client is gone, so the only prompt signal
    is ``receive()`` returning ``http.disconnect``; a task waits on it the whole time.
    """

    def __init__(self, receive: Receive, send: Send) -> None:
        self._send = send
        self._watcher = asyncio.ensure_future(self._watch(receive))
        self.finished = False

    @staticmethod
    async def _watch(receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    def _check(self) -> None:
        if self._watcher.done():
            raise ClientGone

    async def pause(self, seconds: float) -> None:
        """Sleep ``seconds``, cut short (by ClientGone) as soon as the client disconnects."""
        if seconds > 0 and not self._watcher.done():
            await asyncio.wait((self._watcher,), timeout=seconds)
        self._check()

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self._check()
        await self._send({"type": "http.response.start", "status": status, "headers": headers})

    async def body(self, data: bytes, *, more: bool = True) -> None:
        self._check()
        await self._send({"type": "http.response.body", "body": data, "more_body": more})
        self.finished = not more

    def close(self) -> None:
        if self._watcher.done():
            if not self._watcher.cancelled():
                self._watcher.exception()  # retrieved, so asyncio does not log it
        else:
            self._watcher.cancel()
