"""SizeLimitMiddleware over real sockets (S7, S8): 413 from the headers or mid-body, 408 for slow
bodies, nothing sent upstream; plus in-process checks of the edge cases.

The gateway under test is ClassifyMiddleware -> SizeLimitMiddleware -> (test key setter) ->
ForwardingApp, served by uvicorn on loopback (both HTTP parsers), in front of the fake provider.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import anthropic
import httpx
import openai
import orjson
import pytest

from asgi_llmguard import ClassifyMiddleware, ForwardingApp, Upstream, get_context
from asgi_llmguard.errors import ConfigurationError
from asgi_llmguard.middleware.size_limit import (
    DEFAULT_MAX_BODY_BYTES,
    BodyTooLarge,
    SizeLimitMiddleware,
)
from asgi_llmguard.policy import KeyPolicy
from asgi_llmguard.testing import FakeProvider, RunningServer, serve
from asgi_llmguard.types import ASGIApp, Message, Receive, Scope, Send

UPSTREAM_KEY = "sk-upstream-size-limit-0001"
LIMIT = 1000
EMBED_LIMIT = 300
TIMEOUT = 0.5

# Marked here, not only by the conftest hook: anyio's plugin otherwise replaces the parameters
# of parametrized async tests with its backend parameter.
pytestmark = pytest.mark.anyio


class SetKey:
    """Plays the auth layer: ``x-test-max-body: N`` gives the request a key with that limit."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for name, value in scope["headers"]:
                if name == b"x-test-max-body":
                    get_context(scope).key = KeyPolicy(key_id="k1", max_body_bytes=int(value))
        await self.app(scope, receive, send)


def _stack(upstream_url: str, **limits: object) -> ASGIApp:
    forward = ForwardingApp(
        [
            Upstream("openai", f"{upstream_url}/v1", api_key=UPSTREAM_KEY),
            Upstream("anthropic", upstream_url, api_key=UPSTREAM_KEY),
        ]
    )
    return ClassifyMiddleware(SizeLimitMiddleware(SetKey(forward), **limits))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def fake() -> FakeProvider:
    return FakeProvider(api_key=UPSTREAM_KEY)


@pytest.fixture(scope="module")
def fake_server(fake: FakeProvider) -> Iterator[RunningServer]:
    with serve(fake) as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh_fake(fake: FakeProvider) -> None:
    fake.reset()


@pytest.fixture(scope="module", params=["httptools", "h11"])
def gateway(request: pytest.FixtureRequest, fake_server: RunningServer) -> Iterator[RunningServer]:
    app = _stack(
        fake_server.url,
        max_body_bytes=LIMIT,
        per_route={"embeddings": EMBED_LIMIT},
        body_timeout=TIMEOUT,
    )
    with serve(app, http=request.param) as server:
        yield server


def _chat_body(size: int) -> bytes:
    """A valid chat request of exactly ``size`` bytes."""
    empty = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":""}]}'
    assert size >= len(empty)
    pad = size - len(empty)
    return empty.replace(b'"content":""', b'"content":"' + b"a" * pad + b'"')


def _head(path: str, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: gateway.test", "Content-Type: application/json"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(65536)
        assert more, f"connection closed before a response: {data!r}"
        data += more
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        more = sock.recv(65536)
        assert more
        body += more
    return status, headers, body[:length]


def _closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except ConnectionResetError:
        return True


def _connect(server: RunningServer) -> socket.socket:
    return socket.create_connection((server.host, server.port), timeout=5)


# -- S7: too large -------------------------------------------------------------------------------


def test_honest_content_length_over_the_limit_is_refused_from_the_headers(gateway, fake):
    with _connect(gateway) as sock:
        sock.sendall(_head("/v1/chat/completions", {"Content-Length": str(LIMIT + 1)}))
        start = time.monotonic()
        status, headers, body = _read_response(sock)  # no body byte was ever sent
        elapsed = time.monotonic() - start
        assert _closed_by_server(sock)
    assert status == 413
    assert elapsed < TIMEOUT / 2  # answered at once, not after waiting for the body
    assert headers["connection"] == "close"
    error = orjson.loads(body)["error"]
    assert error["type"] == "invalid_request_error"
    assert str(LIMIT) in error["message"]
    assert len(fake.requests) == 0


def test_a_body_of_exactly_the_limit_is_forwarded(gateway, fake):
    body = _chat_body(LIMIT)
    resp = httpx.post(f"{gateway.url}/v1/chat/completions", content=body)
    assert resp.status_code == 200, resp.text
    assert fake.requests[-1].body == body
    resp = httpx.post(f"{gateway.url}/v1/chat/completions", content=_chat_body(LIMIT + 1))
    assert resp.status_code == 413
    assert len(fake.requests) == 1


def test_chunked_body_over_the_limit_is_refused_before_the_client_has_sent_it(gateway, fake):
    body = _chat_body(LIMIT * 3)
    pieces = [body[i : i + 400] for i in range(0, len(body), 400)]
    with _connect(gateway) as sock:
        sock.sendall(_head("/v1/chat/completions", {"Transfer-Encoding": "chunked"}))
        sent = 0
        for piece in pieces[:3]:  # 1200 bytes: past the limit
            sock.sendall(_chunk(piece))
            sent += len(piece)
        status, headers, reply = _read_response(sock)
        unsent = len(body) - sent
        assert _closed_by_server(sock)
    assert status == 413
    assert unsent > LIMIT  # the answer came while most of the body was still with the client
    assert headers["connection"] == "close"
    assert orjson.loads(reply)["error"]["type"] == "invalid_request_error"
    assert len(fake.requests) == 0


def test_chunked_body_under_the_limit_is_forwarded_whole(gateway, fake):
    body = _chat_body(LIMIT - 100)
    with _connect(gateway) as sock:
        sock.sendall(_head("/v1/chat/completions", {"Transfer-Encoding": "chunked"}))
        for i in range(0, len(body), 300):
            sock.sendall(_chunk(body[i : i + 300]))
        sock.sendall(b"0\r\n\r\n")
        status, _, _ = _read_response(sock)
    assert status == 200
    assert fake.requests[-1].body == body


def test_lying_content_length_smaller_than_the_body(gateway, fake):
    # The server's framing decides: the app gets exactly Content-Length bytes, and what follows
    # is parsed as the next request on the connection. Here that is garbage: h11 answers the
    # first request, then drops the connection on the garbage; httptools parses the whole
    # segment at once, answers 400 and closes. Nothing past Content-Length reaches the layers.
    body = _chat_body(200)
    extra = b"GARBAGE " * LIMIT + b"\r\n\r\n"
    with _connect(gateway) as sock:
        sock.sendall(_head("/v1/chat/completions", {"Content-Length": str(len(body))}))
        sock.sendall(body + extra)
        statuses = []
        while not _closed_by_server(sock):
            statuses.append(_read_response(sock)[0])
    assert statuses in ([200], [400], [200, 400])
    time.sleep(0.1)
    assert len(fake.requests) <= 1
    assert all(r.body == body for r in fake.requests)


def test_lying_content_length_larger_than_the_body_times_out(gateway, fake):
    with _connect(gateway) as sock:
        sock.sendall(_head("/v1/chat/completions", {"Content-Length": str(LIMIT)}))
        sock.sendall(_chat_body(200)[:150])  # then nothing
        start = time.monotonic()
        status, headers, body = _read_response(sock)
        elapsed = time.monotonic() - start
        assert _closed_by_server(sock)
    assert status == 408
    assert TIMEOUT * 0.8 < elapsed < TIMEOUT + 0.5
    assert headers["connection"] == "close"
    assert orjson.loads(body)["error"]["type"] == "timeout_error"
    assert len(fake.requests) == 0


def test_per_route_limit(gateway, fake):
    embed = orjson.dumps({"model": "text-embedding-3-small", "input": "w " * 200})
    assert EMBED_LIMIT < len(embed) < LIMIT
    resp = httpx.post(f"{gateway.url}/v1/embeddings", content=embed)
    assert resp.status_code == 413
    assert str(EMBED_LIMIT) in resp.json()["error"]["message"]
    resp = httpx.post(f"{gateway.url}/v1/chat/completions", content=_chat_body(len(embed)))
    assert resp.status_code == 200
    assert len(fake.requests) == 1


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_key_can_lower_the_limit(gateway, fake, framing):
    body = _chat_body(300)
    headers = {"x-test-max-body": "200"}
    if framing == "chunked":

        def gen() -> Iterator[bytes]:
            yield body[:150]
            yield body[150:]

        resp = httpx.post(f"{gateway.url}/v1/chat/completions", content=gen(), headers=headers)
    else:
        resp = httpx.post(f"{gateway.url}/v1/chat/completions", content=body, headers=headers)
    assert resp.status_code == 413
    assert "this key's limit of 200 bytes" in resp.json()["error"]["message"]
    ok = httpx.post(f"{gateway.url}/v1/chat/completions", content=_chat_body(199), headers=headers)
    assert ok.status_code == 200
    assert len(fake.requests) == 1


def test_a_key_cannot_raise_the_limit(gateway, fake):
    resp = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        content=_chat_body(LIMIT + 1),
        headers={"x-test-max-body": str(LIMIT * 10)},
    )
    assert resp.status_code == 413
    assert "the limit for this endpoint" in resp.json()["error"]["message"]
    assert len(fake.requests) == 0


def test_openai_sdk_gets_an_api_status_error_413_in_openai_shape(gateway, fake):
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="client-key", max_retries=0)
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x" * LIMIT}]
        )
    assert info.value.status_code == 413
    assert info.value.type == "invalid_request_error"
    assert set(info.value.response.json()["error"]) == {"message", "type", "param", "code"}
    assert len(fake.requests) == 0


def test_anthropic_sdk_gets_the_anthropic_error_shape(gateway, fake):
    client = anthropic.Anthropic(base_url=gateway.url, api_key="client-key", max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as info:
        client.messages.create(
            model="claude-sonnet-4-6",
            max_tokens=10,
            messages=[{"role": "user", "content": "x" * LIMIT}],
        )
    assert info.value.status_code == 413
    payload = info.value.response.json()
    assert payload["type"] == "error"
    assert payload["error"]["type"] == "request_too_large"
    assert len(fake.requests) == 0


def test_a_50_mb_chunked_upload_meets_the_default_limit_and_the_loop_stays_responsive(
    fake_server, fake
):
    # S9's "50 MB JSON" with the default 32 MiB limit: refused once 32 MiB have arrived, without
    # the rest being read; meanwhile other requests are served as usual.
    total = 50 * 1024 * 1024
    piece = _chunk(b"x" * 65536)
    out: dict = {}

    def upload(server: RunningServer) -> None:
        with _connect(server) as sock:
            sock.sendall(_head("/v1/chat/completions", {"Transfer-Encoding": "chunked"}))
            sent = 0  # bytes of body handed to the socket (all of them framed correctly)
            view = memoryview(piece)
            sock.setblocking(False)
            while sent < total:
                try:
                    if sock.recv(1, socket.MSG_PEEK):
                        break  # the answer is in
                except BlockingIOError:
                    pass
                try:
                    view = view[sock.send(view) :]
                except BlockingIOError:
                    time.sleep(0.001)
                    continue
                except OSError:
                    break
                if not view:
                    view = memoryview(piece)
                    sent += 65536
            sock.setblocking(True)
            sock.settimeout(5)
            out["sent"] = sent
            out["status"] = _read_response(sock)[0]

    with serve(_stack(fake_server.url)) as server:
        thread = threading.Thread(target=upload, args=(server,))
        thread.start()
        latencies = []
        while thread.is_alive():
            start = time.monotonic()
            resp = httpx.post(f"{server.url}/v1/chat/completions", content=_chat_body(200))
            latencies.append(time.monotonic() - start)
            assert resp.status_code == 200
        thread.join()
    assert out["status"] == 413
    assert DEFAULT_MAX_BODY_BYTES <= out["sent"] < total  # refused before it was all sent
    assert max(latencies) < 0.5
    assert all(len(r.body) < 1000 for r in fake.requests)


def test_default_limit_is_32_mib():
    assert DEFAULT_MAX_BODY_BYTES == 32 * 1024 * 1024
    assert SizeLimitMiddleware(_noop).max_body_bytes == DEFAULT_MAX_BODY_BYTES


# -- S8: slow bodies -----------------------------------------------------------------------------


def _trickle(server: RunningServer, head: bytes, data: bytes, delay: float, out: dict) -> None:
    """Send ``data`` one byte every ``delay`` seconds, then read the answer (in a thread)."""
    with _connect(server) as sock:
        sock.sendall(head)
        start = time.monotonic()
        sock.settimeout(delay)
        for byte in data:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            try:
                if sock.recv(1, socket.MSG_PEEK):
                    break  # an answer came in: stop sending
            except TimeoutError:
                pass
        sock.settimeout(5)
        out["status"], out["headers"], out["body"] = _read_response(sock)
        out["elapsed"] = time.monotonic() - start
        out["sent"] = data
        out["closed"] = _closed_by_server(sock)


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_trickled_body_gets_408_and_other_requests_are_unaffected(gateway, fake, framing):
    body = _chat_body(100)
    if framing == "chunked":
        head = _head("/v1/chat/completions", {"Transfer-Encoding": "chunked"})
        data = b"".join(_chunk(body[i : i + 1]) for i in range(len(body)))
    else:
        head = _head("/v1/chat/completions", {"Content-Length": str(len(body))})
        data = body
    out: dict = {}
    thread = threading.Thread(target=_trickle, args=(gateway, head, data, 0.1, out))
    thread.start()
    time.sleep(0.15)
    start = time.monotonic()
    ok = httpx.post(f"{gateway.url}/v1/chat/completions", content=_chat_body(200))
    normal_latency = time.monotonic() - start
    thread.join(5)
    assert ok.status_code == 200
    assert normal_latency < 0.3
    assert out["status"] == 408
    assert TIMEOUT * 0.8 < out["elapsed"] < TIMEOUT + 0.5
    assert out["headers"]["connection"] == "close"
    assert out["closed"]
    assert len(fake.requests) == 1  # only the normal request reached the upstream


def test_min_body_rate(fake_server, fake):
    app = _stack(
        fake_server.url,
        max_body_bytes=LIMIT,
        body_timeout=None,
        min_body_rate=200,
        body_rate_grace=0.3,
    )
    with serve(app) as server:
        body = _chat_body(200)
        out: dict = {}
        head = _head("/v1/chat/completions", {"Content-Length": str(len(body))})
        _trickle(server, head, body, 0.05, out)  # 20 bytes/s
        fast = httpx.post(f"{server.url}/v1/chat/completions", content=body)
    assert out["status"] == 408
    assert "too slowly" in orjson.loads(out["body"])["error"]["message"]
    assert 0.25 < out["elapsed"] < 0.8
    assert fast.status_code == 200
    assert len(fake.requests) == 1


# -- in process: edge cases ----------------------------------------------------------------------


async def _noop(scope: Scope, receive: Receive, send: Send) -> None:
    return None


class _Recorder:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start" and any(
            m["type"] == "http.response.start" for m in self.messages
        ):
            raise RuntimeError("Unexpected ASGI message 'http.response.start'")  # as uvicorn
        self.messages.append(message)

    @property
    def status(self) -> int:
        return int(self.messages[0]["status"])

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages[1:])


def _scope(path: str = "/v1/chat/completions", method: str = "POST", headers=()) -> Scope:
    return {
        "type": "http",
        "http_version": "1.1",
        "method": method,
        "path": path,
        "root_path": "",
        "query_string": b"",
        "headers": list(headers),
    }


def _receiver(*chunks: bytes, stall: bool = False) -> Receive:
    queue = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1 or stall}
        for i, c in enumerate(chunks)
    ]

    async def receive() -> Message:
        if queue:
            return queue.pop(0)
        await asyncio.sleep(3600)
        raise AssertionError

    return receive


async def _read_all(scope: Scope, receive: Receive, send: Send) -> None:
    from asgi_llmguard.context import read_body

    body = await read_body(get_context(scope), receive)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"%d" % len(body)})


@pytest.mark.parametrize(
    "lengths",
    [[b"12x"], [b"-1"], [b""], [b"10", b"11"], [b"1 0"]],
    ids=["letters", "negative", "empty", "disagreeing", "inner-space"],
)
async def test_invalid_content_length_is_400(lengths):
    app = SizeLimitMiddleware(_read_all, max_body_bytes=100)
    send = _Recorder()
    headers = [(b"content-length", v) for v in lengths]
    await app(_scope(headers=headers), _receiver(b"x" * 10), send)
    assert send.status == 400
    assert orjson.loads(send.body)["error"]["message"] == "Invalid Content-Length header."


async def test_repeated_equal_content_lengths_are_accepted():
    app = SizeLimitMiddleware(_read_all, max_body_bytes=100)
    send = _Recorder()
    headers = [(b"content-length", b"10"), (b"content-length", b"10")]
    await app(_scope(headers=headers), _receiver(b"x" * 10), send)
    assert send.status == 200


async def test_requests_without_a_body_and_other_scopes_pass_through_untouched():
    seen = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append((receive, send))

    mw = SizeLimitMiddleware(app)
    receive, send = _receiver(b""), _Recorder()
    await mw(_scope("/v1/models", "GET"), receive, send)
    await mw(_scope(headers=[(b"content-length", b"0")]), receive, send)
    await mw({"type": "websocket", "path": "/"}, receive, send)
    await mw({"type": "lifespan"}, receive, send)
    assert all(r is receive and s is send for r, s in seen)
    assert len(seen) == 4


async def test_in_process_transport_without_framing_is_still_counted():
    # httpx.ASGITransport and friends do not enforce Content-Length: the count does.
    app = SizeLimitMiddleware(_read_all, max_body_bytes=100)
    send = _Recorder()
    await app(_scope(headers=[(b"content-length", b"50")]), _receiver(b"x" * 60, b"y" * 60), send)
    assert send.status == 413


async def test_a_layer_that_swallows_the_error_still_yields_413():
    async def swallow(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            while (await receive()).get("more_body"):
                pass
        except Exception:
            return

    send = _Recorder()
    await SizeLimitMiddleware(swallow, max_body_bytes=100)(
        _scope(headers=[(b"transfer-encoding", b"chunked")]), _receiver(b"x" * 80, b"x" * 80), send
    )
    assert send.status == 413


async def test_an_app_that_answers_the_error_itself_does_not_override_the_413():
    # FastAPI turns any error while reading the body into its own 400: the 413 went out first.
    async def framework(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            while (await receive()).get("more_body"):
                pass
        except Exception:
            await send({"type": "http.response.start", "status": 400, "headers": []})
            await send({"type": "http.response.body", "body": b"parse error"})

    send = _Recorder()
    await SizeLimitMiddleware(framework, max_body_bytes=100)(
        _scope(headers=[(b"transfer-encoding", b"chunked")]), _receiver(b"x" * 80, b"x" * 80), send
    )
    assert send.status == 413
    assert [m["type"] for m in send.messages] == ["http.response.start", "http.response.body"]


def test_fastapi_app_with_the_middleware_alone(fake_server):
    from fastapi import FastAPI

    app = FastAPI()
    app.add_middleware(SizeLimitMiddleware, max_body_bytes=LIMIT, body_timeout=TIMEOUT)

    @app.post("/v1/chat/completions")
    async def chat(body: dict) -> dict:
        return {"size": len(orjson.dumps(body))}

    def gen() -> Iterator[bytes]:
        yield b'{"pad": "' + b"x" * 600
        yield b"x" * 600 + b'"}'

    with serve(app) as server:
        ok = httpx.post(f"{server.url}/v1/chat/completions", json={"a": 1})
        honest = httpx.post(f"{server.url}/v1/chat/completions", content=_chat_body(LIMIT + 1))
        chunked = httpx.post(f"{server.url}/v1/chat/completions", content=gen())
        models = httpx.get(f"{server.url}/v1/models")
    assert ok.status_code == 200
    assert honest.status_code == chunked.status_code == 413
    assert chunked.json()["error"]["type"] == "invalid_request_error"
    assert models.status_code == 404  # FastAPI's own answer: no body, passed through


async def test_reading_again_after_a_refusal_raises_again_without_reading():
    reads = []

    async def upstream() -> Message:
        reads.append(1)
        return {"type": "http.request", "body": b"x" * 80, "more_body": True}

    async def read_to_the_end(receive: Receive) -> None:
        while True:
            await receive()

    async def stubborn(scope: Scope, receive: Receive, send: Send) -> None:
        for _ in range(3):
            with pytest.raises(BodyTooLarge):
                await read_to_the_end(receive)

    send = _Recorder()
    await SizeLimitMiddleware(stubborn, max_body_bytes=100)(
        _scope(headers=[(b"transfer-encoding", b"chunked")]), upstream, send
    )
    assert len(reads) == 2
    assert send.status == 413


async def test_refusal_after_the_response_started_does_not_send_a_second_response():
    async def early(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        while (await receive()).get("more_body"):
            pass

    send = _Recorder()
    await SizeLimitMiddleware(early, max_body_bytes=100)(
        _scope(headers=[(b"transfer-encoding", b"chunked")]), _receiver(b"x" * 80, b"x" * 80), send
    )
    assert [m["type"] for m in send.messages] == ["http.response.start"]


async def test_key_limit_is_read_when_the_key_appears_and_errors_use_the_route_shape():
    async def auth_then_read(scope: Scope, receive: Receive, send: Send) -> None:
        get_context(scope).key = KeyPolicy(key_id="k", max_body_bytes=10)
        await _read_all(scope, receive, send)

    send = _Recorder()
    mw = SizeLimitMiddleware(auth_then_read, max_body_bytes=100)
    await mw(
        _scope("/v1/messages", headers=[(b"content-length", b"20")]), _receiver(b"x" * 20), send
    )
    assert send.status == 413
    assert orjson.loads(send.body)["error"]["type"] == "request_too_large"


async def test_unknown_route_uses_the_default_limit_and_openai_shape():
    send = _Recorder()
    await SizeLimitMiddleware(_read_all, max_body_bytes=5)(
        _scope("/nowhere", headers=[(b"content-length", b"6")]), _receiver(b"x" * 6), send
    )
    assert send.status == 413
    assert "error" in orjson.loads(send.body)


async def test_nothing_is_left_watched_when_the_app_does_not_read_the_body():
    async def refuse_first(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()  # starts the deadline, reads one chunk of a longer body
        await send({"type": "http.response.start", "status": 401, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    mw = SizeLimitMiddleware(refuse_first, body_timeout=0.1)
    send = _Recorder()
    await mw(
        _scope(headers=[(b"transfer-encoding", b"chunked")]), _receiver(b"x", stall=True), send
    )
    assert send.status == 401
    watchdog = mw.watchdog()
    assert not watchdog.guards
    await asyncio.sleep(0.05)  # the watchdog's tick (0.01 s) stops once nothing is watched
    assert watchdog.handle is None


async def test_a_deadline_cancels_only_the_wait_not_an_outer_cancellation():
    # The body timeout must not swallow a real cancellation of the request's task.
    started = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        started.set()
        await _read_all(scope, receive, send)

    mw = SizeLimitMiddleware(app, body_timeout=10)
    task = asyncio.create_task(
        mw(_scope(headers=[(b"content-length", b"5")]), _receiver(b"x", stall=True), _Recorder())
    )
    await started.wait()
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_timeout_leaves_the_task_uncancelled():
    # The watchdog's cancellation is taken back: code after the 408 (other layers' cleanup,
    # their own asyncio.timeout blocks) runs in a task that is not marked as being cancelled.
    seen: list[int] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await _read_all(scope, receive, send)
        finally:
            task = asyncio.current_task()
            assert task is not None
            seen.append(task.cancelling())
            await asyncio.sleep(0)  # would raise CancelledError if a cancellation were pending

    send = _Recorder()
    mw = SizeLimitMiddleware(app, body_timeout=0.05)
    await mw(_scope(headers=[(b"content-length", b"5")]), _receiver(b"x", stall=True), send)
    assert send.status == 408
    assert seen == [0]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_body_bytes": -1},
        {"max_body_bytes": 1.5},
        {"per_route": {"chat.completions": -5}},
        {"per_route": {"": 10}},
        {"body_timeout": 0},
        {"body_timeout": float("inf")},
        {"min_body_rate": -1},
        {"body_rate_grace": -1},
    ],
    ids=str,
)
def test_bad_configuration_is_refused(kwargs):
    with pytest.raises(ConfigurationError):
        SizeLimitMiddleware(_noop, **kwargs)
