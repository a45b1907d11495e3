"""The endpoint table and `classify(method, path)`.

Pure functions over strings: no ASGI, no I/O. The table is compiled once at import into a dict of
exact paths plus, for paths with ids in them, a short list of patterns per resource (the segment
after ``/v1/``), so classifying the common routes (chat completions, responses, messages) is one
dict lookup and a path with an id is tried only against its own resource's few patterns.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

#: The API dialect a route speaks. It decides the error shape and which upstream may serve it.
Api = Literal["openai", "azure", "anthropic"]


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
    #: Errors on this endpoint take Anthropic's shape (read on every request: a plain field).
    anthropic_errors: bool = field(init=False, repr=False, compare=False)
    #: The unit (``"minute"``, ``"image"``) its answers are billed in, if any (a plain field too).
    unit: str | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "anthropic_errors", self.api == "anthropic")  # frozen
        unit = _UNITS.get(self.operation) if self.api != "anthropic" else None
        object.__setattr__(self, "unit", unit)


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


def classify(method: str, path: str, anthropic: bool = False) -> Route:
    """Map a request to its route.

    ``path`` is the route path (the ASGI ``path`` minus ``root_path``), already percent-decoded by
    the server. Matching is exact and case-sensitive, as the providers' own APIs are: ``//v1``,
    a trailing slash or ``/V1`` are unknown routes, so nothing can slip past a check by spelling a
    path differently.

    ``anthropic``: the request carries Anthropic's headers; on the paths both providers serve
    (`is_shared_path`) it picks Anthropic's endpoint.

    Raises `RouteNotFound` or `MethodNotAllowed`.
    """
    routes = (_EXACT_ROUTES_A if anthropic else _EXACT_ROUTES).get(path)
    if routes is not None:  # the common case: a fixed path, its routes built once
        route = routes.get(method)
        if route is None:
            raise MethodNotAllowed(tuple(routes))
        return route
    methods: dict[str, Endpoint]
    deployment: str | None = None
    if path.startswith("/openai/deployments/"):
        m = _AZURE.fullmatch(path)
        if m is None or (azure := _AZURE_OPERATIONS.get(m["op"])) is None:
            raise RouteNotFound(path)
        methods = {"POST": azure}
        deployment = m["deployment"]
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
    return Route(endpoint, deployment)


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


_PASSTHROUGH: dict[Api, Route] = {
    api: Route(Endpoint(api, "passthrough")) for api in ("openai", "azure", "anthropic")
}

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
