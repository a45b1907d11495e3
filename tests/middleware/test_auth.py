"""The key layer: real SDKs and raw sockets through uvicorn, and the middleware on its own.

The end-to-end stack is ClassifyMiddleware -> AuthMiddleware -> ForwardingApp on a loopback port,
forwarding to the fake provider on another, with keys in a real SQLite store behind the cache.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import orjson
import pytest
from fastapi import FastAPI, Request

from asgi_llmguard import ClassifyMiddleware, ForwardingApp, Upstream, get_context
from asgi_llmguard.errors import ConfigurationError, send_body
from asgi_llmguard.keys import (
    CachedKeyStore,
    PostgresKeyStore,
    SQLiteKeyStore,
    StaticKey,
    StaticKeyStore,
    hash_key,
    issue_key,
)
from asgi_llmguard.middleware.auth import AuthMiddleware
from asgi_llmguard.policy import KeyPolicy
from asgi_llmguard.testing import FakeProvider, RunningServer, serve

UPSTREAM_KEY = "sk-upstream-auth-secret-7f3a9c"
AZURE_VERSION = "2024-10-21"

# Marked here, at collection: the anyio marker that tests/conftest.py adds afterwards makes
# anyio's plugin rebuild async tests without their parameters.
pytestmark = pytest.mark.anyio


# -- the real stack ------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class Gateway:
    url: str
    host: str
    port: int
    keys: dict[str, str]
    store: CachedKeyStore
    app: Any


@pytest.fixture(scope="module")
def keys_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SQLiteKeyStore, dict]]:
    store = SQLiteKeyStore(tmp_path_factory.mktemp("keys") / "keys.sqlite3")

    async def setup() -> dict[str, str]:
        made = {
            "open": await issue_key(store, name="open-team", metadata={"team": "a"}),
            "restricted": await issue_key(
                store,
                name="restricted",
                models=["gpt-4o-mini", "gpt-5*", "claude-sonnet-*"],
                endpoints=["chat.completions", "responses", "messages", "models.list"],
                tool_types=["function"],
                allow_background=False,
            ),
            "codex": await issue_key(
                store,
                name="codex",
                tool_types=["function", "custom", "namespace", "web_search", "mcp"],
                mcp_servers=["https://mcp.example.com/", "https://tools.example.org/sse"],
            ),
            "revoked": await issue_key(store, name="gone"),
            "openai_only": await issue_key(store, providers=["openai", "azure"]),
            "azure": await issue_key(store, name="azure-4o", models=["gpt-4o"]),
        }
        assert await store.revoke("gone")
        return {name: issued.key for name, issued in made.items()}

    keys = asyncio.run(setup())
    yield store, keys
    asyncio.run(store.aclose())


def _stack(fake_url: str, store: CachedKeyStore) -> Any:
    forwarder = ForwardingApp(
        [
            Upstream("openai", f"{fake_url}/v1", api_key=UPSTREAM_KEY),
            Upstream("anthropic", fake_url, api_key=UPSTREAM_KEY),
            Upstream(
                "azure",
                fake_url,
                api_key=UPSTREAM_KEY,
                api_version=AZURE_VERSION,
                deployments={"gpt-4o": "prod-4o"},
            ),
        ]
    )
    return ClassifyMiddleware(AuthMiddleware(forwarder, store=store))


@pytest.fixture(scope="module", params=["default", "h11"])
def gateway(
    request: pytest.FixtureRequest, fake_server: RunningServer, keys_db
) -> Iterator[Gateway]:
    """The stack under uvicorn; once with its default HTTP parser (httptools) and once on h11."""
    sqlite, keys = keys_db
    store = CachedKeyStore(sqlite)
    app = _stack(fake_server.url, store)
    options = {"http": "h11"} if request.param == "h11" else {}
    with serve(app, **options) as server:
        yield Gateway(server.url, server.host, server.port, keys, store, app)


@pytest.fixture(scope="module")
def gw(fake_server: RunningServer, keys_db) -> Iterator[Gateway]:
    """One gateway (default parser) for the SDK tests that need not run twice."""
    sqlite, keys = keys_db
    store = CachedKeyStore(sqlite)
    app = _stack(fake_server.url, store)
    with serve(app) as server:
        yield Gateway(server.url, server.host, server.port, keys, store, app)


def _drop_auth(request: httpx2.Request) -> None:
    del request.headers["authorization"]


def oai(gw: Gateway, key: str | None) -> openai.OpenAI:
    if key is None:  # the SDK insists on a key: send it none at all
        return openai.OpenAI(
            base_url=f"{gw.url}/v1",
            api_key="unused",
            max_retries=0,
            http_client=httpx2.Client(event_hooks={"request": [_drop_auth]}),
        )
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0)


def ant(gw: Gateway, key: str | None) -> anthropic.Anthropic:
    if key is None:
        return anthropic.Anthropic(
            base_url=gw.url,
            api_key="unused",
            max_retries=0,
            default_headers={"X-Api-Key": anthropic.Omit()},
        )
    return anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0)


def _chat(client: openai.OpenAI, model: str = "gpt-4o-mini", **kw: Any) -> Any:
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hello there"}], **kw
    )


def _message(client: anthropic.Anthropic, model: str = "claude-sonnet-4-6") -> Any:
    return client.messages.create(
        model=model, max_tokens=50, messages=[{"role": "user", "content": "hi"}]
    )


def _assert_no_caller_key_upstream(fake: FakeProvider, *keys: str) -> None:
    for seen in fake.requests:
        for _, value in seen.headers:
            assert all(k not in value for k in keys)
        assert all(k.encode() not in seen.body for k in keys)


# -- valid keys ------------------------------------------------------------------------------------


def test_valid_key_reaches_the_upstream_with_the_upstream_credential(gw, fake):
    out = _chat(oai(gw, gw.keys["open"]))
    assert out.choices[0].message.content == "Hello from the fake provider."
    msg = _message(ant(gw, gw.keys["open"]))
    assert msg.content[0].text == "Hello from the fake provider."
    assert len(fake.requests) == 2
    chat, messages = fake.requests
    assert chat.header("authorization") == f"Bearer {UPSTREAM_KEY}"
    assert messages.header("x-api-key") == UPSTREAM_KEY
    assert messages.header("authorization") is None
    _assert_no_caller_key_upstream(fake, *gw.keys.values())


def test_azure_sdk_api_key_header_and_the_deployment_as_model(gw, fake):
    client = openai.AzureOpenAI(
        azure_endpoint=gw.url, api_key=gw.keys["azure"], api_version=AZURE_VERSION, max_retries=0
    )
    out = _chat(client, model="gpt-4o")
    assert out.choices[0].message.content == "Hello from the fake provider."
    assert fake.requests[-1].path == "/openai/deployments/prod-4o/chat/completions"
    assert fake.requests[-1].header("api-key") == UPSTREAM_KEY
    with pytest.raises(openai.PermissionDeniedError) as err:
        _chat(client, model="gpt-4o-mini")
    assert err.value.body["code"] == "model_not_allowed"
    assert "gpt-4o-mini" in err.value.body["message"]
    assert len(fake.requests) == 1
    _assert_no_caller_key_upstream(fake, gw.keys["azure"])


# -- 401 ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["missing", "wrong", "revoked"])
def test_no_wrong_or_revoked_key_is_401_in_openai_shape(gateway, fake, which):
    key = {"missing": None, "wrong": "sk-llmg-not-a-real-key", "revoked": gateway.keys["revoked"]}
    with pytest.raises(openai.AuthenticationError) as err:
        _chat(oai(gateway, key[which]))
    assert err.value.status_code == 401
    assert err.value.response.headers["www-authenticate"] == "Bearer"
    body = err.value.response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == "invalid_api_key"
    assert body["error"]["type"] == "invalid_request_error"
    if key[which]:
        assert key[which] not in err.value.response.text
    assert len(fake.requests) == 0


@pytest.mark.parametrize("which", ["missing", "wrong", "revoked"])
def test_no_wrong_or_revoked_key_is_401_in_anthropic_shape(gateway, fake, which):
    key = {"missing": None, "wrong": "sk-ant-wrong", "revoked": gateway.keys["revoked"]}
    with pytest.raises(anthropic.AuthenticationError) as err:
        _message(ant(gateway, key[which]))
    body = err.value.response.json()
    assert body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": body["error"]["message"]},
    }
    assert len(fake.requests) == 0


# -- 403 ------------------------------------------------------------------------------------------


def test_models_outside_the_allow_list_exact_and_glob(gw, fake):
    client = oai(gw, gw.keys["restricted"])
    for allowed in ("gpt-4o-mini", "gpt-5", "gpt-5-nano"):
        assert _chat(client, model=allowed).model == allowed
    for refused in ("gpt-4o", "GPT-4O-MINI", "gpt-4o-mini-2", "o3", "xgpt-5"):
        with pytest.raises(openai.PermissionDeniedError) as err:
            _chat(client, model=refused)
        assert err.value.body["code"] == "model_not_allowed"
        assert err.value.body["type"] == "permission_error"
        assert f"'{refused}'" in err.value.body["message"]
    assert [r.json()["model"] for r in fake.requests] == ["gpt-4o-mini", "gpt-5", "gpt-5-nano"]

    messages = ant(gw, gw.keys["restricted"])
    assert _message(messages, "claude-sonnet-4-6").model == "claude-sonnet-4-6"
    with pytest.raises(anthropic.PermissionDeniedError) as aerr:
        _message(messages, "claude-opus-4-1")
    assert aerr.value.response.json()["error"]["type"] == "permission_error"
    assert len(fake.requests) == 4


def test_a_forbidden_tool_type_and_background_are_403(gw, fake):
    client = oai(gw, gw.keys["restricted"])
    with pytest.raises(openai.PermissionDeniedError) as err:
        client.responses.create(model="gpt-5", input="look it up", tools=[{"type": "web_search"}])
    assert err.value.body["code"] == "tool_not_allowed"
    assert "web_search" in err.value.body["message"]
    with pytest.raises(openai.PermissionDeniedError) as err:
        client.responses.create(model="gpt-5", input="later", background=True)
    assert err.value.body["code"] == "background_not_allowed"
    assert len(fake.requests) == 0
    function = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    assert _chat(client, tools=[function]).choices
    assert client.responses.create(model="gpt-5", input="now", background=False).output_text
    assert len(fake.requests) == 2


def test_codex_like_tools_pass_the_documented_example(gw, fake):
    client = oai(gw, gw.keys["codex"])
    tools: Any = [
        {"type": "function", "name": "shell", "parameters": {"type": "object"}},
        {"type": "namespace", "name": "mcp__docs", "tools": []},
        {"type": "web_search"},
    ]
    assert client.responses.create(model="gpt-5", input="fix it", tools=tools).output_text
    assert len(fake.requests) == 1


def test_web_search_options_count_as_a_web_search_tool(gw, fake):
    with pytest.raises(openai.PermissionDeniedError) as err:
        _chat(oai(gw, gw.keys["restricted"]), web_search_options={})
    assert err.value.body["code"] == "tool_not_allowed"
    assert "web_search" in err.value.body["message"]
    assert _chat(oai(gw, gw.keys["codex"]), web_search_options={}).choices
    assert len(fake.requests) == 1


def _mcp_message(client: anthropic.Anthropic, url: str) -> Any:
    return client.messages.create(
        model="claude-sonnet-4-6",
        max_tokens=50,
        messages=[{"role": "user", "content": "hi"}],
        extra_body={"mcp_servers": [{"type": "url", "url": url, "name": "x"}]},
        extra_headers={"anthropic-beta": "mcp-client-2025-04-04"},
    )


def test_mcp_servers_outside_the_keys_allow_list_are_403(gw, fake):
    client = ant(gw, gw.keys["codex"])
    for url in ("https://mcp.example.com.evil/x", "https://tools.example.org/sse/more"):
        with pytest.raises(anthropic.PermissionDeniedError) as err:
            _mcp_message(client, url)
        assert err.value.body["type"] == "error"
        assert url in err.value.body["error"]["message"]
    with pytest.raises(openai.PermissionDeniedError) as oerr:
        oai(gw, gw.keys["codex"]).responses.create(
            model="gpt-5",
            input="x",
            tools=[{"type": "mcp", "server_label": "e", "server_url": "https://evil.test/mcp"}],
        )
    assert "https://evil.test/mcp" in oerr.value.body["message"]
    assert len(fake.requests) == 0
    assert _mcp_message(client, "https://mcp.example.com/sse").content
    assert _mcp_message(client, "https://tools.example.org/sse").content
    with pytest.raises(anthropic.PermissionDeniedError):  # mcp is not a tool of this key
        _mcp_message(ant(gw, gw.keys["restricted"]), "https://mcp.example.com/sse")
    assert len(fake.requests) == 2


def test_an_endpoint_or_provider_not_allowed_is_403(gw, fake):
    with pytest.raises(openai.PermissionDeniedError) as err:
        oai(gw, gw.keys["restricted"]).embeddings.create(model="gpt-5", input="x")
    assert err.value.body["code"] == "endpoint_not_allowed"
    assert "embeddings" in err.value.body["message"]
    with pytest.raises(anthropic.PermissionDeniedError) as aerr:
        _message(ant(gw, gw.keys["openai_only"]))
    assert "anthropic" in aerr.value.response.json()["error"]["message"]
    assert len(fake.requests) == 0
    assert any(m.id for m in oai(gw, gw.keys["restricted"]).models.list())  # allowed, no body


# -- S1 on a raw socket ---------------------------------------------------------------------------


def _raw(host: str, port: int, data: bytes, timeout: float = 5.0) -> tuple[int, bytes]:
    """Send bytes, read one response (status, body); the body is read to its Content-Length."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(data)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
        head, _, body = buf.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        return status, body


def _request(key_header: bytes, body: bytes = b'{"model":"gpt-4o-mini","messages":[]}') -> bytes:
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        + key_header
        + b"\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\nConnection: close\r\n\r\n"
        + body
    )


HOSTILE = {
    "double-quote": (b'Authorization: Bearer sk-"quoted"-key', b'sk-"quoted"', {401}),
    "single-quote": (b"x-api-key: sk-'quoted'-key", b"sk-'quoted'", {401}),
    "non-ascii": (b"api-key: sk-\xc3\xa9t\xc3\xa9-key", b"\xc3\xa9t\xc3\xa9", {401}),
    # uvicorn's parsers refuse NUL in a header themselves (400); the layer's own answer to it is
    # checked in-process below. 100 KB headers pass both parsers today: 431 would be fine too.
    "nul": (b"Authorization: Bearer sk-\x00nul-key", b"nul-key", {401, 400}),
    "100KB": (b"Authorization: Bearer sk-" + b"A" * 100_000, b"A" * 64, {401, 431}),
    "100KB-x-api-key": (b"x-api-key: " + b"B" * 100_000, b"B" * 64, {401, 431}),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_keys_on_a_raw_socket_are_refused_and_never_echoed(gateway, fake, case, caplog):
    header, marker, statuses = HOSTILE[case]
    caplog.set_level(logging.DEBUG)
    status, body = _raw(gateway.host, gateway.port, _request(header))
    assert status in statuses
    assert marker not in body
    if status == 401:
        assert orjson.loads(body)["error"]["code"] == "invalid_api_key"
    assert len(fake.requests) == 0
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert marker.decode("latin-1") not in text


@pytest.mark.parametrize("expect", [False, True], ids=["plain", "expect-100-continue"])
@pytest.mark.parametrize("key", [None, "wrong"])
def test_missing_or_wrong_key_is_refused_before_the_body_is_read(gateway, fake, key, expect):
    # The request announces a 1 MB body and sends none: an answer can only come from the headers.
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000000\r\n"
    )
    if key:
        head += b"Authorization: Bearer sk-llmg-wrong-key-123\r\n"
    if expect:
        head += b"Expect: 100-continue\r\n"
    started = time.monotonic()
    status, body = _raw(gateway.host, gateway.port, head + b"\r\n", timeout=3)
    assert status == 401  # and not "100 Continue": the body was never asked for
    assert time.monotonic() - started < 1.0
    assert orjson.loads(body)["error"]["code"] == "invalid_api_key"
    assert len(fake.requests) == 0


def test_a_restricted_key_waits_for_the_body_it_must_check(gw):
    # The counterpart of the test above: the same harness does notice a layer reading the body.
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Length: 1000000\r\n"
        b"Authorization: Bearer " + gw.keys["restricted"].encode() + b"\r\n\r\n"
    )
    with pytest.raises(TimeoutError):
        _raw(gw.host, gw.port, head, timeout=0.3)


# -- secrets --------------------------------------------------------------------------------------


def test_no_key_in_any_log_record_error_body_or_repr(gw, fake, caplog):
    caplog.set_level(logging.DEBUG)
    bodies: list[str] = []
    _chat(oai(gw, gw.keys["open"]))
    for key in ("sk-llmg-wrong-but-plausible", gw.keys["revoked"], None):
        with pytest.raises(openai.AuthenticationError) as err:
            _chat(oai(gw, key))
        bodies.append(err.value.response.text)
    with pytest.raises(openai.PermissionDeniedError) as denied:
        _chat(oai(gw, gw.keys["restricted"]), model="gpt-4o")
    bodies.append(denied.value.response.text)
    with pytest.raises(openai.APIStatusError) as upstream_error:
        _chat(oai(gw, gw.keys["open"]), extra_headers={"x-fake-status": "401"})
    bodies.append(upstream_error.value.response.text)

    secrets = [UPSTREAM_KEY, "sk-llmg-wrong-but-plausible", *gw.keys.values()]
    secrets += [hash_key(k) for k in gw.keys.values()]
    texts = [r.getMessage() for r in caplog.records]
    texts += [r.exc_text or "" for r in caplog.records]
    texts += bodies
    policies = [asyncio.run(gw.store.store.lookup(hash_key(k))) for k in gw.keys.values()]
    texts += [repr(p) for p in policies]
    texts += [repr(gw.store), repr(gw.store.store), repr(gw.app), repr(gw.app.app)]
    texts += [repr(StaticKey(KeyPolicy(key_id="k"), key=gw.keys["open"]))]
    for text in texts:
        for secret in secrets:
            assert secret not in text
    # The checks above looked at real records: the layer logged its refusals.
    assert any(r.name == "asgi_llmguard.auth" for r in caplog.records)
    assert any("revoked key gone" in r.getMessage() for r in caplog.records)  # named by its id


def test_repr_of_a_postgres_store_hides_the_password():
    store = PostgresKeyStore("postgresql://admin:hunter2@db.internal:5433/keys", schema="gw")
    middleware = AuthMiddleware(lambda *a: None, store=CachedKeyStore(store))  # type: ignore[arg-type]
    for text in (repr(store), repr(middleware)):
        assert "hunter2" not in text
        assert "admin" not in text
        assert "db.internal:5433/keys" in text


# -- the middleware on its own (in-process ASGI) --------------------------------------------------


@dataclass
class Result:
    status: int
    headers: dict[bytes, bytes]
    body: bytes
    receive_calls: int

    def json(self) -> Any:
        return orjson.loads(self.body)


class Downstream:
    """A foreign app: reads the body through receive() like any ASGI app would."""

    def __init__(self) -> None:
        self.calls: list[tuple[KeyPolicy | None, bytes]] = []
        self.other_scopes: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            self.other_scopes.append(scope["type"])
            return
        message = await receive()
        self.calls.append((get_context(scope).key, message.get("body", b"")))
        await send_body(send, 200, b'{"ok":true}')


async def call(
    app: Any,
    headers: list[tuple[bytes, bytes]],
    *,
    path: str = "/v1/chat/completions",
    method: str = "POST",
    body: bytes = b'{"model":"gpt-4o-mini","messages":[]}',
) -> Result:
    receive_calls = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal receive_calls
        receive_calls += 1
        if receive_calls == 1:
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    await app(scope, receive, send)
    start = sent[0]
    return Result(
        start["status"],
        dict(start["headers"]),
        b"".join(m.get("body", b"") for m in sent[1:]),
        receive_calls,
    )


class SpyStore:
    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.lookups: list[str] = []

    async def lookup(self, key_hash: str) -> KeyPolicy | None:
        self.lookups.append(key_hash)
        return await self.inner.lookup(key_hash)

    async def aclose(self) -> None:
        await self.inner.aclose()


KEY = "sk-llmg-unit-test-key-0123456789"
OTHER = "sk-llmg-unit-test-other-key-987"


def static(**policy: Any) -> StaticKeyStore:
    return StaticKeyStore(
        [
            StaticKey(KeyPolicy(key_id="unit", **policy), key=KEY),
            StaticKey(KeyPolicy(key_id="other"), key=OTHER),
        ]
    )


def bearer(key: str | bytes) -> tuple[bytes, bytes]:
    return (b"authorization", b"Bearer " + (key.encode() if isinstance(key, str) else key))


@pytest.mark.parametrize(
    "value",
    [
        b"sk-\x00nul",
        b"sk-" + b"A" * 100_000,
        b'sk-"quoted"',
        b"sk-\xc3\xa9",
        b"sk- space",
        b"sk-\x7f",
        KEY.encode() + b"\r\nx-injected: 1",
    ],
    ids=["nul", "100KB", "quotes", "non-ascii", "space", "del", "crlf"],
)
async def test_malformed_keys_are_401_without_a_lookup(value):
    spy = SpyStore(static())
    downstream = Downstream()
    app = AuthMiddleware(downstream, store=spy)
    for header in (bearer(value), (b"x-api-key", value), (b"api-key", value)):
        result = await call(app, [header])
        assert result.status == 401
        assert value not in result.body
        assert result.receive_calls == 0
    assert spy.lookups == []
    assert downstream.calls == []


async def test_lookup_by_hash_then_compare_digest(monkeypatch, tmp_path):
    compared: list[tuple[Any, Any]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    sqlite = SQLiteKeyStore(tmp_path / "k.sqlite3")
    issued = await issue_key(sqlite, name="sq")
    try:
        for store, key in ((static(), KEY), (sqlite, issued.key)):
            compared.clear()
            spied = SpyStore(store)
            downstream = Downstream()
            result = await call(AuthMiddleware(downstream, store=spied), [bearer(key)])
            assert result.status == 200
            assert spied.lookups == [hash_key(key)]
            assert compared == [(hash_key(key), hash_key(key))]
            assert downstream.calls[0][0] is not None
    finally:
        await sqlite.aclose()


async def test_header_precedence_schemes_and_ambiguity():
    downstream = Downstream()
    app = AuthMiddleware(downstream, store=static())
    assert (await call(app, [(b"api-key", KEY.encode())])).status == 200
    assert (await call(app, [(b"x-api-key", KEY.encode())])).status == 200
    assert (await call(app, [(b"authorization", b"bearer   " + KEY.encode() + b" ")])).status == 200
    # Another scheme is not a key; the x-api-key next to it is.
    basic = (b"authorization", b"Basic dXNlcjpwYXNz")
    assert (await call(app, [basic, (b"x-api-key", KEY.encode())])).status == 200
    assert (await call(app, [basic])).json()["error"]["message"].startswith("You didn't")
    # Authorization outranks x-api-key, whatever the order.
    result = await call(app, [(b"x-api-key", b"sk-wrong"), bearer(KEY)])
    assert result.status == 200
    assert downstream.calls[-1][0].key_id == "unit"
    # The same header twice with two different keys: refused, neither is guessed.
    assert (await call(app, [bearer(KEY), bearer(OTHER)])).status == 401
    assert (await call(app, [bearer(KEY), bearer(KEY)])).status == 200
    # Custom header names.
    custom = AuthMiddleware(downstream, store=static(), header_names=("X-Gateway-Key",))
    assert (await call(custom, [(b"x-gateway-key", KEY.encode())])).status == 200
    assert (await call(custom, [bearer(KEY)])).status == 401


async def test_the_body_read_for_a_check_is_replayed_to_a_foreign_app():
    downstream = Downstream()
    app = AuthMiddleware(downstream, store=static(models=("gpt-4o-mini",)))
    body = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
    result = await call(app, [bearer(KEY)], body=body)
    assert result.status == 200
    assert downstream.calls == [(downstream.calls[0][0], body)]
    assert result.receive_calls == 1  # read once, by the key layer


async def test_an_unrestricted_key_never_reads_the_body():
    downstream = Downstream()
    app = AuthMiddleware(downstream, store=static())
    result = await call(app, [bearer(KEY)], body=b"not json at all")
    assert result.status == 200
    assert downstream.calls[0][1] == b"not json at all"  # the app read it, not the key layer


async def test_an_azure_deployment_is_checked_from_the_path_alone():
    downstream = Downstream()
    app = AuthMiddleware(downstream, store=static(models=("prod-*",)))
    ok = await call(
        app, [(b"api-key", KEY.encode())], path="/openai/deployments/prod-4o/chat/completions"
    )
    assert ok.status == 200
    assert downstream.calls[0][1] != b""  # the body was left for the app to read
    refused = await call(
        app, [(b"api-key", KEY.encode())], path="/openai/deployments/dev-4o/chat/completions"
    )
    assert refused.status == 403
    assert "dev-4o" in refused.json()["error"]["message"]
    assert refused.receive_calls == 0


FORM = (b"content-type", b"multipart/form-data; boundary=xyz")


def form(model: str | None) -> bytes:
    body = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.mp3"\r\n\r\n'
    body += b"\xff" * 100 + b"\r\n"
    if model is not None:
        body += b'--xyz\r\nContent-Disposition: form-data; name="model"\r\n\r\n'
        body += model.encode() + b"\r\n"
    return body + b"--xyz--\r\n"


async def test_an_upload_is_checked_against_the_model_in_its_form():
    downstream = Downstream()
    app = AuthMiddleware(downstream, store=static(models=("whisper-1",)))
    path = "/v1/audio/transcriptions"
    ok = await call(app, [bearer(KEY), FORM], path=path, body=form("whisper-1"))
    assert ok.status == 200
    assert downstream.calls[0][1] == form("whisper-1")  # the body goes on unchanged
    refused = await call(app, [bearer(KEY), FORM], path=path, body=form("gpt-4o-transcribe"))
    assert refused.status == 403
    assert "gpt-4o-transcribe" in refused.json()["error"]["message"]
    malformed = await call(app, [bearer(KEY), FORM], path=path, body=b"--xyz\r\nno colon")
    assert malformed.status == 400
    assert "multipart" in malformed.json()["error"]["message"]
    # An unrestricted key's upload is not read here.
    free = await call(app, [bearer(OTHER), FORM], path=path, body=b"--xyz\r\nno colon")
    assert free.status == 200


async def test_what_cannot_be_checked_is_refused_for_a_restricted_key():
    downstream = Downstream()
    models = AuthMiddleware(downstream, store=static(models=("gpt-4o",)))
    # A billable upload (multipart) whose form names no model.
    upload = await call(
        models, [bearer(KEY), FORM], path="/v1/audio/transcriptions", body=form(None)
    )
    assert upload.status == 403
    # A JSON body without a model, on an endpoint that costs money.
    nameless = await call(models, [bearer(KEY)], body=b'{"messages":[]}')
    assert nameless.status == 403
    # A path the route table does not know (the layer used alone): refused for restricted keys,
    # let through for unrestricted ones.
    unknown = await call(models, [bearer(KEY)], path="/internal/thing")
    assert unknown.status == 403
    assert (await call(models, [bearer(OTHER)], path="/internal/thing")).status == 200
    # Read-only endpoints need no model.
    assert (await call(models, [bearer(KEY)], path="/v1/models", method="GET")).status == 200


async def test_an_invalid_body_is_400_for_a_key_that_needs_it():
    app = AuthMiddleware(Downstream(), store=static(tool_types=frozenset({"function"})))
    result = await call(app, [bearer(KEY)], body=b'{"model": "x", "tools": 3}')
    assert result.status == 400
    assert result.json()["error"]["type"] == "invalid_request_error"
    anthropic_result = await call(
        app, [(b"x-api-key", KEY.encode())], path="/v1/messages", body=b"{nope"
    )
    assert anthropic_result.status == 400
    assert anthropic_result.json()["type"] == "error"


async def test_anthropic_tools_without_a_type_are_custom_tools():
    app = AuthMiddleware(Downstream(), store=static(tool_types=frozenset({"custom"})))
    body = (
        b'{"model":"claude","max_tokens":1,"messages":[],"tools":[{"name":"f","input_schema":{}}]}'
    )
    assert (
        await call(app, [(b"x-api-key", KEY.encode())], path="/v1/messages", body=body)
    ).status == 200
    server_tool = body.replace(b'{"name"', b'{"type":"web_search_20250305","name"')
    refused = await call(app, [(b"x-api-key", KEY.encode())], path="/v1/messages", body=server_tool)
    assert refused.status == 403
    assert refused.json()["error"]["type"] == "permission_error"


async def test_a_client_leaving_during_the_body_ends_the_request_quietly():
    downstream = Downstream()
    app = AuthMiddleware(downstream, store=static(models=("gpt-4o",)))
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "root_path": "",
        "query_string": b"",
        "headers": [bearer(KEY)],
    }
    await app(scope, receive, send)
    assert sent == []
    assert downstream.calls == []
    assert get_context(scope).disconnected


async def test_a_failing_store_is_503_and_its_error_is_not_shown(caplog):
    class Broken:
        async def lookup(self, key_hash: str) -> KeyPolicy | None:
            raise OSError("could not connect to postgresql://admin:hunter2@db:5432/keys")

        async def aclose(self) -> None:
            return None

    caplog.set_level(logging.DEBUG)
    app = AuthMiddleware(Downstream(), store=Broken())
    result = await call(app, [bearer(KEY)])
    assert result.status == 503
    assert result.headers[b"retry-after"] == b"1"
    assert result.json()["error"]["code"] == "key_store_unavailable"
    anthropic_result = await call(app, [(b"x-api-key", KEY.encode())], path="/v1/messages")
    assert anthropic_result.json()["error"]["type"] == "api_error"
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "OSError" in logged
    assert "hunter2" not in logged + result.body.decode()


async def test_other_scopes_pass_through_untouched():
    downstream = Downstream()
    app = AuthMiddleware(downstream, store=static())

    async def nothing() -> dict[str, Any]:
        return {}

    async def ignore(message: Any) -> None:
        return None

    await app({"type": "lifespan"}, nothing, ignore)
    assert downstream.other_scopes == ["lifespan"]


async def test_a_websocket_upgrade_without_a_key_is_refused_before_reaching_the_app():
    downstream = Downstream()
    app = AuthMiddleware(downstream, store=static())
    sent: list[dict[str, Any]] = []

    async def nothing() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def keep(message: Any) -> None:
        sent.append(message)

    scope = {
        "type": "websocket",
        "path": "/v1/responses",
        "headers": [],
        "extensions": {"websocket.http.response": {}},
    }
    await app(scope, nothing, keep)
    assert downstream.other_scopes == []
    assert sent[0]["type"] == "websocket.http.response.start"
    assert sent[0]["status"] == 401


async def test_glob_matchers_are_compiled_once_per_allow_list():
    app = AuthMiddleware(Downstream(), store=static(models=("gpt-4o*", "o[34]-mini")))
    for model in ("gpt-4o", "gpt-4o-2024", "o3-mini", "o4-mini", "o5-mini"):
        await call(app, [bearer(KEY)], body=b'{"model":"%s"}' % model.encode())
    info = app._matcher.cache_info()
    assert (info.misses, info.hits) == (1, 4)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"store": object()},
        {"header_names": ()},
        {"header_names": "authorization"},
        {"header_names": ("bad header",)},
        {"max_key_length": 0},
    ],
)
def test_bad_configuration_is_refused_at_construction(kwargs):
    with pytest.raises(ConfigurationError):
        AuthMiddleware(Downstream(), **{"store": static(), **kwargs})


async def test_fastapi_app_with_the_auth_middleware_alone():
    # The docs' example: the key layer in front of the user's own OpenAI-compatible endpoint.
    api = FastAPI()

    @api.post("/v1/chat/completions")
    async def chat(request: Request) -> dict[str, Any]:
        policy = get_context(request.scope).key
        payload = await request.json()
        return {"key_id": policy.key_id if policy else None, "model": payload["model"]}

    api.add_middleware(AuthMiddleware, store=static(models=("gpt-4o*",)))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://t") as c:
        ok = await c.post(
            "/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": []},
            headers={"authorization": f"Bearer {KEY}"},
        )
        assert ok.json() == {"key_id": "unit", "model": "gpt-4o-mini"}
        refused = await c.post(
            "/v1/chat/completions", json={"model": "o3"}, headers={"x-api-key": KEY}
        )
        assert refused.status_code == 403
        missing = await c.post("/v1/chat/completions", json={"model": "gpt-4o"})
        assert missing.status_code == 401
