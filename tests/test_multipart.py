"""The multipart scanner against bodies the real encoders (httpx, used by the openai SDK) make,
and against malformed ones."""

from __future__ import annotations

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asgi_llmguard.multipart import MalformedForm, boundary_of, form_fields

NAMES = ("model", "n", "stream")


def encode(data: dict[str, str], files: dict[str, bytes]) -> tuple[bytes, bytes]:
    request = httpx.Request(
        "POST",
        "http://x/",
        data=data,
        files={name: (f"{name}.bin", content) for name, content in files.items()},
    )
    return request.headers["content-type"].encode(), request.read()


def fields(content_type: bytes, body: bytes) -> dict[str, str]:
    return form_fields(body, boundary_of(content_type), NAMES)


def test_fields_around_a_file_that_contains_boundary_lookalikes():
    file = b'--\r\n--notit\r\nContent-Disposition: form-data; name="model"\r\n\r\nevil\r\n'
    content_type, body = encode({"prompt": "hi", "n": "2", "model": "dall-e-2"}, {"image": file})
    assert fields(content_type, body) == {"n": "2", "model": "dall-e-2"}


def test_a_field_after_the_file_is_found():
    boundary = b"b0undary"
    body = (
        b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="a.mp3"\r\n'
        b"Content-Type: audio/mpeg\r\n\r\n" + b"\x00\xff" * 1000 + b"\r\n"
        b'--b0undary\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
        b"--b0undary--\r\n"
    )
    assert form_fields(body, boundary, NAMES) == {"model": "whisper-1"}


def test_a_file_named_like_a_field_is_not_the_field():
    body = (
        b'--b\r\nContent-Disposition: form-data; name="model"; filename="m.txt"\r\n\r\n'
        b"gpt-4o\r\n--b--\r\n"
    )
    assert form_fields(body, b"b", NAMES) == {}


def test_quoted_boundary_preamble_and_escaped_names():
    content_type = b'multipart/form-data; charset=utf-8; boundary="a b:c"'
    body = (
        b'preamble\r\n--a b:c\r\nContent-Disposition: form-data; name="mo\\del"\r\n\r\n'
        b"whisper-1\r\n--a b:c--"
    )
    assert fields(content_type, body) == {"model": "whisper-1"}


def test_scanning_stops_once_every_field_is_found():
    content_type, body = encode({"model": "m", "n": "1", "stream": "false"}, {"file": b"a"})
    delimiter = b"\r\n--" + boundary_of(content_type)
    cut = body[: body.index(b"false" + delimiter) + len(b"false" + delimiter)]
    # The rest of the body (unread) need not even be well formed.
    assert fields(content_type, cut + b"garbage") == {"model": "m", "n": "1", "stream": "false"}


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        (b"application/json", b"{}"),
        (b"multipart/form-data", b"--x\r\n"),
        (b"multipart/form-data; boundary=", b"--\r\n"),
        (b"multipart/form-data; boundary=" + b"x" * 71, b""),
        (b"multipart/form-data; boundary=a\x00b", b""),
    ],
)
def test_bad_content_types(content_type, body):
    with pytest.raises(MalformedForm):
        fields(content_type, body)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"no boundary at all",
        b'--x\r\nContent-Disposition: form-data; name="model"\r\n\r\nm',  # no closing
        b"--x\r\nno colon\r\n\r\nm\r\n--x--",
        b"--x\r\nContent-Type: text/plain\r\n\r\nm\r\n--x--",  # no disposition
        b'--x\r\nContent-Disposition: attachment; name="model"\r\n\r\nm\r\n--x--',
        b"--x\r\nContent-Disposition: form-data\r\n\r\nm\r\n--x--",  # no name
        b'--x\r\nContent-Disposition: form-data; name="model\r\n\r\nm\r\n--x--',
        b'--xjunk\r\nContent-Disposition: form-data; name="model"\r\n\r\nm\r\n--x--',
        b'--x\r\nContent-Disposition: form-data; name="model"\r\n\r\n\xff\r\n--x--',
        b'--x\r\nContent-Disposition: form-data; name="model"\r\n' + b"a" * 20_000,
        (
            b'--x\r\nContent-Disposition: form-data; name="model"\r\n\r\na\r\n'
            b'--x\r\nContent-Disposition: form-data; name="model"\r\n\r\nb\r\n--x--'
        ),
        b'--x\r\nContent-Disposition: form-data; name="model"\r\n\r\n' + b"m" * 5000 + b"\r\n--x--",
    ],
)
def test_malformed_bodies(body):
    with pytest.raises(MalformedForm):
        form_fields(body, b"x", NAMES)


_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r"), max_size=40)


@settings(max_examples=200, deadline=None)
@given(
    model=_text,
    n=st.one_of(st.none(), _text),
    other=st.dictionaries(st.sampled_from(["prompt", "size", "user"]), _text),
    files=st.dictionaries(
        st.sampled_from(["file", "image", "mask"]), st.binary(max_size=300), min_size=1
    ),
)
def test_round_trip_through_httpx(model, n, other, files):
    data = {**other, "model": model}
    if n is not None:
        data["n"] = n
    content_type, body = encode(data, files)
    expected = {"model": model} | ({} if n is None else {"n": n})
    assert fields(content_type, body) == expected
