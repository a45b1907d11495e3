"""Scripted tool calls and structured output, shared by the fake's wire formats.

The fake plays one deterministic script, chosen by the ``tool_call`` knob:

* the request offers function tools and its last turn is not a tool result: the model calls the
  tool named by the knob (``auto``: the first offered tool), with ``tool_arguments`` (a JSON
  object) or, without them, arguments built from the tool's JSON schema (:func:`example`);
  ``parallel_tool_calls`` makes it two calls in one turn (the first two offered tools, or the
  named / only tool twice);
* the last turn carries tool results: the model answers text quoting them
  (:func:`quote_results`), through the ordinary reply path.

``structured_output`` makes a text answer the JSON :func:`example` of the request's response
schema. Each wire format finds the offered tools, the tool results and the schema in its own
shape (``_openai``, ``_anthropic``, ``_gemini``); this module knows no wire format.

Call ids are deterministic: a hash of the assistant turn's position, the call's position and the
tool's name, so they are unique within one conversation and equal across runs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

#: Characters per streamed piece of a call's JSON arguments (one output token each).
ARGUMENT_PIECE = 8


@dataclass(frozen=True)
class ToolCall:
    index: int
    name: str
    arguments: dict[str, Any]
    key: str
    """A hex digest to build the format's call id from (``call_<key>``, ``toolu_<key>``)."""

    @property
    def arguments_json(self) -> str:
        return orjson.dumps(self.arguments).decode()

    @property
    def pieces(self) -> list[str]:
        """The arguments' JSON in pieces of :data:`ARGUMENT_PIECE` characters."""
        text = self.arguments_json
        return [text[i : i + ARGUMENT_PIECE] for i in range(0, len(text), ARGUMENT_PIECE)]


@dataclass(frozen=True)
class Script:
    """The tool knobs of one request."""

    tool_call: str | None = None
    tool_arguments: str | None = None
    parallel_tool_calls: bool = False
    structured_output: bool = False


def output_tokens(calls: list[ToolCall]) -> int:
    """A tool-call turn's output tokens: one per streamed piece of the arguments."""
    return sum(len(call.pieces) for call in calls)


def plan_calls(
    script: Script,
    offered: list[tuple[str, Any]],
    *,
    turn: int,
    forced: str | None = None,
    parallel: bool = True,
) -> list[ToolCall]:
    """The calls to make for ``offered`` ``(name, JSON schema)`` tools; ``[]``: answer text.

    ``forced`` is the request's own choice of one tool (``tool_choice``), which wins over an
    ``auto`` knob; ``parallel`` false (the request turned parallel calls off) keeps one call.
    The caller has already checked the request allows tool calls at all.
    """
    if script.tool_call is None or not offered:
        return []
    if not parallel:
        script = Script(script.tool_call, script.tool_arguments, False, script.structured_output)
    schemas = dict(offered)
    wanted = forced if script.tool_call == "auto" and forced else script.tool_call
    if wanted == "auto":
        names = [name for name, _ in offered]
        chosen = names[:2] if len(names) > 1 else names * 2
        chosen = chosen if script.parallel_tool_calls else chosen[:1]
    else:
        if wanted not in schemas:
            return []  # the named tool is not offered in this request: answer text
        chosen = [wanted] * (2 if script.parallel_tool_calls else 1)
    calls: list[ToolCall] = []
    for index, name in enumerate(chosen):
        if script.tool_arguments is not None:
            arguments = orjson.loads(script.tool_arguments)
        else:
            arguments = example(schemas[name], name)
            if not isinstance(arguments, dict):
                arguments = {}
        key = hashlib.sha256(f"{turn}:{index}:{name}".encode()).hexdigest()[:24]
        calls.append(ToolCall(index, name, arguments, key))
    return calls


def quote_results(results: list[str]) -> str:
    """The text answer once tool results arrived: ``Tool result: <r1> | <r2>``."""
    return "Tool result: " + " | ".join(results)


def result_text(value: Any) -> str:
    """A tool result as text: a string, the ``text`` of content parts, or compact JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) for p in value):
        texts = [p["text"] for p in value if isinstance(p.get("text"), str)]
        if texts:
            return "".join(texts)
    return orjson.dumps(value).decode()


def check_arguments(text: str) -> None:
    """``tool_arguments`` must be a JSON object (ValueError otherwise)."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ValueError("tool_arguments must be a JSON object") from None
    if not isinstance(value, dict):
        raise ValueError("tool_arguments must be a JSON object")


# -- values from a schema -------------------------------------------------------------------------


def example(schema: Any, name: str = "value", *, every: bool = False) -> Any:
    """A deterministic value matching a JSON schema (or Gemini's OpenAPI ``Schema``).

    Objects get their ``required`` properties (with ``every``: all of them, as strict
    structured output needs); strings are the property's name (or the first ``enum`` value);
    integers and numbers ``1`` (or their ``minimum``); booleans ``true``; arrays
    ``minItems`` items (at least one). ``anyOf`` / ``oneOf`` take their first branch and local
    ``$ref`` s (``#/$defs/...``, ``#/definitions/...``) are followed.
    """
    return _example(schema, name, schema if isinstance(schema, dict) else {}, every, 0)


def _example(schema: Any, name: str, root: dict[str, Any], every: bool, depth: int) -> Any:
    if not isinstance(schema, dict) or depth > 16:
        return name
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part) if isinstance(target, dict) else None
        return _example(target, name, root, every, depth + 1)
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    for key in ("anyOf", "oneOf", "allOf"):
        branches = schema.get(key, schema.get(key.replace("Of", "_of")))
        if isinstance(branches, list) and branches:
            usable = [b for b in branches if not (isinstance(b, dict) and b.get("type") == "null")]
            return _example((usable or branches)[0], name, root, every, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    kind = kind.lower() if isinstance(kind, str) else None
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
    if kind == "object":
        props = schema.get("properties")
        props = props if isinstance(props, dict) else {}
        required = schema.get("required")
        names = list(props) if every or not isinstance(required, list) else required
        if not every and not isinstance(required, list):
            names = []
        return {
            n: _example(props.get(n, {}), str(n), root, every, depth + 1)
            for n in names
            if isinstance(n, str)
        }
    if kind == "array":
        items = _example(schema.get("items", {}), name, root, every, depth + 1)
        least = schema.get("minItems", schema.get("min_items", 1))
        least = int(least) if isinstance(least, int | str) and str(least).isdigit() else 1
        return [items] * max(1, least)
    if kind in ("integer", "number"):
        low = schema.get("minimum")
        value = low if isinstance(low, int | float) and not isinstance(low, bool) else 1
        return int(value) if kind == "integer" else value
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return name


def structured_reply(schema: Any) -> str:
    """The text of a structured answer: the schema's example, as JSON with spaces after ``,``
    and ``:`` so that the reply's words are its streamed chunks."""
    value = example(schema, "value", every=True)
    return _spaced(value)


def _spaced(value: Any) -> str:
    if isinstance(value, dict):
        inner = ", ".join(f"{_spaced(k)}: {_spaced(v)}" for k, v in value.items())
        return "{" + inner + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_spaced(v) for v in value) + "]"
    return orjson.dumps(value).decode()
