"""A malformed or missing Host header is refused with 400 (RFC 9112 section 3.2)."""

import json
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asgi_llmguard.middleware.classify import ClassifyMiddleware, _host_syntax, _valid_host
from asgi_llmguard.testing import serve


async def _ok(scope, receive, send):
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok"})


def _request(port: int, head: bytes) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.partition(b"\r\n\r\n")[2]


@pytest.fixture(params=["h11", "httptools"], scope="module")
def port(request):
    with serve(ClassifyMiddleware(_ok), http=request.param) as server:
        yield server.port


@pytest.mark.parametrize(
    "host", [b"a/b", b"a?b", b"a#b", b"a b:1", b"a@b", b"a:b:c", b"[::1", b"a\\b", b"a<b>", b"a:8x"]
)
def test_malformed_host_is_refused(port, host):
    status, body = _request(
        port, b"GET /v1/models HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n"
    )
    assert status == 400
    if body.startswith(b"{"):  # refused by the gateway, not by the HTTP server
        assert json.loads(body)["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "host", [b"localhost", b"127.0.0.1:8000", b"[::1]:443", b"api.example.com", b"a%41b.c", b"x:"]
)
def test_wellformed_host_is_served(port, host):
    status, body = _request(
        port, b"GET /v1/models HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n"
    )
    assert (status, body) == (200, b"ok")


@pytest.mark.parametrize("second", [b"localhost", b"other.example.com:8080"])
def test_two_host_headers_are_refused(port, second):
    status, body = _request(
        port,
        b"GET /v1/models HTTP/1.1\r\nHost: localhost\r\nHost: "
        + second
        + b"\r\nConnection: close\r\n\r\n",
    )
    assert status == 400
    if body.startswith(b"{"):  # refused by the gateway, not by the HTTP server
        assert "more than one Host" in json.loads(body)["error"]["message"]


def test_missing_host_on_http11_is_refused_in_the_callers_dialect(port):
    status, body = _request(port, b"POST /v1/messages HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert status == 400
    if body.startswith(b"{"):  # refused by the gateway, not by the HTTP server
        assert json.loads(body)["error"]["type"] == "invalid_request_error"
        assert json.loads(body)["type"] == "error"


def test_missing_host_on_http10_is_served(port):
    status, body = _request(port, b"GET /v1/models HTTP/1.0\r\n\r\n")
    assert (status, body) == (200, b"ok")


@given(st.binary(max_size=12) | st.text(alphabet="a1.-:[]%/?#@ ", max_size=12).map(str.encode))
def test_the_fast_check_agrees_with_the_rfc_3986_grammar(host):
    assert _valid_host(host) == (_host_syntax(host) is not None)
