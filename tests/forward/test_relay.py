"""The relay's promises, checked over real sockets: headers, streaming, disconnects, failures."""

from __future__ import annotations

import asyncio
import gzip
import socket
import time

import anthropic
import httpx
import openai
import pytest

from asgi_llmguard import Timeouts, Upstream
from asgi_llmguard.testing import serve

from .conftest import UPSTREAM_KEY, forwarding_stack, upstreams_for

CHAT = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]'
STREAM_CHAT = CHAT + b', "stream": true}'
CHAT += b"}"


def _raw_request(path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Content-Length: {len(body)}"]
    if "Host" not in headers:
        lines.append("Host: gateway.test")
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _wait_until(predicate, timeout: float) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(0.005)
    return time.monotonic() - start


def test_hop_by_hop_and_client_credentials_never_reach_the_upstream(gateway_server, fake):
    headers = {
        "Host": "169.254.169.254",
        "Connection": "X-Internal, keep-alive",
        "X-Internal": "do-not-forward",
        "Keep-Alive": "timeout=5",
        "TE": "trailers",
        "Upgrade": "h2c",
        "Proxy-Connection": "keep-alive",
        "Proxy-Authorization": "Basic Zm9vOmJhcg==",
        "Authorization": "Bearer client-secret-key",
        "x-api-key": "client-secret-key",
        "api-key": "client-secret-key",
        "X-Forwarded-Host": "127.0.0.1:6379",
        "Content-Type": "application/json",
        "OpenAI-Beta": "kept",
    }
    with socket.create_connection((gateway_server.host, gateway_server.port), timeout=5) as sock:
        sock.sendall(_raw_request("/v1/chat/completions", CHAT, headers))
        head = sock.recv(65536)
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    seen = fake.requests[-1]
    names = {k for k, _ in seen.headers}
    for dropped in (
        "x-internal",
        "keep-alive",
        "te",
        "upgrade",
        "proxy-connection",
        "proxy-authorization",
        "x-api-key",
        "api-key",
        "x-forwarded-host",
    ):
        assert dropped not in names, dropped
    assert seen.header("authorization") == f"Bearer {UPSTREAM_KEY}"
    assert seen.header("host") != "169.254.169.254"
    assert seen.header("openai-beta") == "kept"
    assert (seen.header("x-request-id") or "").startswith("req_")
    assert b"client-secret-key" not in repr(seen.headers).encode()


def test_first_event_is_not_buffered(gateway_server):
    # 4 chunks 0.4 s apart: the first must reach the client long before the last is produced.
    with httpx.Client(timeout=10) as client:
        start = time.monotonic()
        with client.stream(
            "POST",
            f"{gateway_server.url}/v1/chat/completions",
            content=STREAM_CHAT,
            headers={"x-fake-chunk-delay": "0.4", "x-fake-chunks": "4"},
        ) as resp:
            assert resp.headers["content-type"].startswith("text/event-stream")
            chunks = resp.iter_raw()
            first = next(chunks)
            first_at = time.monotonic() - start
            rest = b"".join(chunks)
            total = time.monotonic() - start
    assert first.startswith(b"data: ")
    assert first_at < 0.35, first_at
    assert total > 1.2
    assert rest.rstrip().endswith(b"data: [DONE]")


def test_query_string_and_bodies_relayed_byte_for_byte(gateway_server, fake):
    body = b'{"model":"m","input":"caf\xc3\xa9 \xe2\x98\x95","encoding_format":"float"}'
    with httpx.Client() as client:
        resp = client.post(
            f"{gateway_server.url}/v1/embeddings?trace=a%20b&x=1",
            content=body,
            headers={"content-type": "application/json"},
        )
    assert resp.status_code == 200
    seen = fake.requests[-1]
    assert seen.body == body
    assert seen.query_string == "trace=a%20b&x=1"


def test_content_encoding_is_preserved(engine):
    payload = b'{"object": "list", "data": []}' * 50
    compressed = gzip.compress(payload)

    async def gzip_upstream(scope, receive, send):
        if scope["type"] != "http":
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-encoding", b"gzip"),
                    (b"content-length", str(len(compressed)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": compressed})

    with serve(gzip_upstream) as up:
        client = httpx.AsyncClient() if engine == "httpx" else None
        gw = forwarding_stack(upstreams=[Upstream("openai", f"{up.url}/v1")], client=client)
        with (
            serve(gw) as server,
            httpx.Client() as http,
            http.stream(
                "GET", f"{server.url}/v1/models", headers={"accept-encoding": "gzip"}
            ) as resp,
        ):
            raw = b"".join(resp.iter_raw())
            assert resp.headers["content-encoding"] == "gzip"
            assert resp.headers["content-length"] == str(len(compressed))
    assert raw == compressed


def test_redirects_are_relayed_not_followed(engine):
    hits = []

    async def redirecting(scope, receive, send):
        if scope["type"] != "http":
            return
        hits.append(scope["path"])
        await send(
            {
                "type": "http.response.start",
                "status": 307,
                "headers": [(b"location", b"http://169.254.169.254/latest/meta-data")],
            }
        )
        await send({"type": "http.response.body", "body": b""})

    with serve(redirecting) as up:
        client = httpx.AsyncClient() if engine == "httpx" else None
        gw = forwarding_stack(upstreams=[Upstream("openai", f"{up.url}/v1")], client=client)
        with serve(gw) as server:
            resp = httpx.post(f"{server.url}/v1/chat/completions", content=CHAT)
    assert resp.status_code == 307
    assert hits == ["/v1/chat/completions"]


def test_unknown_route_and_method_in_provider_shapes(gateway_server, fake):
    resp = httpx.post(f"{gateway_server.url}/v1/chat/completions/", content=CHAT)
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "unknown_url"
    resp = httpx.get(f"{gateway_server.url}/v1/messages")
    assert resp.status_code == 405
    assert resp.json()["type"] == "error"
    assert resp.headers["allow"] == "POST"
    assert len(fake.requests) == 0


# ---------------------------------------------------------------- upstream failures


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_upstream_is_502_in_each_providers_shape(engine):
    port = _free_port()  # nothing listens here
    client = httpx.AsyncClient() if engine == "httpx" else None
    gw = forwarding_stack(upstreams=upstreams_for(f"http://127.0.0.1:{port}"), client=client)
    with serve(gw) as server:
        with pytest.raises(openai.InternalServerError) as oai:
            openai.OpenAI(
                base_url=f"{server.url}/v1", api_key="k", max_retries=0
            ).chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
        with pytest.raises(anthropic.APIStatusError) as ant:
            anthropic.Anthropic(base_url=server.url, api_key="k", max_retries=0).messages.create(
                model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}]
            )
    assert oai.value.status_code == 502
    assert oai.value.body["code"] == "upstream_error"  # type: ignore[index]
    assert ant.value.status_code == 502
    assert ant.value.body["type"] == "error"  # type: ignore[index]


def test_slow_upstream_is_504_after_the_first_byte_timeout(engine, fake_server, fake):
    client = httpx.AsyncClient() if engine == "httpx" else None
    gw = forwarding_stack(
        upstreams=upstreams_for(fake_server.url),
        client=client,
        timeouts=Timeouts(first_byte=0.3, write=0.1),
    )
    with serve(gw) as server:
        start = time.monotonic()
        resp = httpx.post(
            f"{server.url}/v1/chat/completions", content=CHAT, headers={"x-fake-latency": "3"}
        )
        elapsed = time.monotonic() - start
    assert resp.status_code == 504
    assert resp.json()["error"]["message"] == "The upstream did not answer in time."
    assert elapsed < 2
    # The abandoned exchange was closed, not left running at the upstream.
    _wait_until(lambda: fake.disconnects == 1, 1.0)


def test_stream_broken_mid_way_ends_with_a_terminal_sse_error(gateway_server):
    client = openai.OpenAI(
        base_url=f"{gateway_server.url}/v1",
        api_key="k",
        max_retries=0,
        default_headers={"x-fake-reset-after-chunks": "3"},
    )
    stream = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "x"}], stream=True
    )
    got = []

    def consume() -> None:
        got.extend(stream)

    with pytest.raises(openai.APIError) as info:
        consume()
    assert len(got) >= 3
    assert "broke" in str(info.value)

    with httpx.Client() as http:
        resp = http.post(
            f"{gateway_server.url}/v1/messages",
            content=(
                b'{"model":"c","max_tokens":50,"stream":true,'
                b'"messages":[{"role":"user","content":"hi"}]}'
            ),
            headers={"x-fake-reset-after-chunks": "2"},
        )
    assert resp.status_code == 200
    tail = resp.content[resp.content.rindex(b"\n\nevent: error") :]
    assert tail.startswith(b"\n\nevent: error\ndata: {")
    assert b'"type":"error"' in tail
    assert resp.content.endswith(b"\n\n")


def test_anthropic_sdk_raises_on_a_broken_stream(gateway_server):
    client = anthropic.Anthropic(
        base_url=gateway_server.url,
        api_key="k",
        max_retries=0,
        default_headers={"x-fake-reset-after-chunks": "2"},
    )
    with (
        pytest.raises(anthropic.APIStatusError),
        client.messages.stream(
            model="c", max_tokens=50, messages=[{"role": "user", "content": "x"}]
        ) as stream,
    ):
        for _ in stream.text_stream:
            pass


def test_idle_upstream_mid_stream_trips_the_idle_timeout(engine, fake_server, fake):
    client = httpx.AsyncClient() if engine == "httpx" else None
    gw = forwarding_stack(
        upstreams=upstreams_for(fake_server.url), client=client, timeouts=Timeouts(idle=0.3)
    )
    with serve(gw) as server, httpx.Client(timeout=10) as http:
        start = time.monotonic()
        resp = http.post(
            f"{server.url}/v1/chat/completions",
            content=STREAM_CHAT,
            headers={"x-fake-chunk-delay": "5", "x-fake-chunks": "3"},
        )
        elapsed = time.monotonic() - start
    assert resp.status_code == 200
    assert b"went silent" in resp.content
    assert resp.content.endswith(b"\n\n")
    assert elapsed < 2.5
    _wait_until(lambda: fake.disconnects == 1, 1.0)


def test_long_pauses_within_the_timeouts_are_not_cut(engine, fake_server):
    client = httpx.AsyncClient() if engine == "httpx" else None
    gw = forwarding_stack(
        upstreams=upstreams_for(fake_server.url),
        client=client,
        timeouts=Timeouts(first_byte=2, idle=1),
    )
    with serve(gw) as server, httpx.Client(timeout=10) as http:
        resp = http.post(
            f"{server.url}/v1/chat/completions",
            content=STREAM_CHAT,
            headers={"x-fake-latency": "0.8", "x-fake-chunk-delay": "0.6", "x-fake-chunks": "3"},
        )
    assert resp.status_code == 200
    assert resp.content.rstrip().endswith(b"data: [DONE]")
    assert b"error" not in resp.content


# ---------------------------------------------------------------- client disconnects


def _read_events(sock: socket.socket, count: int) -> None:
    buf = b""
    while buf.count(b"data: ") < count:
        data = sock.recv(65536)
        assert data, "gateway closed the connection"
        buf += data


def test_disconnect_mid_stream_closes_the_upstream_within_a_second(gateway_server, fake):
    with socket.create_connection((gateway_server.host, gateway_server.port), timeout=5) as sock:
        sock.sendall(
            _raw_request(
                "/v1/chat/completions",
                STREAM_CHAT,
                {"x-fake-chunk-delay": "0.1", "x-fake-chunks": "100"},
            )
        )
        _read_events(sock, 5)
    took = _wait_until(lambda: fake.disconnects == 1, 1.0)
    assert took < 1.0
    assert fake.active_streams == 0
    _wait_until(lambda: gateway_server.connections_in_use() == 0, 1.0)


def test_disconnect_while_waiting_for_headers_cancels_the_upstream(gateway_server, fake):
    with socket.create_connection((gateway_server.host, gateway_server.port), timeout=5) as sock:
        sock.sendall(_raw_request("/v1/chat/completions", CHAT, {"x-fake-latency": "10"}))
        _wait_until(lambda: len(fake.requests) == 1, 2.0)
    _wait_until(lambda: fake.disconnects == 1, 1.0)
    _wait_until(lambda: gateway_server.connections_in_use() == 0, 1.0)


def test_a_thousand_disconnects_leave_no_pool_slot_behind(gateway_server, fake):
    request = _raw_request(
        "/v1/chat/completions", STREAM_CHAT, {"x-fake-chunk-delay": "0.02", "x-fake-chunks": "50"}
    )

    async def one() -> None:
        reader, writer = await asyncio.open_connection(gateway_server.host, gateway_server.port)
        writer.write(request)
        seen = b""
        while seen.count(b"data: ") < 2:
            data = await reader.read(65536)
            assert data
            seen += data
        writer.transport.abort()

    async def run() -> None:
        sem = asyncio.Semaphore(50)

        async def bounded() -> None:
            async with sem:
                await one()

        await asyncio.gather(*(bounded() for _ in range(1000)))

    asyncio.run(run())
    _wait_until(lambda: fake.disconnects == 1000, 5.0)
    _wait_until(lambda: gateway_server.connections_in_use() == 0, 2.0)
    assert fake.active_streams == 0
    # And the gateway still serves normally afterwards.
    resp = httpx.post(f"{gateway_server.url}/v1/chat/completions", content=CHAT)
    assert resp.status_code == 200
