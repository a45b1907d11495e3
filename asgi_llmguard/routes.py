"""The endpoint table and `classify(method, path)`.

Pure functions over strings: no ASGI, no I/O. The table is compiled once at import into a dict of
exact paths plus, for paths with ids in them, a short list of patterns per resource (the segment
after ``/v1/``), so classifying the common routes (chat completions, responses, messages) is one
dict lookup and a path with an id is tried only against its own resource's few patterns.
"""

from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass, field
from typing import Literal

import orjson

#: The API a route speaks. It decides the error dialect and which upstream may serve it.
Api = Literal["openai", "azure", "anthropic", "gemini", "vertex", "vertex_anthropic", "bedrock"]
#: Every API, as the config file and key policies spell them.
APIS: tuple[Api, ...] = (
    "openai",
    "azure",
    "anthropic",
    "gemini",
    "vertex",
    "vertex_anthropic",
    "bedrock",
)


@dataclass(frozen=True, slots=True, eq=False)
class Dialect:
    """How one family of SDKs expects the gateway's own refusals: the JSON error body, the
    terminal event of a broken stream, and the error types of the statuses it cares about.

    Dialects are module constants compared by identity (`OPENAI`, `ANTHROPIC`, `GOOGLE`); the
    route carries its own (`Endpoint.dialect`), so no layer tests which provider it is. Bodies a
    layer sends often are prebuilt once per dialect (see `DIALECTS`).
    """

    name: str
    #: HTTP status -> the dialect's error type (OpenAI, Anthropic) or status name (Google).
    types: dict[int, str]
    #: The type of a status not in ``types``.
    fallback: str
    #: The dialect's type for "the gateway itself failed" (a store it needs is down).
    server_error: str
    #: OpenAI's shape carries a specific ``type`` beyond its status's default (``lim.kind``,
    #: ``insufficient_quota``); the other dialects keep their status's own type.
    specific_types: bool = False
    #: The response header that carries the error type (Bedrock's ``x-amzn-errortype``), if any.
    type_header: bytes | None = None

    def error_headers(self, status: int) -> list[tuple[bytes, bytes]]:
        """The headers an error response of ``status`` carries in this dialect."""
        if self.type_header is None:
            return []
        return [(self.type_header, self.types.get(status, self.fallback).encode())]

    def error_body(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
    ) -> bytes:
        """The JSON error body for ``status`` in this dialect's shape."""
        name = self.name
        if name == "anthropic":
            kind = type or self.types.get(status, self.fallback)
            return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})
        if name == "bedrock":
            # botocore reads the code from ``x-amzn-errortype`` (`send_error` sends it) or,
            # when a prebuilt refusal has no such header, from ``__type``.
            kind = self.types.get(status, self.fallback)
            return orjson.dumps({"message": message, "__type": kind})
        if name == "google":
            status_name = self.types.get(status, self.fallback)
            return orjson.dumps(
                {"error": {"code": status, "message": message, "status": status_name}}
            )
        kind = type or self.types.get(status, self.fallback)
        return orjson.dumps(
            {"error": {"message": message, "type": kind, "param": param, "code": code}}
        )

    def stream_error(self, message: str, *, type: str = "api_error") -> bytes:
        """The terminal SSE event sent when a stream cannot go on.

        It starts with a blank line so that any event the upstream left half-written is ended
        before ours; SDKs then raise on our event instead of seeing a silent end. OpenAI's SDK
        raises on a ``data:`` payload with an ``error`` member; Anthropic's on ``event: error``;
        Google's on a ``data:`` payload with an ``error`` member carrying a status.
        """
        if self.name == "anthropic":
            payload = orjson.dumps({"type": "error", "error": {"type": type, "message": message}})
            return b"\n\nevent: error\ndata: " + payload + b"\n\n"
        if self.name == "bedrock":
            # An AWS event stream: an exception frame, which botocore raises as EventStreamError.
            kind = "serviceUnavailableException" if type == "overloaded_error" else None
            return aws_exception_frame(message, kind or "internalServerException")
        if self.name == "google":
            return b"\n\ndata: " + self.error_element(message, type=type) + b"\n\n"
        payload = orjson.dumps(
            {"error": {"message": message, "type": type, "param": None, "code": None}}
        )
        return b"\n\ndata: " + payload + b"\n\n"

    def error_element(self, message: str, *, type: str = "api_error") -> bytes:
        """Google's ``{"error": {"code", "message", "status"}}`` for a stream that cannot go on:
        the payload of the terminal SSE event, or the last element of a streamed JSON array
        (``streamGenerateContent`` without ``alt=sse``), as Google ends a stream it breaks."""
        code = 503 if type == "overloaded_error" else 500
        error = {"code": code, "message": message, "status": self.types.get(code, self.fallback)}
        return orjson.dumps({"error": error})

    def specific(self, type: str) -> str | None:
        """``type`` where the dialect carries specific types (OpenAI's), else ``None``: the
        status's own type."""
        return type if self.specific_types else None

    def __repr__(self) -> str:
        return f"<Dialect {self.name}>"


def aws_exception_frame(message: str, exception_type: str) -> bytes:
    """An AWS event-stream exception frame (prelude, CRCs, string headers, JSON payload): the
    AWS SDKs raise it as ``exception_type`` with ``message``."""
    headers = b""
    for name, value in (
        (":exception-type", exception_type),
        (":content-type", "application/json"),
        (":message-type", "exception"),
    ):
        raw_name, raw_value = name.encode(), value.encode()
        headers += bytes((len(raw_name),)) + raw_name + b"\x07"
        headers += struct.pack(">H", len(raw_value)) + raw_value
    payload = orjson.dumps({"message": message})
    prelude = struct.pack(">II", 12 + len(headers) + len(payload) + 4, len(headers))
    head = prelude + struct.pack(">I", zlib.crc32(prelude)) + headers + payload
    return head + struct.pack(">I", zlib.crc32(head))


#: OpenAI's ``{"error": {"message", "type", "param", "code"}}``: OpenAI, Azure and every
#: OpenAI-compatible server. A small set of types; the code carries the detail.
OPENAI = Dialect(
    "openai",
    {
        400: "invalid_request_error",
        401: "invalid_request_error",
        403: "permission_error",
        404: "invalid_request_error",
        405: "invalid_request_error",
        408: "timeout_error",
        413: "invalid_request_error",
        429: "rate_limit_error",
    },
    fallback="server_error",
    server_error="server_error",
    specific_types=True,
)
#: Anthropic's ``{"type": "error", "error": {"type", "message"}}``
#: (https://docs.anthropic.com/en/api/errors).
ANTHROPIC = Dialect(
    "anthropic",
    {
        400: "invalid_request_error",
        401: "authentication_error",
        402: "billing_error",
        403: "permission_error",
        404: "not_found_error",
        405: "invalid_request_error",
        408: "timeout_error",
        413: "request_too_large",
        429: "rate_limit_error",
        500: "api_error",
        502: "api_error",
        503: "overloaded_error",
        504: "timeout_error",
        529: "overloaded_error",
    },
    fallback="api_error",
    server_error="api_error",
)
#: Google's ``{"error": {"code", "message", "status"}}`` (the Gemini API, Vertex AI), the
#: status being the canonical code name of https://cloud.google.com/apis/design/errors.
GOOGLE = Dialect(
    "google",
    {
        400: "INVALID_ARGUMENT",
        401: "UNAUTHENTICATED",
        402: "FAILED_PRECONDITION",
        403: "PERMISSION_DENIED",
        404: "NOT_FOUND",
        405: "UNIMPLEMENTED",
        408: "DEADLINE_EXCEEDED",
        409: "ABORTED",
        413: "INVALID_ARGUMENT",
        429: "RESOURCE_EXHAUSTED",
        499: "CANCELLED",
        500: "INTERNAL",
        501: "UNIMPLEMENTED",
        502: "UNAVAILABLE",
        503: "UNAVAILABLE",
        504: "DEADLINE_EXCEEDED",
    },
    fallback="UNKNOWN",
    server_error="INTERNAL",
)
#: Amazon Bedrock Runtime's ``{"message"}`` with the exception name in ``x-amzn-errortype``.
BEDROCK = Dialect(
    "bedrock",
    {
        400: "ValidationException",
        401: "AccessDeniedException",
        403: "AccessDeniedException",
        404: "ResourceNotFoundException",
        405: "ValidationException",
        408: "ModelTimeoutException",
        413: "ValidationException",
        424: "ModelErrorException",
        429: "ThrottlingException",
        500: "InternalServerException",
        503: "ServiceUnavailableException",
    },
    fallback="InternalServerException",
    server_error="InternalServerException",
    type_header=b"x-amzn-errortype",
)
#: Every dialect, for layers that prebuild one refusal body per dialect.
DIALECTS: tuple[Dialect, ...] = (OPENAI, ANTHROPIC, GOOGLE, BEDROCK)
#: The dialect of each API.
_DIALECT_OF: dict[str, Dialect] = {
    "openai": OPENAI,
    "azure": OPENAI,
    "anthropic": ANTHROPIC,
    "gemini": GOOGLE,
    "bedrock": BEDROCK,
    "vertex": GOOGLE,
    "vertex_anthropic": ANTHROPIC,
}


def dialect_of_path(path: str) -> Dialect:
    """The dialect of an answer to ``path`` when no route matched it (404, a bad Host): the one
    its callers' SDKs most likely expect."""
    if path.startswith("/v1/messages"):
        return ANTHROPIC
    if path.startswith("/v1beta/") or (path.startswith("/v1/models/") and ":" in path):
        return GOOGLE
    if path.startswith("/model/"):
        return BEDROCK
    if path.startswith(VERTEX_PREFIXES):
        return ANTHROPIC if "/publishers/anthropic/" in path else GOOGLE
    return OPENAI


@dataclass(frozen=True, slots=True)
class Endpoint:
    """What a request is, independent of who serves it."""

    api: Api
    #: The operation, e.g. ``chat.completions``, ``responses``, ``messages``.
    operation: str
    #: Costs money at the provider: metered and charged.
    billable: bool = False
    #: Can answer with a server-sent event stream (``stream: true``).
    streamable: bool = False
    #: Reads state only (model lists, count_tokens, retrieving a file): recorded, never billed.
    read_only: bool = False
    #: The request body is JSON that the gateway may decode (model, stream, max tokens, ...).
    json_body: bool = False
    #: The request body is ``multipart/form-data`` (uploads): the gateway reads its text fields
    #: (``model``, ``n``, ``stream``) and leaves the files as they are.
    multipart: bool = False
    #: Starts work the provider charges for but the gateway does not meter (a fine-tuning job, an
    #: eval run, a Realtime session): it names a model the gateway does not read, so a
    #: key restricted to some models may not call it.
    spends: bool = False
    #: Always answers with a stream (Gemini's ``streamGenerateContent``: the path asks for it, no
    #: body field does); its fields say ``stream`` without reading the body.
    streams: bool = False
    #: The shape of the gateway's errors on this endpoint (read on every request: a plain field).
    dialect: Dialect = field(init=False, repr=False, compare=False)
    #: The request's context needs more from the scope than the path: an upload's
    #: ``Content-Type``, or a key in a Gemini URL (read on every request: a plain field).
    reads_scope: bool = field(init=False, repr=False, compare=False)
    #: The unit (``"minute"``, ``"image"``) its answers are billed in, if any (a plain field too);
    #: on the Gemini API's ``countTokens`` (never billed), ``"counted_token"``: the tokens counted.
    unit: str | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "dialect", _DIALECT_OF[self.api])  # frozen
        object.__setattr__(self, "reads_scope", self.multipart or self.api == "gemini")
        unit = _UNITS.get(self.operation) if self.api != "anthropic" else None
        if self.api == "gemini" and self.operation == "countTokens":
            unit = COUNTED_TOKEN
        object.__setattr__(self, "unit", unit)


#: The unit of a token-counting answer: the tokens it counted, recorded at no cost.
COUNTED_TOKEN = "counted_token"  # noqa: S105 (a unit name)
#: The unit each operation billed by the piece is metered in.
_UNITS = {
    "audio.transcriptions": "minute",
    "audio.translations": "minute",
    "images.generations": "image",
    "images.edits": "image",
    "images.variations": "image",
}


@dataclass(frozen=True, slots=True)
class Route:
    """A classified request: its endpoint and, for Azure deployment paths, the deployment."""

    endpoint: Endpoint
    #: The Azure deployment named in the path (``/openai/deployments/{deployment}/...``).
    deployment: str | None = None
    #: The model the path names: the Azure deployment, or Gemini's ``models/{model}:...``.
    model: str | None = None


class RouteNotFound(Exception):
    """No endpoint has this path."""


class MethodNotAllowed(Exception):
    """The path exists but not with this method."""

    def __init__(self, allowed: tuple[str, ...]) -> None:
        super().__init__(", ".join(allowed))
        self.allowed = allowed


def _e(api: Api, operation: str, **flags: bool) -> Endpoint:
    return Endpoint(api, operation, **flags)


_LLM = {"billable": True, "streamable": True, "json_body": True}
_BILL = {"billable": True, "json_body": True}
_UPLOAD = {"billable": True, "multipart": True}
_READ = {"read_only": True}
_SPEND = {"spends": True}

# path -> {method: endpoint}. OpenAI-style paths live under /v1 as the SDKs send them when their
# base URL is "<gateway>/v1"; Anthropic's SDK uses "<gateway>" as base URL and adds /v1/messages.
_EXACT: dict[str, dict[str, Endpoint]] = {
    "/v1/chat/completions": {
        "POST": _e("openai", "chat.completions", **_LLM),
        "GET": _e("openai", "chat.completions.list", **_READ),
    },
    "/v1/responses": {"POST": _e("openai", "responses", **_LLM)},
    "/v1/responses/compact": {"POST": _e("openai", "responses.compact", **_BILL)},
    "/v1/responses/input_tokens": {
        "POST": _e("openai", "responses.input_tokens", read_only=True, json_body=True)
    },
    "/v1/conversations": {"POST": _e("openai", "conversations.create", json_body=True)},
    "/v1/completions": {"POST": _e("openai", "completions", **_LLM)},
    "/v1/embeddings": {"POST": _e("openai", "embeddings", **_BILL)},
    "/v1/moderations": {"POST": _e("openai", "moderations", json_body=True)},
    "/v1/images/generations": {"POST": _e("openai", "images.generations", **_BILL)},
    "/v1/images/edits": {"POST": _e("openai", "images.edits", **_UPLOAD)},
    "/v1/images/variations": {"POST": _e("openai", "images.variations", **_UPLOAD)},
    "/v1/audio/speech": {"POST": _e("openai", "audio.speech", **_BILL)},
    "/v1/audio/transcriptions": {
        "POST": _e("openai", "audio.transcriptions", streamable=True, **_UPLOAD)
    },
    "/v1/audio/translations": {"POST": _e("openai", "audio.translations", **_UPLOAD)},
    "/v1/audio/voices": {"POST": _e("openai", "audio.voices.create")},
    "/v1/audio/voice_consents": {
        "GET": _e("openai", "audio.voice_consents.list", **_READ),
        "POST": _e("openai", "audio.voice_consents.create"),
    },
    "/v1/models": {"GET": _e("openai", "models.list", **_READ)},
    "/v1/files": {
        "GET": _e("openai", "files.list", **_READ),
        "POST": _e("openai", "files.create"),
    },
    "/v1/batches": {
        "GET": _e("openai", "batches.list", **_READ),
        "POST": _e("openai", "batches.create", json_body=True),
    },
    "/v1/uploads": {"POST": _e("openai", "uploads.create")},
    "/v1/vector_stores": {
        "GET": _e("openai", "vector_stores.list", **_READ),
        "POST": _e("openai", "vector_stores.create"),
    },
    "/v1/fine_tuning/jobs": {
        "GET": _e("openai", "fine_tuning.jobs.list", **_READ),
        "POST": _e("openai", "fine_tuning.jobs.create", **_SPEND),
    },
    "/v1/fine_tuning/alpha/graders/run": {
        "POST": _e("openai", "fine_tuning.alpha.graders.run", **_SPEND)
    },
    "/v1/fine_tuning/alpha/graders/validate": {
        "POST": _e("openai", "fine_tuning.alpha.graders.validate")
    },
    "/v1/evals": {
        "GET": _e("openai", "evals.list", **_READ),
        "POST": _e("openai", "evals.create"),
    },
    "/v1/containers": {
        "GET": _e("openai", "containers.list", **_READ),
        "POST": _e("openai", "containers.create"),
    },
    "/v1/realtime/client_secrets": {
        "POST": _e("openai", "realtime.client_secrets.create", **_SPEND)
    },
    "/v1/realtime/sessions": {"POST": _e("openai", "realtime.sessions.create", **_SPEND)},
    "/v1/realtime/transcription_sessions": {
        "POST": _e("openai", "realtime.transcription_sessions.create", **_SPEND)
    },
    "/v1/realtime/calls": {"POST": _e("openai", "realtime.calls.create", **_SPEND)},
    "/v1/skills": {
        "GET": _e("openai", "skills.list", **_READ),
        "POST": _e("openai", "skills.create"),
    },
    "/v1/messages": {"POST": _e("anthropic", "messages", **_LLM)},
    "/v1/messages/count_tokens": {
        "POST": _e("anthropic", "messages.count_tokens", read_only=True, json_body=True)
    },
    "/v1/messages/batches": {
        "GET": _e("anthropic", "messages.batches.list", **_READ),
        "POST": _e("anthropic", "messages.batches.create", json_body=True),
    },
}

_ID = r"[A-Za-z0-9_.:\-]{1,256}"
_PATTERNS: list[tuple[re.Pattern[str], dict[str, Endpoint]]] = [
    (
        re.compile(rf"/v1/models/(?P<id>{_ID}(?:/{_ID})?)"),
        {
            "GET": _e("openai", "models.retrieve", **_READ),
            "DELETE": _e("openai", "models.delete"),
        },
    ),
    (
        re.compile(rf"/v1/responses/(?P<id>{_ID})"),
        {
            "GET": _e("openai", "responses.retrieve", **_READ),
            "DELETE": _e("openai", "responses.delete"),
        },
    ),
    (
        re.compile(rf"/v1/responses/(?P<id>{_ID})/cancel"),
        {"POST": _e("openai", "responses.cancel")},
    ),
    (
        re.compile(rf"/v1/responses/(?P<id>{_ID})/input_items"),
        {"GET": _e("openai", "responses.input_items", **_READ)},
    ),
    (
        re.compile(rf"/v1/conversations/(?P<id>{_ID})"),
        {
            "GET": _e("openai", "conversations.retrieve", **_READ),
            "POST": _e("openai", "conversations.update", json_body=True),
            "DELETE": _e("openai", "conversations.delete"),
        },
    ),
    (
        re.compile(rf"/v1/conversations/(?P<id>{_ID})/items"),
        {
            "GET": _e("openai", "conversations.items.list", **_READ),
            "POST": _e("openai", "conversations.items.create", json_body=True),
        },
    ),
    (
        re.compile(rf"/v1/conversations/(?P<id>{_ID})/items/(?P<item>{_ID})"),
        {
            "GET": _e("openai", "conversations.items.retrieve", **_READ),
            "DELETE": _e("openai", "conversations.items.delete"),
        },
    ),
    (
        re.compile(rf"/v1/messages/batches/(?P<id>{_ID})"),
        {
            "GET": _e("anthropic", "messages.batches.retrieve", **_READ),
            "DELETE": _e("anthropic", "messages.batches.delete"),
        },
    ),
    (
        re.compile(rf"/v1/messages/batches/(?P<id>{_ID})/results"),
        {"GET": _e("anthropic", "messages.batches.results", **_READ)},
    ),
    (
        re.compile(rf"/v1/messages/batches/(?P<id>{_ID})/cancel"),
        {"POST": _e("anthropic", "messages.batches.cancel")},
    ),
    (
        re.compile(rf"/v1/files/(?P<id>{_ID})"),
        {"GET": _e("openai", "files.retrieve", **_READ), "DELETE": _e("openai", "files.delete")},
    ),
    (
        re.compile(rf"/v1/files/(?P<id>{_ID})/content"),
        {"GET": _e("openai", "files.content", **_READ)},
    ),
    (
        re.compile(rf"/v1/batches/(?P<id>{_ID})"),
        {"GET": _e("openai", "batches.retrieve", **_READ)},
    ),
    (
        re.compile(rf"/v1/batches/(?P<id>{_ID})/cancel"),
        {"POST": _e("openai", "batches.cancel")},
    ),
    (
        re.compile(rf"/v1/chat/completions/(?P<id>{_ID})"),
        {
            "GET": _e("openai", "chat.completions.retrieve", **_READ),
            "POST": _e("openai", "chat.completions.update"),
            "DELETE": _e("openai", "chat.completions.delete"),
        },
    ),
    (
        re.compile(rf"/v1/chat/completions/(?P<id>{_ID})/messages"),
        {"GET": _e("openai", "chat.completions.messages.list", **_READ)},
    ),
    (
        re.compile(rf"/v1/audio/voices/(?P<id>{_ID})"),
        {"DELETE": _e("openai", "audio.voices.delete")},
    ),
    (
        re.compile(rf"/v1/audio/voice_consents/(?P<id>{_ID})"),
        {
            "GET": _e("openai", "audio.voice_consents.retrieve", **_READ),
            "POST": _e("openai", "audio.voice_consents.update"),
            "DELETE": _e("openai", "audio.voice_consents.delete"),
        },
    ),
    (
        re.compile(rf"/v1/uploads/(?P<id>{_ID})/parts"),
        {"POST": _e("openai", "uploads.parts.create")},
    ),
    (
        re.compile(rf"/v1/uploads/(?P<id>{_ID})/complete"),
        {"POST": _e("openai", "uploads.complete")},
    ),
    (
        re.compile(rf"/v1/uploads/(?P<id>{_ID})/cancel"),
        {"POST": _e("openai", "uploads.cancel")},
    ),
    (
        re.compile(rf"/v1/vector_stores/(?P<id>{_ID})"),
        {
            "GET": _e("openai", "vector_stores.retrieve", **_READ),
            "POST": _e("openai", "vector_stores.update"),
            "DELETE": _e("openai", "vector_stores.delete"),
        },
    ),
    (
        re.compile(rf"/v1/vector_stores/(?P<id>{_ID})/search"),
        {"POST": _e("openai", "vector_stores.search")},
    ),
    (
        re.compile(rf"/v1/vector_stores/(?P<id>{_ID})/files"),
        {
            "GET": _e("openai", "vector_stores.files.list", **_READ),
            "POST": _e("openai", "vector_stores.files.create"),
        },
    ),
    (
        re.compile(rf"/v1/vector_stores/(?P<id>{_ID})/files/(?P<file>{_ID})"),
        {
            "GET": _e("openai", "vector_stores.files.retrieve", **_READ),
            "POST": _e("openai", "vector_stores.files.update"),
            "DELETE": _e("openai", "vector_stores.files.delete"),
        },
    ),
    (
        re.compile(rf"/v1/vector_stores/(?P<id>{_ID})/files/(?P<file>{_ID})/content"),
        {"GET": _e("openai", "vector_stores.files.content", **_READ)},
    ),
    (
        re.compile(rf"/v1/vector_stores/(?P<id>{_ID})/file_batches"),
        {"POST": _e("openai", "vector_stores.file_batches.create")},
    ),
    (
        re.compile(rf"/v1/vector_stores/(?P<id>{_ID})/file_batches/(?P<batch>{_ID})"),
        {"GET": _e("openai", "vector_stores.file_batches.retrieve", **_READ)},
    ),
    (
        re.compile(rf"/v1/vector_stores/(?P<id>{_ID})/file_batches/(?P<batch>{_ID})/cancel"),
        {"POST": _e("openai", "vector_stores.file_batches.cancel")},
    ),
    (
        re.compile(rf"/v1/vector_stores/(?P<id>{_ID})/file_batches/(?P<batch>{_ID})/files"),
        {"GET": _e("openai", "vector_stores.file_batches.list_files", **_READ)},
    ),
    (
        re.compile(rf"/v1/fine_tuning/jobs/(?P<id>{_ID})"),
        {"GET": _e("openai", "fine_tuning.jobs.retrieve", **_READ)},
    ),
    (
        re.compile(rf"/v1/fine_tuning/jobs/(?P<id>{_ID})/cancel"),
        {"POST": _e("openai", "fine_tuning.jobs.cancel")},
    ),
    (
        re.compile(rf"/v1/fine_tuning/jobs/(?P<id>{_ID})/pause"),
        {"POST": _e("openai", "fine_tuning.jobs.pause")},
    ),
    (
        re.compile(rf"/v1/fine_tuning/jobs/(?P<id>{_ID})/resume"),
        {"POST": _e("openai", "fine_tuning.jobs.resume", **_SPEND)},
    ),
    (
        re.compile(rf"/v1/fine_tuning/jobs/(?P<id>{_ID})/events"),
        {"GET": _e("openai", "fine_tuning.jobs.list_events", **_READ)},
    ),
    (
        re.compile(rf"/v1/fine_tuning/jobs/(?P<id>{_ID})/checkpoints"),
        {"GET": _e("openai", "fine_tuning.jobs.checkpoints.list", **_READ)},
    ),
    (
        re.compile(rf"/v1/fine_tuning/checkpoints/(?P<id>{_ID})/permissions"),
        {
            "GET": _e("openai", "fine_tuning.checkpoints.permissions.list", **_READ),
            "POST": _e("openai", "fine_tuning.checkpoints.permissions.create"),
        },
    ),
    (
        re.compile(rf"/v1/fine_tuning/checkpoints/(?P<id>{_ID})/permissions/(?P<perm>{_ID})"),
        {"DELETE": _e("openai", "fine_tuning.checkpoints.permissions.delete")},
    ),
    (
        re.compile(rf"/v1/evals/(?P<id>{_ID})"),
        {
            "GET": _e("openai", "evals.retrieve", **_READ),
            "POST": _e("openai", "evals.update"),
            "DELETE": _e("openai", "evals.delete"),
        },
    ),
    (
        re.compile(rf"/v1/evals/(?P<id>{_ID})/runs"),
        {
            "GET": _e("openai", "evals.runs.list", **_READ),
            "POST": _e("openai", "evals.runs.create", **_SPEND),
        },
    ),
    (
        # POST on the run itself cancels it, as does POST .../cancel (both are documented)
        re.compile(rf"/v1/evals/(?P<id>{_ID})/runs/(?P<run>{_ID})"),
        {
            "GET": _e("openai", "evals.runs.retrieve", **_READ),
            "POST": _e("openai", "evals.runs.cancel"),
            "DELETE": _e("openai", "evals.runs.delete"),
        },
    ),
    (
        re.compile(rf"/v1/evals/(?P<id>{_ID})/runs/(?P<run>{_ID})/cancel"),
        {"POST": _e("openai", "evals.runs.cancel")},
    ),
    (
        re.compile(rf"/v1/evals/(?P<id>{_ID})/runs/(?P<run>{_ID})/output_items"),
        {"GET": _e("openai", "evals.runs.output_items.list", **_READ)},
    ),
    (
        re.compile(rf"/v1/evals/(?P<id>{_ID})/runs/(?P<run>{_ID})/output_items/(?P<item>{_ID})"),
        {"GET": _e("openai", "evals.runs.output_items.retrieve", **_READ)},
    ),
    (
        re.compile(rf"/v1/containers/(?P<id>{_ID})"),
        {
            "GET": _e("openai", "containers.retrieve", **_READ),
            "DELETE": _e("openai", "containers.delete"),
        },
    ),
    (
        re.compile(rf"/v1/containers/(?P<id>{_ID})/files"),
        {
            "GET": _e("openai", "containers.files.list", **_READ),
            "POST": _e("openai", "containers.files.create"),
        },
    ),
    (
        re.compile(rf"/v1/containers/(?P<id>{_ID})/files/(?P<file>{_ID})"),
        {
            "GET": _e("openai", "containers.files.retrieve", **_READ),
            "DELETE": _e("openai", "containers.files.delete"),
        },
    ),
    (
        re.compile(rf"/v1/containers/(?P<id>{_ID})/files/(?P<file>{_ID})/content"),
        {"GET": _e("openai", "containers.files.content", **_READ)},
    ),
    (
        re.compile(rf"/v1/realtime/calls/(?P<id>{_ID})/accept"),
        {"POST": _e("openai", "realtime.calls.accept", **_SPEND)},
    ),
    (
        re.compile(rf"/v1/realtime/calls/(?P<id>{_ID})/hangup"),
        {"POST": _e("openai", "realtime.calls.hangup")},
    ),
    (
        re.compile(rf"/v1/realtime/calls/(?P<id>{_ID})/refer"),
        {"POST": _e("openai", "realtime.calls.refer")},
    ),
    (
        re.compile(rf"/v1/realtime/calls/(?P<id>{_ID})/reject"),
        {"POST": _e("openai", "realtime.calls.reject")},
    ),
    (
        re.compile(rf"/v1/skills/(?P<id>{_ID})"),
        {
            "GET": _e("openai", "skills.retrieve", **_READ),
            "POST": _e("openai", "skills.update"),
            "DELETE": _e("openai", "skills.delete"),
        },
    ),
    (
        re.compile(rf"/v1/skills/(?P<id>{_ID})/content"),
        {"GET": _e("openai", "skills.content", **_READ)},
    ),
    (
        re.compile(rf"/v1/skills/(?P<id>{_ID})/versions"),
        {
            "GET": _e("openai", "skills.versions.list", **_READ),
            "POST": _e("openai", "skills.versions.create"),
        },
    ),
    (
        re.compile(rf"/v1/skills/(?P<id>{_ID})/versions/(?P<version>{_ID})"),
        {
            "GET": _e("openai", "skills.versions.retrieve", **_READ),
            "DELETE": _e("openai", "skills.versions.delete"),
        },
    ),
    (
        re.compile(rf"/v1/skills/(?P<id>{_ID})/versions/(?P<version>{_ID})/content"),
        {"GET": _e("openai", "skills.versions.content", **_READ)},
    ),
]

# Paths both providers serve (model lists, files, skills): the request's headers decide the dialect
# (``anthropic-version`` or ``x-api-key`` present: Anthropic). Only these paths look at headers.
_ANTHROPIC_EXACT: dict[str, dict[str, Endpoint]] = {
    "/v1/models": {"GET": _e("anthropic", "models.list", **_READ)},
    "/v1/files": {
        "GET": _e("anthropic", "files.list", **_READ),
        "POST": _e("anthropic", "files.create"),
    },
    "/v1/skills": {
        "GET": _e("anthropic", "skills.list", **_READ),
        "POST": _e("anthropic", "skills.create"),
    },
}
_ANTHROPIC_PATTERNS: list[tuple[re.Pattern[str], dict[str, Endpoint]]] = [
    (
        re.compile(rf"/v1/models/(?P<id>{_ID})"),
        {"GET": _e("anthropic", "models.retrieve", **_READ)},
    ),
    (
        re.compile(rf"/v1/files/(?P<id>{_ID})"),
        {
            "GET": _e("anthropic", "files.retrieve", **_READ),
            "DELETE": _e("anthropic", "files.delete"),
        },
    ),
    (
        re.compile(rf"/v1/files/(?P<id>{_ID})/content"),
        {"GET": _e("anthropic", "files.content", **_READ)},
    ),
    (
        re.compile(rf"/v1/skills/(?P<id>{_ID})"),
        {
            "GET": _e("anthropic", "skills.retrieve", **_READ),
            "DELETE": _e("anthropic", "skills.delete"),
        },
    ),
    (
        re.compile(rf"/v1/skills/(?P<id>{_ID})/versions"),
        {
            "GET": _e("anthropic", "skills.versions.list", **_READ),
            "POST": _e("anthropic", "skills.versions.create"),
        },
    ),
    (
        re.compile(rf"/v1/skills/(?P<id>{_ID})/versions/(?P<version>{_ID})"),
        {
            "GET": _e("anthropic", "skills.versions.retrieve", **_READ),
            "DELETE": _e("anthropic", "skills.versions.delete"),
        },
    ),
    (
        re.compile(rf"/v1/skills/(?P<id>{_ID})/versions/(?P<version>{_ID})/content"),
        {"GET": _e("anthropic", "skills.versions.download", **_READ)},
    ),
]
#: Path prefixes whose dialect depends on the request's headers (see `is_shared_path`).
SHARED_PREFIXES = ("/v1/models", "/v1/files", "/v1/skills")


def is_shared_path(path: str) -> bool:
    """Whether both dialects serve ``path``, so the caller's headers decide which one it is."""
    return path.startswith(SHARED_PREFIXES)


_Patterns = dict[str, list[tuple[re.Pattern[str], dict[str, Endpoint]]]]


def _by_resource(patterns: list[tuple[re.Pattern[str], dict[str, Endpoint]]]) -> _Patterns:
    """The patterns grouped by their first segment after ``/v1/`` (``vector_stores``, ...), so a
    path with an id in it is tried only against the few patterns of its own resource."""
    grouped: _Patterns = {}
    for pattern, methods in patterns:
        resource = pattern.pattern.split("/", 3)[2]
        grouped.setdefault(resource, []).append((pattern, methods))
    return grouped


# The tables for a request with Anthropic's headers: Anthropic's endpoints on shared paths first.
_EXACT_A = {**_EXACT, **_ANTHROPIC_EXACT}
_BY_RESOURCE = _by_resource(_PATTERNS)
_BY_RESOURCE_A = _by_resource([*_ANTHROPIC_PATTERNS, *_PATTERNS])

# Azure OpenAI data-plane paths: /openai/deployments/{deployment}/{operation}?api-version=...
_AZURE_OPERATIONS: dict[str, Endpoint] = {
    "chat/completions": _e("azure", "chat.completions", **_LLM),
    "completions": _e("azure", "completions", **_LLM),
    "embeddings": _e("azure", "embeddings", **_BILL),
    "images/generations": _e("azure", "images.generations", **_BILL),
    "audio/speech": _e("azure", "audio.speech", **_BILL),
    "audio/transcriptions": _e("azure", "audio.transcriptions", streamable=True, **_UPLOAD),
    "audio/translations": _e("azure", "audio.translations", **_UPLOAD),
}
_AZURE = re.compile(rf"/openai/deployments/(?P<deployment>{_ID})/(?P<op>[a-z/]+)")

# The Gemini API (Google AI Studio): /v1beta/models/{model}:{method}, and the same under /v1.
_GEMINI_METHODS: dict[str, Endpoint] = {
    "generateContent": _e("gemini", "generateContent", **_BILL),
    # Its body is not read: the path, not a body field, asks for the stream (see `streams`).
    "streamGenerateContent": _e(
        "gemini", "streamGenerateContent", billable=True, streamable=True, streams=True
    ),
    "countTokens": _e("gemini", "countTokens", read_only=True, json_body=True),
    "embedContent": _e("gemini", "embedContent", **_BILL),
    "batchEmbedContents": _e("gemini", "batchEmbedContents", **_BILL),
}
_GEMINI_LIST = _e("gemini", "models.list", **_READ)
_GEMINI_GET = _e("gemini", "models.get", **_READ)
# A model id, with a thinking suffix if the caller gives one (``gemini-2.5-pro(high)``).
_GEMINI_MODEL = r"[A-Za-z0-9_.\-]{1,256}(?:\([A-Za-z0-9]{1,16}\))?"
_GEMINI = re.compile(rf"/v1(?:beta)?/models/(?P<model>{_GEMINI_MODEL})(?::(?P<method>[A-Za-z]+))?")
#: Path prefixes of the Gemini API; under ``/v1`` only paths with a ``:method``, or requests with
#: Google's key header, are Gemini's (``/v1/models`` is OpenAI's too).
GEMINI_PREFIX = "/v1beta/"


def _gemini(method: str, path: str, listing: bool) -> Route | None:
    """The Gemini route of ``path``; ``None`` when it is not one. ``listing``: the request is
    Google's (its key header), so ``/v1/models[/{model}]`` lists Gemini's models."""
    if path in ("/v1beta/models", "/v1/models"):
        if path == "/v1/models" and not listing:
            return None
        if method != "GET":
            raise MethodNotAllowed(("GET",))
        return _GEMINI_LIST_ROUTE
    m = _GEMINI.fullmatch(path)
    if m is None:
        return None
    name = m["method"]
    if name is None:
        if not listing and not path.startswith(GEMINI_PREFIX):
            return None
        if method != "GET":
            raise MethodNotAllowed(("GET",))
        return Route(_GEMINI_GET, model=m["model"])
    endpoint = _GEMINI_METHODS.get(name)
    if endpoint is None:
        if path.startswith(GEMINI_PREFIX):
            raise RouteNotFound(path)
        return None
    if method != "POST":
        raise MethodNotAllowed(("POST",))
    return Route(endpoint, model=m["model"])


# Amazon Bedrock Runtime: /model/{modelId}/{operation}. The model id may be an inference-profile
# ARN, whose URL-encoded ``/`` the server decoded: the operation is the last segment.
_BEDROCK_OPERATIONS: dict[str, Endpoint] = {
    "converse": _e("bedrock", "converse", billable=True),
    "converse-stream": _e(
        "bedrock", "converse-stream", billable=True, streamable=True, streams=True
    ),
    "invoke": _e("bedrock", "invoke", billable=True),
    "invoke-with-response-stream": _e(
        "bedrock", "invoke-with-response-stream", billable=True, streamable=True, streams=True
    ),
}
_BEDROCK = re.compile(
    r"/model/(?P<model>[^\x00-\x20]{1,2048}?)"
    r"/(?P<op>converse|converse-stream|invoke|invoke-with-response-stream)"
)
#: The path prefix of Amazon Bedrock Runtime's model operations.
BEDROCK_PREFIX = "/model/"


def _bedrock(method: str, path: str) -> Route:
    m = _BEDROCK.fullmatch(path)
    if m is None:
        raise RouteNotFound(path)
    if method != "POST":
        raise MethodNotAllowed(("POST",))
    return Route(_BEDROCK_OPERATIONS[m["op"]], model=m["model"])


# Vertex AI's Gemini models: /{v1,v1beta1}/projects/{p}/locations/{l}/publishers/google/models/
# {model}:{method}, the same operations as the Gemini API (and so the same meters).
_VERTEX_METHODS: dict[str, Endpoint] = {
    "generateContent": _e("vertex", "generateContent", **_BILL),
    "streamGenerateContent": _e(
        "vertex", "streamGenerateContent", billable=True, streamable=True, streams=True
    ),
    "countTokens": _e("vertex", "countTokens", read_only=True, json_body=True),
}
# Claude on Vertex AI: .../publishers/anthropic/models/{model}:rawPredict|streamRawPredict, the
# Messages API's body (without ``model``) and answers (Anthropic's meters and error shape).
_VERTEX_ANTHROPIC_METHODS: dict[str, Endpoint] = {
    "rawPredict": _e("vertex_anthropic", "rawPredict", **_BILL),
    "streamRawPredict": _e(
        "vertex_anthropic", "streamRawPredict", billable=True, streamable=True, streams=True
    ),
}
# Claude's token counting on Vertex AI: .../publishers/anthropic/models/count-tokens:rawPredict,
# the model in the body (as the Messages API's count_tokens has it): recorded, never billed.
_VERTEX_COUNT_TOKENS = Route(_e("vertex_anthropic", "count-tokens", read_only=True, json_body=True))
_VERTEX_SEGMENT = r"[A-Za-z0-9_.\-]{1,128}"
# Vertex model ids carry their version after an ``@`` (``claude-sonnet-4-5@20250929``).
_VERTEX_MODEL = r"[A-Za-z0-9_.\-]{1,256}(?:@[A-Za-z0-9_.\-]{1,64})?(?:\([A-Za-z0-9]{1,16}\))?"
_VERTEX = re.compile(
    rf"/v1(?:beta1)?/projects/{_VERTEX_SEGMENT}/locations/{_VERTEX_SEGMENT}"
    rf"/publishers/(?P<publisher>google|anthropic)/models/(?P<model>{_VERTEX_MODEL})"
    rf":(?P<method>[A-Za-z]+)"
)
#: Path prefixes of Vertex AI.
VERTEX_PREFIXES = ("/v1/projects/", "/v1beta1/projects/")


def _vertex(method: str, path: str) -> Route:
    m = _VERTEX.fullmatch(path)
    endpoint = None
    if m is not None:
        methods = _VERTEX_METHODS if m["publisher"] == "google" else _VERTEX_ANTHROPIC_METHODS
        endpoint = methods.get(m["method"])
    if m is None or endpoint is None:
        raise RouteNotFound(path)
    if method != "POST":
        raise MethodNotAllowed(("POST",))
    if m["model"] == "count-tokens" and m["publisher"] == "anthropic":
        if m["method"] != "rawPredict":
            raise RouteNotFound(path)
        return _VERTEX_COUNT_TOKENS
    return Route(endpoint, model=m["model"])


def classify(method: str, path: str, anthropic: bool = False) -> Route:
    """Map a request to its route.

    ``path`` is the route path (the ASGI ``path`` minus ``root_path``), already percent-decoded by
    the server. Matching is exact and case-sensitive, as the providers' own APIs are: ``//v1``,
    a trailing slash or ``/V1`` are unknown routes, so nothing can slip past a check by spelling a
    path differently.

    ``anthropic``: the request carries Anthropic's headers; on the paths both providers serve
    (`is_shared_path`) it picks Anthropic's endpoint. A request carrying Google's key on those
    paths is classified by `classify_google`.

    Raises `RouteNotFound` or `MethodNotAllowed`.
    """
    routes = (_EXACT_ROUTES_A if anthropic else _EXACT_ROUTES).get(path)
    if routes is not None:  # the common case: a fixed path, its routes built once
        route = routes.get(method)
        if route is None:
            raise MethodNotAllowed(tuple(routes))
        return route
    if path.startswith(GEMINI_PREFIX) or (path.startswith("/v1/models/") and ":" in path):
        gemini = _gemini(method, path, False)
        if gemini is not None:
            return gemini
    if path.startswith(BEDROCK_PREFIX):
        return _bedrock(method, path)
    if path.startswith(VERTEX_PREFIXES):
        return _vertex(method, path)
    methods: dict[str, Endpoint]
    deployment: str | None = None
    if path.startswith("/openai/deployments/"):
        m = _AZURE.fullmatch(path)
        if m is None or (azure := _AZURE_OPERATIONS.get(m["op"])) is None:
            raise RouteNotFound(path)
        methods = {"POST": azure}
        deployment = m["deployment"]
    elif path.startswith(GEMINI_PREFIX):
        raise RouteNotFound(path)
    else:
        # "/v1/<resource>/...": only that resource's patterns can match
        end = path.find("/", 4)
        patterns = _BY_RESOURCE_A if anthropic else _BY_RESOURCE
        for pattern, candidate in patterns.get(path[4:end] if end > 4 else "", ()):
            if pattern.fullmatch(path):
                methods = candidate
                break
        else:
            raise RouteNotFound(path)
    endpoint = methods.get(method)
    if endpoint is None:
        raise MethodNotAllowed(tuple(methods))
    if deployment is None:
        route = _PLAIN.get(id(endpoint))
        if route is not None:
            return route  # built once: routes are immutable
    return Route(endpoint, deployment, model=deployment)


def classify_google(method: str, path: str) -> Route:
    """`classify` for a request carrying Google's key (``x-goog-api-key`` or ``?key=``): on the
    paths the Gemini API shares with OpenAI's (``/v1/models[/{model}]``) it is the Gemini API."""
    return _gemini(method, path, True) or classify(method, path)


#: The WebSocket routes, by path: the Responses API's WebSocket mode (``GET /v1/responses`` with
#: ``Upgrade: websocket``; each ``response.create`` is a response billed as one of
#: ``POST /v1/responses``) and the Realtime API (``/v1/realtime?model=...``; Azure OpenAI's
#: ``/openai/realtime?deployment=...``).
_WEBSOCKET: dict[str, Route] = {
    "/v1/responses": Route(Endpoint("openai", "responses", billable=True, streamable=True)),
    "/v1/realtime": Route(Endpoint("openai", "realtime", billable=True, streamable=True)),
    # Azure OpenAI's Realtime path (``?api-version=...&deployment=...``), as its SDK connects.
    "/openai/realtime": Route(Endpoint("azure", "realtime", billable=True, streamable=True)),
}


def classify_websocket(path: str) -> Route:
    """The route of a WebSocket upgrade to ``path``; raises `RouteNotFound`."""
    route = _WEBSOCKET.get(path)
    if route is None:
        raise RouteNotFound(path)
    return route


def passthrough_route(api: Api) -> Route:
    """The route given to unknown paths when passthrough is configured: forwarded, not billed."""
    return _PASSTHROUGH[api]


_PASSTHROUGH: dict[Api, Route] = {api: Route(Endpoint(api, "passthrough")) for api in APIS}

_GEMINI_LIST_ROUTE = Route(_GEMINI_LIST)

# The route of each endpoint reached without a deployment, by the endpoint's identity (the
# endpoints are the module's own constants).
_PLAIN: dict[int, Route] = {
    id(endpoint): Route(endpoint)
    for table in (
        *_EXACT.values(),
        *(methods for _, methods in _PATTERNS),
        *_ANTHROPIC_EXACT.values(),
        *(methods for _, methods in _ANTHROPIC_PATTERNS),
    )
    for endpoint in table.values()
}

# The route of each method of each fixed path, by path (routes are immutable, so shared).
_EXACT_ROUTES: dict[str, dict[str, Route]] = {
    path: {method: _PLAIN[id(endpoint)] for method, endpoint in methods.items()}
    for path, methods in _EXACT.items()
}
_EXACT_ROUTES_A: dict[str, dict[str, Route]] = {
    path: {method: _PLAIN[id(endpoint)] for method, endpoint in methods.items()}
    for path, methods in _EXACT_A.items()
}
