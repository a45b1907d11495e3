"""The access log and request ids through real sockets: client -> gateway (uvicorn) -> fake.

The token numbers asserted come from the fake's rule (a token is a word), not from the gateway.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
import orjson
import pytest

from asgi_llmguard import Upstream
from asgi_llmguard.context import get_context
from asgi_llmguard.errors import ConfigurationError
from asgi_llmguard.forward.app import ForwardingApp
from asgi_llmguard.middleware.access_log import AccessLogMiddleware
from asgi_llmguard.middleware.classify import ClassifyMiddleware
from asgi_llmguard.middleware.usage import UsageMiddleware
from asgi_llmguard.policy import KeyPolicy
from asgi_llmguard.testing import FakeProvider, RunningServer, serve
from asgi_llmguard.usage.pricing import ModelPrice, PriceTable

REPLY = "Hello from the fake provider."
WORDS = FakeProvider.count_tokens(REPLY)
KEY = "sk-upstream-accesslog"
CLIENT_SECRET = "client-secret-key"
LOGGER = "asgi_llmguard.access"
PRICES = PriceTable.default().with_overrides(
    models={"test-model": ModelPrice(input=1.0, output=2.0)}
)
FIELDS = {
    "ts",
    "request_id",
    "client_request_id",
    "method",
    "path",
    "endpoint",
    "provider",
    "key_id",
    "model",
    "status",
    "latency_ms",
    "ttfb_ms",
    "tokens",
    "credential_id",
    "upstream_error",
    "disconnected",
    "client_ip",
    "error",
}


class AssignKey:
    """Stands in for the auth layer: every request gets the same key policy."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            get_context(scope).key = KeyPolicy(key_id="team-a")
        await self.app(scope, receive, send)


@dataclass
class Stack:
    url: str
    fake: FakeProvider
    caplog: pytest.LogCaptureFixture

    def lines(self, count: int = 1, timeout: float = 3.0) -> list[dict[str, Any]]:
        """Exactly ``count`` access-log lines, decoded (waits for them, then for stragglers)."""
        deadline = time.monotonic() + timeout
        while len(self._records()) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self._records())} lines, expected {count}")
            time.sleep(0.005)
        time.sleep(0.05)
        records = self._records()
        assert len(records) == count, [r.getMessage() for r in records]
        return [orjson.loads(r.getMessage()) for r in records]

    def _records(self) -> list[logging.LogRecord]:
        return [r for r in self.caplog.records if r.name == LOGGER]


@pytest.fixture(scope="module")
def fake_server() -> Iterator[tuple[FakeProvider, RunningServer]]:
    fake = FakeProvider(api_key=KEY)
    with serve(fake) as server:
        yield fake, server


def _stack(upstream_url: str, **log_kwargs: Any) -> ClassifyMiddleware:
    forwarder = ForwardingApp(
        [Upstream("openai", f"{upstream_url}/v1", api_key=KEY, name="fake-openai")]
    )
    usage = UsageMiddleware(forwarder, prices=PRICES)
    return ClassifyMiddleware(AccessLogMiddleware(AssignKey(usage), **log_kwargs))


@pytest.fixture
def stack(
    fake_server: tuple[FakeProvider, RunningServer], caplog: pytest.LogCaptureFixture
) -> Iterator[Stack]:
    fake, upstream = fake_server
    fake.reset()
    caplog.set_level(logging.INFO, logger=LOGGER)
    with serve(_stack(upstream.url)) as server:
        yield Stack(server.url, fake, caplog)


def _chat(url: str, headers: dict[str, str] | None = None, **body: Any) -> httpx.Response:
    payload = {"model": "test-model", "messages": [{"role": "user", "content": "one two three"}]}
    return httpx.post(f"{url}/v1/chat/completions", json={**payload, **body}, headers=headers)


def test_json_answer_line(stack: Stack) -> None:
    resp = _chat(stack.url)
    assert resp.status_code == 200
    (line,) = stack.lines()
    assert set(line) == FIELDS
    assert line["request_id"] == resp.headers["x-request-id"]
    assert line["request_id"].startswith("req_")
    assert (line["method"], line["path"], line["endpoint"], line["provider"]) == (
        "POST",
        "/v1/chat/completions",
        "chat.completions",
        "openai",
    )
    assert (line["key_id"], line["model"], line["status"]) == ("team-a", "test-model", 200)
    assert line["tokens"] == 3 + WORDS
    assert (line["credential_id"], line["upstream_error"], line["disconnected"]) == (
        "fake-openai",
        None,
        False,
    )
    assert line["client_ip"] == "127.0.0.1"
    assert line["error"] is None
    assert 0 < line["ttfb_ms"] <= line["latency_ms"] < 5000
    assert line["ts"].endswith("Z")
    assert abs(datetime.fromisoformat(line["ts"]).timestamp() - time.time()) < 60


def test_streamed_answer_line(stack: Stack) -> None:
    resp = _chat(stack.url, stream=True, messages=[{"role": "user", "content": "a b"}])
    assert resp.status_code == 200
    assert resp.content.endswith(b"data: [DONE]\n\n")
    (line,) = stack.lines()
    assert (line["status"], line["tokens"], line["disconnected"]) == (200, 2 + WORDS, False)
    assert line["request_id"] == resp.headers["x-request-id"]
    assert line["ttfb_ms"] <= line["latency_ms"]


def test_upstream_refusal_line(stack: Stack) -> None:
    resp = _chat(stack.url, headers={"x-fake-status": "401"})
    assert resp.status_code == 401
    (line,) = stack.lines()
    assert (line["status"], line["credential_id"], line["tokens"]) == (401, "fake-openai", None)
    assert line["request_id"] == resp.headers["x-request-id"]


def test_gateway_refusal_line(stack: Stack) -> None:
    resp = _chat(stack.url, model="unpriced-model")
    assert resp.status_code == 400
    assert resp.headers["x-request-id"].startswith("req_")
    (line,) = stack.lines()
    assert (line["status"], line["model"], line["credential_id"]) == (400, "unpriced-model", None)
    assert stack.fake.requests == type(stack.fake.requests)()  # never reached the upstream


def test_invalid_body_logs_no_model(stack: Stack) -> None:
    resp = httpx.post(f"{stack.url}/v1/chat/completions", content=b"{not json")
    assert resp.status_code == 400
    (line,) = stack.lines()
    assert (line["status"], line["model"]) == (400, None)


def test_client_disconnect_line(stack: Stack) -> None:
    body = orjson.dumps(
        {"model": "test-model", "stream": True, "messages": [{"role": "user", "content": "p q"}]}
    )
    host, port = stack.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"x-request-id: gone-early\r\nx-fake-chunk-delay: 0.05\r\nx-fake-chunks: 100\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        seen = b""
        while seen.count(b'"content":"') < 3:
            data = sock.recv(65536)
            assert data
            seen += data
    assert b"x-request-id: gone-early\r\n" in seen
    (line,) = stack.lines()
    assert line["request_id"].startswith("req_")
    assert (line["client_request_id"], line["disconnected"], line["status"]) == (
        "gone-early",
        True,
        200,
    )
    assert line["tokens"] is not None
    assert line["tokens"] > 0  # estimated: never free
    stack.fake.wait_until(lambda: stack.fake.disconnects == 1, 1.0)


@pytest.mark.parametrize(
    "sent",
    [
        "abc-123",
        "trace:0af7651916cd43dd8448eb211c80319c",
        "a.b_c-d:e",
        "x" * 128,
    ],
)
def test_well_formed_request_id_is_adopted(stack: Stack, sent: str) -> None:
    resp = _chat(stack.url, headers={"x-request-id": sent})
    assert resp.headers.get_list("x-request-id") == [sent]
    (line,) = stack.lines()
    assert line["client_request_id"] == sent
    assert line["request_id"] == resp.headers["x-llmguard-request-id"] != sent


@pytest.mark.parametrize(
    "sent",
    ["x" * 129, "y" * 300, "has space", "semi;colon", "new\tline", "ünï", ""],
)
def test_malformed_request_id_is_replaced(stack: Stack, sent: str) -> None:
    resp = _chat(stack.url, headers={"x-request-id": sent.encode("utf-8")})  # type: ignore[dict-item]
    returned = resp.headers.get_list("x-request-id")
    assert len(returned) == 1
    assert returned[0] != sent
    assert returned[0].startswith("req_")
    (line,) = stack.lines()
    assert line["request_id"] == returned[0]


def test_generated_ids_are_unique_and_replace_the_upstreams(stack: Stack) -> None:
    ids = [_chat(stack.url).headers.get_list("x-request-id") for _ in range(3)]
    assert all(len(i) == 1 for i in ids)  # the fake's own x-request-id was replaced
    assert len({i[0] for i in ids}) == 3
    assert [line["request_id"] for line in stack.lines(3)] == [i[0] for i in ids]


def test_no_secret_in_the_log(stack: Stack) -> None:
    resp = _chat(
        stack.url,
        headers={"authorization": f"Bearer {CLIENT_SECRET}", "cookie": "session=cookie-secret"},
        messages=[{"role": "user", "content": "body-secret-word"}],
    )
    assert resp.status_code == 200
    assert stack.fake.requests[-1].header("authorization") == f"Bearer {KEY}"
    stack.lines()
    text = stack.caplog.text + "".join(r.getMessage() for r in stack.caplog.records)
    for secret in (CLIENT_SECRET, KEY, "cookie-secret", "body-secret-word", "Bearer"):
        assert secret not in text


def test_untrusted_request_id_and_disabled_logger(
    fake_server: tuple[FakeProvider, RunningServer],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, upstream = fake_server
    caplog.set_level(logging.INFO, logger=LOGGER)
    built: list[object] = []
    monkeypatch.setattr(AccessLogMiddleware, "_log", lambda *args: built.append(args))
    app = _stack(upstream.url, trust_request_id=False, level=logging.DEBUG - 5)
    with serve(app) as server:
        resp = _chat(server.url, headers={"x-request-id": "caller-chosen"})
    assert resp.status_code == 200
    assert resp.headers.get_list("x-request-id")[0].startswith("req_")
    time.sleep(0.05)
    assert not [r for r in caplog.records if r.name == LOGGER]  # disabled: no line at all
    assert built == []  # ... and no line was even built


def test_custom_logger_header_and_level(
    fake_server: tuple[FakeProvider, RunningServer], caplog: pytest.LogCaptureFixture
) -> None:
    _, upstream = fake_server
    caplog.set_level(logging.INFO, logger="ops.access")
    app = _stack(
        upstream.url, logger_name="ops.access", level=logging.WARNING, request_id_header="X-Trace"
    )
    with serve(app) as server:
        resp = _chat(server.url, headers={"x-trace": "t-1"})
    assert resp.headers["x-trace"] == "t-1"
    deadline = time.monotonic() + 2
    while not [r for r in caplog.records if r.name == "ops.access"]:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    (record,) = [r for r in caplog.records if r.name == "ops.access"]
    assert record.levelno == logging.WARNING
    assert orjson.loads(record.getMessage())["client_request_id"] == "t-1"


async def test_exception_is_logged_and_reraised(caplog: pytest.LogCaptureFixture) -> None:
    async def boom(scope: Any, receive: Any, send: Any) -> None:
        raise ValueError("secret detail")

    caplog.set_level(logging.INFO, logger=LOGGER)
    app = AccessLogMiddleware(boom)
    scope: dict[str, Any] = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "headers": [],
        "client": None,
    }

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        raise AssertionError("nothing is sent")

    with pytest.raises(ValueError, match="secret detail"):
        await app(scope, receive, send)
    (record,) = [r for r in caplog.records if r.name == LOGGER]
    line = orjson.loads(record.getMessage())
    assert (line["status"], line["error"], line["client_ip"]) == (500, "ValueError", None)
    assert "secret detail" not in caplog.text


async def test_non_http_scopes_pass_through() -> None:
    seen: list[str] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    app = AccessLogMiddleware(inner)
    await app({"type": "lifespan"}, None, None)  # type: ignore[arg-type]
    assert seen == ["lifespan"]


@pytest.mark.parametrize(
    "kwargs",
    [{"level": 0}, {"level": True}, {"request_id_header": "bad header"}],
)
def test_bad_configuration(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        AccessLogMiddleware(lambda s, r, se: None, **kwargs)  # type: ignore[arg-type,return-value]
