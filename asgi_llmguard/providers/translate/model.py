"""The internal model of one turn that every format's codec reads and writes.

A request (:class:`Turn`), an answer (:class:`Answer`) and the events of a streamed answer
(the ``*Delta`` structs, :data:`Delta`). Codecs translate a wire format to and from these, so
N formats need N codecs rather than a translator per pair. Plain immutable data: no I/O.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from asgi_llmguard.tokens import TokenUsage


class Untranslatable(ValueError):
    """A field the target format cannot express, named as the source spelled it."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class MalformedInput(ValueError):
    """The source body or event is not what its format documents."""


# -- parts ------------------------------------------------------------------------------------


class Text(msgspec.Struct, frozen=True, tag="text"):
    text: str


class Image(msgspec.Struct, frozen=True, tag="image"):
    """An image by ``url``, or inline as base64 ``data`` with its ``media_type``."""

    url: str | None = None
    data: str | None = None
    media_type: str | None = None


class ToolCall(msgspec.Struct, frozen=True, tag="tool_call"):
    """A call the model made; ``arguments`` is JSON text (an object)."""

    id: str
    name: str
    arguments: str


class ToolResult(msgspec.Struct, frozen=True, tag="tool_result"):
    call_id: str
    content: tuple[Text | Image, ...] = ()
    is_error: bool = False


class Thinking(msgspec.Struct, frozen=True, tag="thinking"):
    text: str
    signature: str | None = None


class RedactedThinking(msgspec.Struct, frozen=True, tag="redacted_thinking"):
    data: str


class Refusal(msgspec.Struct, frozen=True, tag="refusal"):
    """The model declined to answer (OpenAI's ``message.refusal``)."""

    text: str


Part = Text | Image | ToolCall | ToolResult | Thinking | RedactedThinking | Refusal


class Message(msgspec.Struct, frozen=True):
    """One message. Tool results travel in ``user`` messages, as Anthropic has them; ``system``
    is only a system message that does not lead the conversation (leading ones are
    :attr:`Turn.system`)."""

    role: Literal["user", "assistant", "system"]
    parts: tuple[Part, ...]


# -- request ----------------------------------------------------------------------------------


class Tool(msgspec.Struct, frozen=True):
    name: str
    description: str | None = None
    #: The JSON schema of the arguments.
    parameters: dict[str, Any] = msgspec.field(default_factory=dict)
    strict: bool | None = None


class ToolChoice(msgspec.Struct, frozen=True):
    mode: Literal["auto", "none", "required", "named"]
    name: str | None = None


class StructuredOutput(msgspec.Struct, frozen=True):
    """Answer with JSON matching ``schema`` (OpenAI's ``response_format`` json_schema)."""

    name: str
    schema: dict[str, Any]
    strict: bool | None = None
    description: str | None = None


class Turn(msgspec.Struct, frozen=True, kw_only=True):
    """One request: the conversation so far and how to answer it."""

    model: str
    messages: tuple[Message, ...]
    system: tuple[Text, ...] = ()
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice | None = None
    #: ``False``: at most one tool call per answer. ``None``: the provider's default (allowed).
    parallel_tool_calls: bool | None = None
    structured_output: StructuredOutput | None = None
    stop: tuple[str, ...] = ()
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    #: OpenAI's ``reasoning_effort`` (minimal/low/medium/high) ...
    reasoning_effort: str | None = None
    #: ... or Anthropic's ``thinking.budget_tokens``; at most one of the two is set.
    thinking_budget: int | None = None
    stream: bool = False
    #: An end-user id (OpenAI's ``user``, Anthropic's ``metadata.user_id``).
    user: str | None = None
    #: Fields the source set that this model cannot hold, as the source named them; writers
    #: refuse them unless the caller lets them drop.
    unsupported: tuple[str, ...] = ()


# -- answer -----------------------------------------------------------------------------------

FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "pause", "other"]


class Answer(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    model: str
    parts: tuple[Part, ...]
    finish_reason: FinishReason | None
    #: The stop sequence that ended the answer, when the provider says which.
    stop_sequence: str | None = None
    usage: TokenUsage | None = None


# -- stream deltas ----------------------------------------------------------------------------
# ``index`` is the position of the part in the answer (Anthropic's content block index).


class MessageStart(msgspec.Struct, frozen=True, tag="message_start"):
    id: str
    model: str


class TextDelta(msgspec.Struct, frozen=True, tag="text_delta"):
    index: int
    text: str


class ThinkingDelta(msgspec.Struct, frozen=True, tag="thinking_delta"):
    index: int
    text: str


class SignatureDelta(msgspec.Struct, frozen=True, tag="signature_delta"):
    index: int
    signature: str


class RedactedThinkingPart(msgspec.Struct, frozen=True, tag="redacted_thinking"):
    index: int
    data: str


class ToolCallStart(msgspec.Struct, frozen=True, tag="tool_call_start"):
    index: int
    id: str
    name: str


class ToolArgumentsDelta(msgspec.Struct, frozen=True, tag="tool_arguments_delta"):
    index: int
    json: str


class PartStop(msgspec.Struct, frozen=True, tag="part_stop"):
    index: int


class Finish(msgspec.Struct, frozen=True, tag="finish"):
    reason: FinishReason
    stop_sequence: str | None = None


class UsageDelta(msgspec.Struct, frozen=True, tag="usage"):
    """The usage known so far (a running total, not an increment)."""

    usage: TokenUsage


class StreamError(msgspec.Struct, frozen=True, tag="error"):
    #: The error's type as the provider named it (``overloaded_error``, ``api_error``, ...).
    kind: str
    message: str


class MessageStop(msgspec.Struct, frozen=True, tag="message_stop"):
    """The stream is complete."""


Delta = (
    MessageStart
    | TextDelta
    | ThinkingDelta
    | SignatureDelta
    | RedactedThinkingPart
    | ToolCallStart
    | ToolArgumentsDelta
    | PartStop
    | Finish
    | UsageDelta
    | StreamError
    | MessageStop
)


class _Refusals:
    """A writer's refusals: raise :class:`Untranslatable`, or note the field when it may drop."""

    __slots__ = ("allowed", "dropped")

    def __init__(self, drop: frozenset[str] | set[str] | tuple[str, ...]) -> None:
        self.allowed = drop
        self.dropped: list[str] = []

    def refuse(self, field: str, reason: str) -> None:
        if field not in self.allowed:
            raise Untranslatable(field, reason)
        if field not in self.dropped:
            self.dropped.append(field)


def answer_deltas(answer: Answer) -> list[Delta]:
    """The stream events that carry ``answer``: for serving a whole answer as a stream."""
    out: list[Delta] = [MessageStart(answer.id, answer.model)]
    for index, part in enumerate(answer.parts):
        if isinstance(part, Text | Refusal):
            out.append(TextDelta(index, part.text))
        elif isinstance(part, ToolCall):
            out.append(ToolCallStart(index, part.id, part.name))
            if part.arguments:
                out.append(ToolArgumentsDelta(index, part.arguments))
        elif isinstance(part, Thinking):
            out.append(ThinkingDelta(index, part.text))
            if part.signature:
                out.append(SignatureDelta(index, part.signature))
        elif isinstance(part, RedactedThinking):
            out.append(RedactedThinkingPart(index, part.data))
        else:
            raise Untranslatable(f"content.{type(part).__name__}", "not an answer part")
        out.append(PartStop(index))
    if answer.finish_reason is not None:
        out.append(Finish(answer.finish_reason, answer.stop_sequence))
    if answer.usage is not None:
        out.append(UsageDelta(answer.usage))
    out.append(MessageStop())
    return out


class AnswerCollector:
    """Stream events gathered into one :class:`Answer`: for serving a stream as a whole answer.

    Holds the answer being built, so its memory grows with the answer (unlike the decoders).
    """

    __slots__ = ("_args", "_finish", "_id", "_kinds", "_model", "_parts", "_usage", "error")

    def __init__(self) -> None:
        self._id = ""
        self._model = ""
        self._parts: dict[int, list[str]] = {}
        self._kinds: dict[int, tuple[str, str, str]] = {}
        self._args: dict[int, list[str]] = {}
        self._finish: Finish | None = None
        self._usage: TokenUsage | None = None
        #: The error event that ended the stream, if one did.
        self.error: StreamError | None = None

    def add(self, delta: Delta) -> None:
        if isinstance(delta, TextDelta):
            self._kinds.setdefault(delta.index, ("text", "", ""))
            self._parts.setdefault(delta.index, []).append(delta.text)
        elif isinstance(delta, ThinkingDelta):
            self._kinds.setdefault(delta.index, ("thinking", "", ""))
            self._parts.setdefault(delta.index, []).append(delta.text)
        elif isinstance(delta, SignatureDelta):
            self._kinds.setdefault(delta.index, ("thinking", "", ""))
            self._parts.setdefault(delta.index, [])
            self._args.setdefault(delta.index, []).append(delta.signature)
        elif isinstance(delta, ToolCallStart):
            self._kinds[delta.index] = ("tool", delta.id, delta.name)
            self._args[delta.index] = []
        elif isinstance(delta, ToolArgumentsDelta):
            self._args.setdefault(delta.index, []).append(delta.json)
        elif isinstance(delta, RedactedThinkingPart):
            self._kinds[delta.index] = ("redacted", delta.data, "")
        elif isinstance(delta, MessageStart):
            self._id, self._model = delta.id, delta.model
        elif isinstance(delta, Finish):
            self._finish = delta
        elif isinstance(delta, UsageDelta):
            self._usage = delta.usage
        elif isinstance(delta, StreamError):
            self.error = delta

    def answer(self) -> Answer:
        parts: list[Part] = []
        for index in sorted(self._kinds):
            kind, a, b = self._kinds[index]
            if kind == "text":
                parts.append(Text("".join(self._parts.get(index, ()))))
            elif kind == "thinking":
                signature = "".join(self._args.get(index, ())) or None
                parts.append(Thinking("".join(self._parts.get(index, ())), signature))
            elif kind == "tool":
                parts.append(ToolCall(a, b, "".join(self._args.get(index, ()))))
            else:
                parts.append(RedactedThinking(a))
        finish = self._finish
        return Answer(
            id=self._id,
            model=self._model,
            parts=tuple(parts),
            finish_reason=None if finish is None else finish.reason,
            stop_sequence=None if finish is None else finish.stop_sequence,
            usage=self._usage,
        )
