"""The text fields of a ``multipart/form-data`` body, read in place (RFC 7578).

Uploads (transcriptions, translations, image edits and variations) name their model in a form
field, next to the file. `form_fields` walks the parts of a body already in memory with
``bytes.find``: a file part is skipped by looking for the next delimiter, never copied or
decoded; only the values of the few fields asked for are sliced out. It stops as soon as every
field asked for was found.

The scanner is strict where a lenient one could be fooled into reading a field the upstream reads
differently: the boundary must be the one the ``Content-Type`` header declares, every part needs a
``Content-Disposition: form-data`` header with a name, and a field named twice is refused. A
pure leaf module: no ASGI, no I/O.
"""

from __future__ import annotations

from collections.abc import Collection

__all__ = ["MalformedForm", "boundary_of", "form_fields"]

#: Part headers longer than this are refused (browsers and SDKs send a few hundred bytes).
_MAX_HEADERS = 16 << 10
#: Values of the fields read: model names and small numbers; longer ones are refused.
_MAX_VALUE = 4096
_TOKEN_CHARS = frozenset(
    b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=? "
)


class MalformedForm(ValueError):
    """The body is not the ``multipart/form-data`` its ``Content-Type`` says. Safe to show."""


def boundary_of(content_type: bytes) -> bytes:
    """The ``boundary`` parameter of a ``multipart/form-data`` content type.

    Raises `MalformedForm` for another media type or a missing or invalid boundary.
    """
    media, _, params = content_type.partition(b";")
    if media.strip().lower() != b"multipart/form-data":
        raise MalformedForm("The request body must be multipart/form-data.")
    for param in params.split(b";"):
        name, eq, value = param.partition(b"=")
        if eq and name.strip().lower() == b"boundary":
            value = value.strip()
            if len(value) >= 2 and value[:1] == b'"' and value[-1:] == b'"':
                value = value[1:-1]
            # RFC 2046: 1 to 70 characters from a restricted set, not ending in a space.
            if 0 < len(value) <= 70 and not value.endswith(b" ") and _TOKEN_CHARS.issuperset(value):
                return value
            break
    raise MalformedForm("The multipart/form-data content type has no valid boundary.")


def form_fields(body: bytes, boundary: bytes, names: Collection[str]) -> dict[str, str]:
    """The values of the text fields ``names`` in ``body`` (those present), as UTF-8 strings.

    Raises `MalformedForm` when the body does not follow the multipart framing up to the point
    where every name asked for was found (or to its end).
    """
    wanted = set(names)
    found: dict[str, str] = {}
    delimiter = b"--" + boundary
    if body.startswith(delimiter):
        pos = len(delimiter)
    else:
        # A preamble before the first delimiter is allowed (and ignored).
        at = body.find(b"\r\n" + delimiter)
        if at < 0:
            raise MalformedForm("The multipart body does not start with its boundary.")
        pos = at + 2 + len(delimiter)
    next_part = b"\r\n" + delimiter
    while True:
        # After a delimiter: "--" closes the body, CRLF opens a part (transport padding allowed).
        if body.startswith(b"--", pos):
            return found
        pos = _skip_padding(body, pos)
        if not body.startswith(b"\r\n", pos):
            raise MalformedForm("The multipart body is malformed after a boundary.")
        pos += 2
        end_headers = body.find(b"\r\n\r\n", pos, pos + _MAX_HEADERS + 4)
        if end_headers < 0:
            raise MalformedForm("A part of the multipart body has no end to its headers.")
        name, is_file = _disposition(body[pos:end_headers])
        start = end_headers + 4
        end = body.find(next_part, start)
        if end < 0:
            raise MalformedForm("The multipart body ends before its closing boundary.")
        if name in wanted and not is_file:
            if name in found:
                raise MalformedForm(f"The form field {name!r} is given more than once.")
            if end - start > _MAX_VALUE:
                raise MalformedForm(f"The form field {name!r} is too long.")
            try:
                found[name] = body[start:end].decode("utf-8")
            except UnicodeDecodeError:
                raise MalformedForm(f"The form field {name!r} is not UTF-8.") from None
            if len(found) == len(wanted):
                return found
        pos = end + len(next_part)


def _skip_padding(body: bytes, pos: int) -> int:
    while pos < len(body) and body[pos] in b" \t":
        pos += 1
    return pos


def _disposition(headers: bytes) -> tuple[str, bool]:
    """The form field name of a part, and whether the part is a file (has a ``filename``)."""
    for line in headers.split(b"\r\n"):
        field, colon, value = line.partition(b":")
        if not colon:
            raise MalformedForm("A part of the multipart body has a malformed header.")
        if field.strip().lower() != b"content-disposition":
            continue
        kind, _, params = value.partition(b";")
        if kind.strip().lower() != b"form-data":
            break
        name: str | None = None
        is_file = False
        for key, param in _params(params):
            if key == "name":
                name = param
            elif key in ("filename", "filename*"):
                is_file = True
        if name is None:
            break
        return name, is_file
    raise MalformedForm("A part of the multipart body has no Content-Disposition: form-data name.")


def _params(data: bytes) -> list[tuple[str, str]]:
    """``key=value`` / ``key="quoted value"`` parameters of a header, in order."""
    out: list[tuple[str, str]] = []
    i, n = 0, len(data)
    while i < n:
        while i < n and data[i] in b" \t;":
            i += 1
        eq = data.find(b"=", i)
        if eq < 0:
            break
        key = data[i:eq].strip().lower().decode("latin-1")
        i = eq + 1
        while i < n and data[i] in b" \t":
            i += 1
        if i < n and data[i] == 0x22:  # a quoted string; backslash escapes one character
            i += 1
            value = bytearray()
            while i < n and data[i] != 0x22:
                if data[i] == 0x5C and i + 1 < n:
                    i += 1
                value.append(data[i])
                i += 1
            if i >= n:
                raise MalformedForm("A part of the multipart body has an unterminated quote.")
            i += 1
            raw = bytes(value)
        else:
            end = data.find(b";", i)
            end = n if end < 0 else end
            raw = data[i:end].strip()
            i = end
        try:
            out.append((key, raw.decode("utf-8")))
        except UnicodeDecodeError:
            out.append((key, raw.decode("latin-1")))
    return out
