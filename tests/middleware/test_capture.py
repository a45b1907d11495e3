"""CaptureMiddleware over real sockets and in process: what is captured, what the client gets,
redaction in the written files, disconnects, zero cost when off, and the bounded queue.

The gateway under test is ClassifyMiddleware -> (test key setter) -> CaptureMiddleware ->
ForwardingApp, served by uvicorn on loopback, in front of a deterministic upstream (fixed bytes,
so that responses with and without capture can be compared byte for byte).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec
import openai
import orjson
import pytest

from asgi_llmguard import ClassifyMiddleware, ForwardingApp, Upstream, get_context, read_body
from asgi_llmguard.capture import (
    REDACTED,
    CaptureRecord,
    JSONLCaptureSink,
    SQLiteCaptureSink,
)
from asgi_llmguard.errors import ConfigurationError
from asgi_llmguard.middleware.capture import CaptureMiddleware
from asgi_llmguard.policy import KeyPolicy
from asgi_llmguard.testing import RunningServer, serve, wait_until
from asgi_llmguard.types import ASGIApp, Message, Receive, Scope, Send

pytestmark = pytest.mark.anyio

CLIENT_KEY = "sk-client-virtual-key-7f3a9c2e1d"
AZURE_STYLE_KEY = "0123456789abcdef0123456789abcdef"
BODY_SECRET = "body-secret-value-5b8e1f"
COOKIE_SECRET = "session=cookie-secret-4c2d"

JSON_REPLY = (
    b'{"id":"chatcmpl-fixed","object":"chat.completion","created":1700000000,'
    b'"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant",'
    b'"content":"Hello there"},"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}'
)


def _event(i: int) -> bytes:
    return (
        b'data: {"id":"chatcmpl-fixed","object":"chat.completion.chunk","created":1700000000,'
        b'"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":"w%d "}}]}\n\n' % i
    )


class FixedUpstream:
    """An OpenAI-style upstream answering fixed bytes: JSON, or ``x-events`` SSE events
    (``x-delay`` seconds apart) when the request asks for a stream."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = dict(scope["headers"])
        if b'"stream":true' not in body.replace(b" ", b""):
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": JSON_REPLY})
            return
        events = int(headers.get(b"x-events", b"5"))
        delay = float(headers.get(b"x-delay", b"0"))
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        for i in range(events):
            if delay:
                await asyncio.sleep(delay)
            await send({"type": "http.response.body", "body": _event(i), "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})


class SetKey:
    """Plays the auth layer (``x-test-capture: 1`` gives a key with ``capture=True``) and, with
    ``x-test-read-body``, the usage layer (reads the body into the context first)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            ctx = get_context(scope)
            if headers.get(b"x-test-capture") == b"1":
                ctx.key = KeyPolicy(key_id="k1", capture=True)
            elif b"x-test-capture" in headers:
                ctx.key = KeyPolicy(key_id="k2")
            if b"x-test-read-body" in headers:
                await read_body(ctx, receive)
        await self.app(scope, receive, send)


@pytest.fixture(scope="module")
def upstream() -> Iterator[RunningServer]:
    with serve(FixedUpstream()) as server:
        yield server


def _gateway(upstream: RunningServer, sink, **kwargs) -> tuple[ASGIApp, CaptureMiddleware]:
    forward = ForwardingApp([Upstream("openai", f"{upstream.url}/v1", api_key="sk-upstream-x1")])
    capture = CaptureMiddleware(forward, sink=sink, **kwargs)
    return ClassifyMiddleware(SetKey(capture)), capture


def _records(path: Path) -> list[CaptureRecord]:
    if not path.exists():
        return []
    return [
        msgspec.json.decode(line, type=CaptureRecord) for line in path.read_bytes().splitlines()
    ]


CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def _post(server: RunningServer, body: dict, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/chat/completions", content=orjson.dumps(body), headers=headers
    )


# -- what is captured ----------------------------------------------------------------------------


@pytest.mark.parametrize("body_read_above", [False, True], ids=["tee-receive", "ctx-body"])
def test_a_capturing_key_gets_one_record_per_exchange_streamed_or_not(
    upstream, tmp_path, body_read_above
):
    path = tmp_path / "capture.jsonl"
    app, capture = _gateway(upstream, JSONLCaptureSink(path))
    headers = {"x-test-capture": "1"}
    if body_read_above:
        headers["x-test-read-body"] = "1"
    with serve(app) as server:
        plain = _post(server, CHAT, headers)
        streamed = _post(server, {**CHAT, "stream": True}, headers)
        other = _post(server, CHAT, {"x-test-capture": "0"})  # a key without capture
        anonymous = _post(server, CHAT, {})
    assert [r.status_code for r in (plain, streamed, other, anonymous)] == [200] * 4
    records = _records(path)
    assert len(records) == 2
    assert capture.stats.written == 2
    assert capture.stats.dropped == 0
    first, second = records
    assert first.request_id != second.request_id
    for record, response, sent in (
        (first, plain, CHAT),
        (second, streamed, {**CHAT, "stream": True}),
    ):
        assert record.key_id == "k1"
        assert (record.api, record.endpoint, record.model) == (
            "openai",
            "chat.completions",
            "gpt-4o-mini",
        )
        assert (record.method, record.path, record.status) == ("POST", "/v1/chat/completions", 200)
        assert record.outcome == "complete"
        assert not record.incomplete
        assert record.request_bytes() == orjson.dumps(sent)
        assert record.request_body_bytes == len(orjson.dumps(sent))
        assert record.response_bytes() == response.content  # exactly what the client received
        assert not record.request_truncated
        assert not record.response_truncated
        assert record.started_at <= time.time()
        assert 0 < record.duration < 5
    assert not first.stream
    assert second.stream
    assert second.response_bytes().endswith(b"data: [DONE]\n\n")
    assert ("content-type", "text/event-stream") in second.response_headers


def test_route_based_capture_for_every_key(upstream, tmp_path):
    path = tmp_path / "capture.jsonl"
    app, _ = _gateway(upstream, JSONLCaptureSink(path), routes={"embeddings"})
    with serve(app) as server:
        emb = httpx.post(
            f"{server.url}/v1/embeddings",
            content=orjson.dumps({"model": "text-embedding-3-small", "input": "a"}),
        )
        chat = _post(server, CHAT, {})
    assert emb.status_code == chat.status_code == 200
    records = _records(path)
    assert [(r.endpoint, r.key_id) for r in records] == [("embeddings", None)]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_clients_get_byte_identical_responses_with_and_without_capture(upstream, tmp_path, stream):
    app, _ = _gateway(upstream, JSONLCaptureSink(tmp_path / "c.jsonl"))
    body = {**CHAT, "stream": stream}
    with serve(app) as server, httpx.Client() as client:
        seen = {}
        for capture in ("1", "0"):
            with client.stream(
                "POST",
                f"{server.url}/v1/chat/completions",
                content=orjson.dumps(body),
                headers={"x-test-capture": capture, "x-events": "20"},
            ) as resp:
                chunks = list(resp.iter_raw())
                seen[capture] = (
                    resp.status_code,
                    resp.headers.get("content-type"),
                    b"".join(chunks),
                )
    assert seen["1"] == seen["0"]
    assert seen["1"][0] == 200


def test_streams_are_not_delayed_by_capture(upstream, tmp_path):
    # Each SSE event must reach the client as the upstream sends it, capture on.
    app, _ = _gateway(upstream, JSONLCaptureSink(tmp_path / "c.jsonl"))
    with serve(app) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=CLIENT_KEY, max_retries=0)
        start = time.monotonic()
        arrivals = []
        for chunk in client.chat.completions.create(
            **CHAT,
            stream=True,
            extra_headers={"x-test-capture": "1", "x-events": "4", "x-delay": "0.15"},
        ):
            arrivals.append(time.monotonic() - start)
            assert chunk.choices[0].delta.content is not None
    assert len(arrivals) == 4
    assert arrivals[0] < 0.3  # the first event did not wait for the others
    assert arrivals[-1] - arrivals[0] > 0.3


def test_max_bytes_truncates_and_flags_but_counts_everything(upstream, tmp_path):
    path = tmp_path / "capture.jsonl"
    app, _ = _gateway(upstream, JSONLCaptureSink(path), max_bytes=100)
    big = {**CHAT, "messages": [{"role": "user", "content": "é" * 300}], "stream": True}
    with serve(app) as server:
        resp = _post(server, big, {"x-test-capture": "1", "x-events": "30"})
    assert resp.status_code == 200
    (record,) = _records(path)
    assert record.request_truncated
    assert record.response_truncated
    assert record.request_body_bytes == len(orjson.dumps(big))
    assert record.response_body_bytes == len(resp.content)
    assert record.request_body_encoding == "text"  # a UTF-8 character cut in two is dropped
    assert 96 < len(record.request_bytes()) <= 100
    assert orjson.dumps(big).startswith(record.request_bytes())
    assert record.response_bytes() == resp.content[:100]


# -- redaction -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["jsonl", "sqlite"])
def test_no_credential_reaches_the_capture_file(upstream, tmp_path, kind):
    path = tmp_path / f"capture.{kind}"
    sink = JSONLCaptureSink(path) if kind == "jsonl" else SQLiteCaptureSink(path)
    app, capture = _gateway(upstream, sink, redact_headers={"x-custom-auth"})
    with serve(app) as server:
        for key, auth in (
            (CLIENT_KEY, {"Authorization": f"Bearer {CLIENT_KEY}"}),
            (CLIENT_KEY, {"x-api-key": CLIENT_KEY}),
            (AZURE_STYLE_KEY, {"api-key": AZURE_STYLE_KEY}),
        ):
            # The request's own key echoed in a prompt: removed because it is the key the
            # request authenticated with (an Azure key has no recognisable shape).
            body = {
                **CHAT,
                "api_key": BODY_SECRET,
                "metadata": {"clientSecret": "nested-secret-9d7a"},
                "messages": [{"role": "user", "content": f"my key is {key}!"}],
            }
            resp = httpx.post(
                f"{server.url}/v1/chat/completions?api-version=2024-10-21&key={CLIENT_KEY}",
                content=orjson.dumps(body),
                headers={
                    **auth,
                    "x-test-capture": "1",
                    "Cookie": COOKIE_SECRET,
                    "x-custom-auth": "custom-secret-3e1f",
                },
            )
            assert resp.status_code == 200
    assert capture.stats.written == 3
    files = sorted(tmp_path.iterdir())
    data = b"".join(p.read_bytes() for p in files)
    assert len(data) > 1000
    for secret in (
        CLIENT_KEY,
        AZURE_STYLE_KEY,
        BODY_SECRET,
        "nested-secret-9d7a",
        "cookie-secret-4c2d",
        "custom-secret-3e1f",
        CLIENT_KEY[3:15],  # not even a recognisable piece of it
    ):
        assert secret.encode() not in data, secret
    assert REDACTED.encode() in data
    assert b"api-version=2024-10-21" in data  # what is not secret is kept
    if kind == "jsonl":
        record = _records(path)[0]
        headers = dict(record.request_headers)
        assert headers["authorization"] == REDACTED
        assert headers["cookie"] == REDACTED
        assert headers["x-custom-auth"] == REDACTED
        assert headers["x-test-capture"] == "1"
        assert orjson.loads(record.request_body)["api_key"] == REDACTED
        assert orjson.loads(record.request_body)["model"] == "gpt-4o-mini"


# -- disconnects ---------------------------------------------------------------------------------


def test_client_disconnect_mid_stream_still_gives_one_record_flagged_incomplete(upstream, tmp_path):
    path = tmp_path / "capture.jsonl"
    app, _ = _gateway(upstream, JSONLCaptureSink(path))
    body = orjson.dumps({**CHAT, "stream": True})
    with serve(app) as server:
        with socket.create_connection((server.host, server.port), timeout=5) as sock:
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\n"
                b"Content-Type: application/json\r\nx-test-capture: 1\r\n"
                b"x-events: 50\r\nx-delay: 0.05\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            received = b""
            while received.count(b"data: ") < 3:
                received += sock.recv(65536)
        wait_until(lambda: len(_records(path)) == 1, timeout=3)
        time.sleep(0.2)
    records = _records(path)
    assert len(records) == 1
    (record,) = records
    assert record.outcome == "disconnected"
    assert record.incomplete
    assert record.status == 200
    assert record.response_bytes().startswith(_event(0) + _event(1))
    assert b"[DONE]" not in record.response_bytes()


# -- zero cost when off --------------------------------------------------------------------------


def _identity_app(seen: list) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append((receive, send))

    return app


async def _never(record: CaptureRecord) -> None:
    raise AssertionError("nothing must be captured")


def _scope(path: str = "/v1/chat/completions") -> Scope:
    return {
        "type": "http",
        "http_version": "1.1",
        "method": "POST",
        "path": path,
        "root_path": "",
        "query_string": b"",
        "headers": [],
    }


async def test_capture_off_passes_the_very_same_send_and_receive():
    seen: list = []
    mw = CaptureMiddleware(_identity_app(seen), sink=_never, routes={"embeddings"})
    off = CaptureMiddleware(_identity_app(seen), sink=_never, enabled=False)

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        pass

    plain = _scope()
    await mw(plain, receive, send)  # route not listed, no key
    keyed = _scope()
    get_context(keyed).key = KeyPolicy(key_id="k", capture=False)
    await mw(keyed, receive, send)
    capturing = _scope("/v1/embeddings")
    get_context(capturing).key = KeyPolicy(key_id="k", capture=True)
    await off(capturing, receive, send)  # disabled globally: even a capturing key is not
    await mw({"type": "websocket", "path": "/"}, receive, send)
    assert len(seen) == 4
    assert all(r is receive and s is send for r, s in seen)
    # ... and when on, both are wrapped:
    await mw(_scope("/v1/embeddings"), receive, send)
    assert seen[-1][0] is not receive
    assert seen[-1][1] is not send
    await mw.aclose()


# -- the queue -----------------------------------------------------------------------------------


async def _answer(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


async def _receive() -> Message:
    return {"type": "http.request", "body": b"{}", "more_body": False}


async def _discard(message: Message) -> None:
    pass


async def test_a_full_queue_drops_captures_counts_them_and_logs_once_per_burst(caplog):
    release = asyncio.Event()
    written: list[CaptureRecord] = []

    async def slow_sink(record: CaptureRecord) -> None:
        await release.wait()
        written.append(record)

    mw = CaptureMiddleware(_answer, sink=slow_sink, routes={"chat.completions"}, queue_size=2)
    caplog.set_level(logging.WARNING, logger="asgi_llmguard.capture")
    for _ in range(5):  # no await yields to the writer in between: the queue fills at once
        await mw(_scope(), _receive, _discard)
    assert (mw.stats.captured, mw.stats.dropped) == (2, 3)
    full = [r for r in caplog.records if "queue full" in r.getMessage()]
    assert len(full) == 1
    release.set()
    await asyncio.sleep(0.01)  # the writer drains the two
    await mw(_scope(), _receive, _discard)
    assert any("3 captures were dropped" in r.getMessage() for r in caplog.records)
    await mw.aclose()
    assert len(written) == 3
    assert mw.stats.written == 3


async def test_sink_errors_are_logged_and_never_break_a_request(caplog):
    async def broken(record: CaptureRecord) -> None:
        raise OSError("disk full")

    mw = CaptureMiddleware(_answer, sink=broken, routes={"chat.completions"})
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await mw(_scope(), _receive, send)
    await mw.aclose()
    assert sent[0]["status"] == 200
    assert mw.stats.failed == 1
    assert any("capture sink" in r.getMessage() for r in caplog.records)


async def test_cancelled_request_is_recorded_as_cancelled():
    records: list[CaptureRecord] = []

    async def sink(record: CaptureRecord) -> None:
        records.append(record)

    async def hang(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        await asyncio.sleep(3600)

    mw = CaptureMiddleware(hang, sink=sink, routes={"chat.completions"})
    task = asyncio.create_task(mw(_scope(), _receive, _discard))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await mw.aclose()
    (record,) = records
    assert (record.outcome, record.incomplete, record.response_body) == ("cancelled", True, "part")


async def test_lifespan_shutdown_drains_the_queue():
    records: list[CaptureRecord] = []

    async def sink(record: CaptureRecord) -> None:
        await asyncio.sleep(0.01)
        records.append(record)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                pass
            return
        await _answer(scope, receive, send)

    mw = CaptureMiddleware(app, sink=sink, routes={"chat.completions"})
    for _ in range(3):
        await mw(_scope(), _receive, _discard)
    messages = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]

    async def lifespan_receive() -> Message:
        return messages.pop(0)

    await mw({"type": "lifespan"}, lifespan_receive, _discard)
    assert len(records) == 3


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sink": "jsonl:///tmp/x"},
        {"sink": _never, "routes": "chat.completions"},
        {"sink": _never, "max_bytes": -1},
        {"sink": _never, "queue_size": 0},
        {"sink": _never, "redact_headers": "authorization"},
    ],
    ids=["sink-not-callable", "routes-string", "max-bytes", "queue-size", "redact-string"],
)
def test_bad_configuration_is_refused(kwargs):
    with pytest.raises(ConfigurationError):
        CaptureMiddleware(_answer, **kwargs)
