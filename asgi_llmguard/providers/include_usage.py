"""OpenAI's stream usage on request: ``stream_options.include_usage``, asked and taken out again.

A chat completions stream reports its usage only when the request asks for it. When the client did
not, the gateway asks (`with_include_usage`) so it can meter the stream, and takes out again what
asking added (`strip_usage`): the ``"usage": null`` of every chunk and the usage-only chunk, so
the client sees what it would have seen without the gateway. Used by OpenAI's and Azure's
adapters.
"""

from __future__ import annotations

import orjson

from asgi_llmguard.context import RequestFields
from asgi_llmguard.routes import Endpoint

_INCLUDE_USAGE = b'"stream_options":{"include_usage":true}'
#: The operations whose streams carry a usage chunk only when asked.
STRIPPED_OPERATIONS = frozenset({"chat.completions", "completions"})


def ask_stream_usage(endpoint: Endpoint, fields: RequestFields, body: bytes) -> bytes | None:
    """`Provider.ask_stream_usage` of the OpenAI-shaped wire: ``include_usage`` set, unless the
    operation has no usage chunk or the client asked already."""
    if endpoint.operation not in STRIPPED_OPERATIONS:
        return None
    options = fields.stream_options
    if options is not None and options.include_usage:
        return None
    return with_include_usage(body)


def with_include_usage(body: bytes) -> bytes | None:
    """The body with ``stream_options.include_usage`` set, or ``None`` if it is not an object."""
    if b'"stream_options"' not in body:
        start = body.find(b"{")
        if start < 0:
            return None
        rest = body[start + 1 :].lstrip()
        sep = b"" if rest.startswith(b"}") else b","
        return body[: start + 1] + _INCLUDE_USAGE + sep + body[start + 1 :]
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    options = obj.get("stream_options")
    obj["stream_options"] = {
        **(options if isinstance(options, dict) else {}),
        "include_usage": True,
    }
    return orjson.dumps(obj)


_NULL_USAGE = (b',"usage":null', b', "usage": null', b'"usage":null,', b'"usage": null, ')
_USAGE_OBJECTS = (b'"usage":{', b'"usage": {')
_NO_CHOICES = (b'"choices":[]', b'"choices": []')


def strip_usage(data: bytes) -> bytes:
    """Whole events as the upstream framed them, without what asking for usage added: the
    ``"usage": null`` member of every chunk, the usage-only chunk (``choices: []``), and the
    ``usage`` member of a chunk that also carries choices. Everything else is left as it is."""
    data = data.replace(_NULL_USAGE[0], b"")  # the common case: OpenAI's own spelling
    if b'"usage"' not in data:
        return data
    for null in _NULL_USAGE[1:]:
        if null in data:
            data = data.replace(null, b"")
    for mark in _USAGE_OBJECTS:
        at = data.find(mark)
        while at >= 0:
            # The event's line: OpenAI-style chunks are one ``data:`` line each.
            start = max(data.rfind(b"\n", 0, at), data.rfind(b"\r", 0, at)) + 1
            end = at
            while end < len(data) and data[end] not in b"\r\n":
                end += 1
            line = data[start:end]
            if _NO_CHOICES[0] in line or _NO_CHOICES[1] in line:
                # The usage-only chunk: drop it and the blank line that ends it.
                stop = end
                while stop < len(data) and data[stop] in b"\r\n":
                    stop += 1
                data = data[:start] + data[stop:]
                at = data.find(mark, start)
            else:
                stripped = _without_member(line, at - start)
                data = data[:start] + stripped + data[end:]
                at = data.find(mark, start + len(stripped))
    return data


def object_end(data: bytes, start: int) -> int:
    """The index just past the JSON object that opens at ``data[start]``, or -1 if it is cut."""
    depth = 0
    in_string = escaped = False
    for i in range(start, len(data)):
        c = data[i]
        if in_string:
            if escaped:
                escaped = False
            elif c == 0x5C:  # backslash
                escaped = True
            elif c == 0x22:  # quote
                in_string = False
        elif c == 0x22:
            in_string = True
        elif c == 0x7B:
            depth += 1
        elif c == 0x7D:
            depth -= 1
            if depth == 0:
                return i + 1
    return -1


def _without_member(line: bytes, key: int) -> bytes:
    """``line`` without the JSON member whose key starts at ``key`` (and its comma)."""
    i = line.find(b"{", key)
    if i < 0:
        return line
    end = object_end(line, i)
    if end < 0:
        return line
    before = line[:key].rstrip()
    if before.endswith(b","):
        return before[:-1] + line[end:]
    after = line[end:].lstrip()
    if after.startswith(b","):
        return before + after[1:].lstrip()
    return line
