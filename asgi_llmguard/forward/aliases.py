"""Model aliases: a public model name that stands for one or more upstream models.

``AliasTable({"fast": ["gpt-5-mini", "claude-haiku-4-5"]})`` lets callers ask for ``fast`` while
the operator decides what serves it. Several members form a pool served round-robin per alias; a
member listed several times gets that many turns of the rotation, which is how weights are
written (``["a", "a", "b"]`` puts ``a`` first two requests out of three). Each request gets the
whole pool, rotated, so the forwarder can fall back to the next member when one fails.

A thinking suffix on the requested name is carried onto the chosen member:
``fast(high)`` -> ``gpt-5-mini(high)``; it overrides a suffix the member has in configuration.

All state is one integer per configured alias, so no request can grow it. Rotation is not
locked: the gateway runs one event loop per process and nothing here awaits. Pure logic, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import orjson

from asgi_llmguard.errors import ConfigurationError
from asgi_llmguard.providers.thinking import ParsedModel, parse_model

# A JSON string (escapes included) or a bracket: enough structure to find keys and depths
# without decoding the document. The alternatives are disjoint, so matching is linear.
_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[{}\[\]]', re.DOTALL)
_COLON = re.compile(rb"[ \t\r\n]*:[ \t\r\n]*")
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
# The objects that wrap the model one level down in streams: Anthropic's ``message_start``
# (``{"type": "message_start", "message": {"model": ...}}``) and the Responses API's events
# (``{"type": "response.created", "response": {"model": ...}}``).
_WRAPPERS = (b"message", b"response")


class AliasTable:
    """Public model names -> upstream model pools. Built once from configuration."""

    __slots__ = ("_members", "_position", "rewrite_response_model")

    def __init__(
        self,
        aliases: Mapping[str, Sequence[str]],
        *,
        rewrite_response_model: bool = True,
    ) -> None:
        """Validate the table; raises ``ConfigurationError`` with the alias at fault.

        Alias names must be plain (no thinking suffix: suffixes are chosen per request). Members
        may carry one (``"deep": ["claude-opus-4-1(24576)"]``) but must not be aliases themselves,
        which rules out chains and cycles. ``rewrite_response_model`` makes
        :meth:`rewrite_model` put the alias back into responses, so clients see the name they
        asked for (some SDKs and tools check it).
        """
        members: dict[str, tuple[ParsedModel, ...]] = {}
        for alias, pool in aliases.items():
            if not isinstance(alias, str) or not alias:
                raise ConfigurationError("Model alias names must be non-empty strings.")
            if isinstance(pool, str | bytes):
                raise ConfigurationError(
                    f"Model alias {alias!r} must map to a list of model names, not a string."
                )
            try:
                if parse_model(alias).thinking is not None:
                    raise ConfigurationError(
                        f"Model alias {alias!r} must not end with a thinking suffix; callers "
                        "add one per request."
                    )
                parsed = tuple(parse_model(str(member)) for member in pool)
            except ValueError as error:
                if isinstance(error, ConfigurationError):
                    raise
                raise ConfigurationError(f"Model alias {alias!r}: {error}") from None
            if not parsed:
                raise ConfigurationError(f"Model alias {alias!r} has no members.")
            for member in parsed:
                if not member.base or member.base in aliases:
                    raise ConfigurationError(
                        f"Model alias {alias!r}: member {str(member)!r} is empty or another "
                        "alias; aliases cannot refer to aliases."
                    )
            members[alias] = parsed
        self._members = members
        self._position = dict.fromkeys(members, 0)
        self.rewrite_response_model = rewrite_response_model

    def __contains__(self, name: object) -> bool:
        """Whether ``name`` (with or without a valid thinking suffix) is an alias."""
        if not isinstance(name, str):
            return False
        try:
            return parse_model(name).base in self._members
        except ValueError:
            return False

    def __len__(self) -> int:
        return len(self._members)

    def _split(self, alias: str) -> tuple[str, ParsedModel]:
        requested = parse_model(alias)
        if requested.base not in self._members:
            raise KeyError(alias)
        return requested.base, requested

    def _order(self, base: str, requested: ParsedModel, start: int) -> list[str]:
        pool = self._members[base]
        order: list[str] = []
        for member in (*pool[start:], *pool[:start]):
            if requested.thinking is not None:
                member = ParsedModel(member.base, requested.thinking)
            name = str(member)
            if name not in order:  # repeats are weights, not extra fallbacks
                order.append(name)
        return order

    def next(self, alias: str) -> list[str]:
        """The members to try for one request, in order, and advance the rotation.

        The first is this request's turn of the round-robin; the others follow as fallbacks in
        pool order, each once. Raises ``KeyError`` if ``alias`` is not an alias and
        ``ValueError`` if its thinking suffix is malformed.
        """
        base, requested = self._split(alias)
        start = self._position[base]
        self._position[base] = (start + 1) % len(self._members[base])
        return self._order(base, requested, start)

    def peek(self, alias: str) -> str:
        """The member :meth:`next` would put first, without advancing the rotation.

        For routing decisions and diagnostics (e.g. checking a cooldown before committing).
        """
        base, requested = self._split(alias)
        return self._order(base, requested, self._position[base])[0]

    def resolve(self, name: str) -> list[str]:
        """:meth:`next` for an alias, ``[name]`` unchanged for any other model name.

        The entry point for the forwarder: every request resolves exactly once. Raises
        ``ValueError`` for a malformed thinking suffix, like :func:`parse_model`.
        """
        if parse_model(name).base in self._members:
            return self.next(name)
        return [name]

    def rewrite_model(self, body: bytes, alias: str) -> bytes:
        """Put ``alias`` back as the ``model`` of a response body or of SSE lines.

        ``alias`` should be the name the client sent (suffix included). Rewritten: the string
        value of the top-level ``"model"`` key, and of ``"model"`` inside a top-level
        ``"message"`` or ``"response"`` object (Anthropic ``message_start``, Responses API
        events). A body starting with ``{`` is one JSON document; anything else is read as SSE
        and each ``data:`` line is rewritten on its own.

        Limits, by design (bytes only, nothing decoded): pass whole SSE lines -- a line split
        across chunks is only rewritten if its first piece holds the whole value; a key written
        with escapes (``"mod\\u0065l"``) is not recognised; compressed bodies must be decoded
        first; the length changes, so a ``Content-Length`` must be recomputed or dropped.
        Malformed input is returned unchanged or rewritten best-effort, never an exception.
        """
        if not self.rewrite_response_model or not body:
            return body
        value = orjson.dumps(alias)
        if body.lstrip()[:1] == b"{":
            return _rewrite_document(body, value)
        lines = body.split(b"\n")
        for index, line in enumerate(lines):
            if line.startswith(b"data:"):
                lines[index] = b"data:" + _rewrite_document(line[5:], value)
        return b"\n".join(lines)


def _model_spans(doc: bytes) -> list[tuple[int, int]]:
    """Where the wanted ``"model"`` string values are in ``doc``, as (start, end) byte offsets."""
    spans: list[tuple[int, int]] = []
    # One entry per open container: (is_object, key that holds it in its parent).
    stack: list[tuple[bool, bytes | None]] = []
    pending: bytes | None = None  # the key whose value comes next
    for match in _TOKEN.finditer(doc):
        token = match.group()
        first = token[:1]
        if first == b'"':
            colon = _COLON.match(doc, match.end())
            if colon is None or not stack or not stack[-1][0]:
                pending = None  # a string value
                continue
            key = token[1:-1]
            if key == b"model" and _wanted(stack):
                value = _STRING.match(doc, colon.end())
                if value is not None:
                    spans.append((value.start(), value.end()))
            pending = key
        elif first in (b"{", b"["):
            stack.append((first == b"{", pending))
            pending = None
        else:
            if stack:
                stack.pop()
            pending = None
    return spans


def _wanted(stack: list[tuple[bool, bytes | None]]) -> bool:
    if len(stack) == 1:
        return True
    return len(stack) == 2 and stack[0][0] and stack[1][1] in _WRAPPERS


def _rewrite_document(doc: bytes, value: bytes) -> bytes:
    spans = _model_spans(doc)
    if not spans:
        return doc
    parts: list[bytes] = []
    previous = 0
    for start, end in spans:
        parts += (doc[previous:start], value)
        previous = end
    parts.append(doc[previous:])
    return b"".join(parts)
