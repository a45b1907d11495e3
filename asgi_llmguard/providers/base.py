"""The upstream description and the interface each provider module implements."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

from asgi_llmguard.context import RequestContext, RequestFields
from asgi_llmguard.errors import ConfigurationError
from asgi_llmguard.providers.thinking import Thinking
from asgi_llmguard.redact import fingerprint
from asgi_llmguard.routes import Api, Endpoint
from asgi_llmguard.tokens import TokenUsage

#: A provider's name in the registry (``asgi_llmguard.providers.PROVIDERS``).
ProviderName = str
StrHeaders = list[tuple[str, str]]
#: A rate-limit reset header's parser: its value (and the time now, epoch seconds) -> the seconds
#: to wait, ``None`` when it says nothing; may raise ``ValueError`` on garbage (ignored).
ResetParser = Callable[[str, float], float | None]
#: `Provider.first_event`: (the answer's content type, the bytes read so far) -> its status, or
#: ``None`` while the first event is incomplete.
FirstEvent = Callable[[bytes, bytes], int | None]


@dataclass(frozen=True, slots=True, repr=False)
class Upstream:
    """One upstream credential at one provider.

    ``provider`` is the API the upstream speaks, a name in the provider registry
    (`asgi_llmguard.providers.PROVIDERS`): ``openai`` (OpenAI and every OpenAI-compatible
    server: vLLM, DeepInfra, a custom base URL), ``azure`` (Azure OpenAI) or ``anthropic``.
    ``base_url`` is the provider's base URL as its SDK takes it: ``https://api.openai.com/v1``,
    ``http://vllm:8000/v1``, ``https://RESOURCE.openai.azure.com``, ``https://api.anthropic.com``.

    The key is never shown: ``repr`` and ``credential_id`` carry only a hash prefix.
    """

    provider: ProviderName
    base_url: str
    api_key: str | None = None
    #: A name for this credential in records and logs; default ``<provider>:<key hash prefix>``.
    name: str | None = None
    #: Azure: the ``api-version`` query parameter. Anthropic: the ``anthropic-version`` header
    #: sent when the client sends none.
    api_version: str | None = None
    #: Azure: model name -> deployment name, for OpenAI-style requests that name a model.
    deployments: Mapping[str, str] = field(default_factory=dict)
    #: Extra headers sent upstream with every request (e.g. ``OpenAI-Organization``).
    headers: Mapping[str, str] = field(default_factory=dict)
    #: The models this credential serves (names or globs such as ``claude-*``); empty: all.
    #: Routing builds each model's credential pool from these.
    models: tuple[str, ...] = ()
    #: Share of the traffic under the ``weighted`` selector.
    weight: int = 1
    #: Group under the ``priority`` selector: lower numbers are used first.
    priority: int = 0
    #: Vertex AI: the service-account key file of the Google credential; unset: the
    #: application default credentials.
    credentials_file: str | None = None
    #: Vertex AI: the Google Cloud project every request is sent to, whatever project the
    #: caller's path names; unset: the caller's.
    project: str | None = None
    #: Vertex AI: the location every request is sent to (``us-east5``, ``global``); unset: the
    #: one the base URL names when ``project`` is set, else the caller's.
    location: str | None = None
    #: Amazon Bedrock: the AWS region requests are signed for; unset: the region in the base URL
    #: (``bedrock-runtime.{region}.amazonaws.com``), else ``AWS_REGION`` / ``AWS_DEFAULT_REGION``,
    #: else ``us-east-1``.
    region: str | None = None
    #: Amazon Bedrock: a named profile of the shared AWS config files (``~/.aws/config``) whose
    #: credentials sign the requests; unset: botocore's default chain (which honours
    #: ``AWS_PROFILE``).
    profile: str | None = None

    def __post_init__(self) -> None:
        from asgi_llmguard.providers import PROVIDERS  # the registry imports this module

        if self.provider not in PROVIDERS:
            names = ", ".join(repr(name) for name in PROVIDERS)
            raise ConfigurationError(
                f"Upstream provider must be one of {names}, not {self.provider!r}"
            )
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigurationError(
                f"Upstream base_url must be an absolute http(s) URL, got {self.base_url!r}"
            )
        if parts.query or parts.fragment:
            raise ConfigurationError("Upstream base_url must not carry a query or fragment")
        if self.api_key is not None and not self.api_key.strip():
            raise ConfigurationError("Upstream api_key is empty; leave it out or set a key")
        models: object = self.models
        if isinstance(models, str) or not all(isinstance(m, str) and m for m in self.models):
            raise ConfigurationError("Upstream models must be a list of model names or globs")
        object.__setattr__(self, "models", tuple(self.models))
        if self.weight < 1:
            raise ConfigurationError("Upstream weight must be a positive integer")
        if (self.project is not None or self.location is not None) and self.provider != "vertex":
            raise ConfigurationError("Upstream project and location are Vertex AI options")
        for label, value in (("region", self.region), ("profile", self.profile)):
            if value is not None and (not value.strip() or not value.isprintable()):
                raise ConfigurationError(f"Upstream {label} must be a non-empty name")
        if (self.region is not None or self.profile is not None) and self.provider != "bedrock":
            raise ConfigurationError("Upstream region and profile are Amazon Bedrock options")

    @property
    def credential_id(self) -> str:
        if self.name:
            return self.name
        return f"{self.provider}:{fingerprint(self.api_key) if self.api_key else 'nokey'}"

    def __repr__(self) -> str:
        key = f"sha256:{fingerprint(self.api_key)}" if self.api_key else None
        return f"Upstream(provider={self.provider!r}, base_url={self.base_url!r}, key={key!r})"


class Provider(Protocol):
    """All the gateway knows about one provider's wire, behind one interface.

    One module per provider (``providers/<name>.py``) exports one instance as ``PROVIDER``; the
    registry in ``providers/__init__.py`` lists them. The forwarder asks for the static parts once
    per upstream at start-up (`Target`), and for the per-request parts on each attempt.
    """

    #: The name ``Upstream.provider`` and the config file's ``provider =`` use.
    name: str
    #: The route APIs this provider can serve, in order of preference.
    serves: frozenset[Api]
    #: The route APIs whose wire this module defines: their meters and warm-up requests.
    owns: frozenset[Api]
    #: Environment variables, in order, whose key gives a default upstream at ``default_url``
    #: when the config file lists no upstreams (``OPENAI_API_KEY``); empty: none.
    key_env: tuple[str, ...]
    default_url: str
    #: The upstream credential is applied per request by `sign` (a signature over the request);
    #: ``False``: `static_headers` carry it and `sign` is never called (the fast path).
    signs: bool
    #: A 429's body may say how long to wait (`retry_hint`), beyond the standard headers.
    hints_in_body: bool

    def static_headers(self, upstream: Upstream) -> StrHeaders:
        """Headers added to every upstream request, the credential included unless `signs`;
        built once."""
        ...

    def default_headers(self, upstream: Upstream) -> StrHeaders:
        """Headers sent only when the client did not send them (e.g. ``anthropic-version``)."""
        ...

    def target(self, upstream: Upstream, ctx: RequestContext, query: bytes) -> str:
        """The absolute upstream URL for this request, query string included."""
        ...

    def sign(
        self, upstream: Upstream, method: str, url: str, headers: StrHeaders, body: bytes
    ) -> str:
        """Apply the upstream credential to one request (only when `signs`): add to ``headers``
        in place, and return the URL to send to (``url`` itself, or one with a parameter)."""
        ...

    def stream_meter(self, endpoint: Endpoint) -> StreamMeter | None:
        """A meter for a streamed answer of ``endpoint`` (an API in `owns`), or ``None``."""
        ...

    def usage_from_json(self, body: bytes) -> tuple[TokenUsage | None, str | None, dict[str, int]]:
        """Usage, served model and server-side tool calls from a non-streamed JSON answer."""
        ...

    def warmup(self, api: Api, model: str, max_tokens: int, prompt: str) -> tuple[str, bytes]:
        """The route path and JSON body of the smallest request that warms ``model`` up."""
        ...

    def retry_hint(self, body: bytes) -> float | None:
        """Seconds a rate-limited answer's body asks to wait (only when `hints_in_body`)."""
        ...

    # Asked once per route API (`OWNERS`) or per upstream (`Target`) at start-up, never looked
    # up per request.

    #: The rate-limit headers whose value says when the limit resets (beyond ``retry-after`` and
    #: ``retry-after-ms``), each with its parser: the cooldown after a 429 lasts until then.
    reset_headers: Mapping[bytes, ResetParser]

    def apply_thinking(
        self, operation: str, body: dict[str, Any], thinking: Thinking, model: str
    ) -> None:
        """Set the reasoning parameters of a request of ``operation`` (an API in `owns`) in its
        decoded JSON ``body``, in place, from a model name's thinking suffix; ``model`` is the
        name without it. An operation without such parameters leaves the body as it is."""
        ...

    def ask_stream_usage(
        self, endpoint: Endpoint, fields: RequestFields, body: bytes
    ) -> bytes | None:
        """For a streamed request of ``endpoint`` (an API in `owns`) whose wire reports usage
        only when asked: the body asking for it (the answer then goes through
        `strip_stream_usage`). ``None``: the body stays as it is."""
        ...

    def strip_stream_usage(self, data: bytes) -> bytes:
        """Whole stream events without what `ask_stream_usage` made the upstream add."""
        ...

    def first_event(self, content_type: bytes, held: bytes) -> int | None:
        """The status a streamed answer's first event stands for (200: not an error; 429, 529,
        500: an error sent as the first event, worth another credential), from the bytes read so
        far; ``None`` while the first event is incomplete. An answer this provider does not
        check (not a stream, an unknown content type) is 200 at once, with nothing read."""
        ...

    def warmup_operation(self, api: Api) -> str:
        """The operation of the `warmup` request of ``api`` (its ledger row's ``endpoint``)."""
        ...

    def pool_models(self, upstream: Upstream, api: Api, native: bool) -> Sequence[str] | None:
        """The models whose pools ``upstream`` joins for route API ``api`` (one of `serves`):
        ``None``: its own (`Upstream.models`, else every model); empty: none. ``native``: some
        configured upstream's provider owns ``api``."""
        ...


class StreamMeter(Protocol):
    """Reads a response stream one whole event at a time (see `EventSplitter`)."""

    #: The provider's usage, once an event carried it (its output count completed by an
    #: estimate while the provider's final count has not arrived; see ``estimated``).
    @property
    def usage(self) -> TokenUsage | None: ...

    #: ``usage`` holds the gateway's estimate of the output: the stream ended before the
    #: provider's final count (a placeholder or running count is never taken as final).
    @property
    def estimated(self) -> bool: ...

    model: str | None
    #: The provider's end-of-stream marker was seen (``[DONE]``, ``message_stop``, ...).
    finished: bool
    #: An error event was seen in the stream.
    error: bool
    #: Events that carried generated output (an estimate of output tokens so far).
    deltas: int
    #: Server-side tool calls by tool type, billed per call (``{"web_search": 2}``).
    tool_calls: dict[str, int]
    #: The service tier the stream's events said served it so far (also on ``usage``).
    service_tier: str | None

    def event(self, event: bytes) -> None: ...


class StaticCredential:
    """The part every provider whose credential is a fixed header shares."""

    signs = False
    hints_in_body = False
    key_env: tuple[str, ...] = ()
    default_url = ""

    def sign(
        self, upstream: Upstream, method: str, url: str, headers: StrHeaders, body: bytes
    ) -> str:
        return url

    def retry_hint(self, body: bytes) -> float | None:
        return None

    def pool_models(self, upstream: Upstream, api: Api, native: bool) -> Sequence[str] | None:
        return None


def join(base_url: str, path: str, query: bytes) -> str:
    url = base_url.rstrip("/") + path
    return url + "?" + query.decode("latin-1") if query else url
