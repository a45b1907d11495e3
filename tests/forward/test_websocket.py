"""WebSocket sessions through a served gateway: the Responses API's WebSocket mode and the
Realtime API, with the real openai SDK and with raw sockets, in front of the fake provider."""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
from websockets.asyncio.client import connect as aconnect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from asgi_llmguard import (
    Budget,
    KeyPolicy,
    MemoryBudgetStore,
    RateLimit,
    Routing,
    SQLiteSink,
    StaticKey,
    StaticKeyStore,
    Upstream,
    UsagePipeline,
    WebSocketLimits,
    build_stack,
    hash_key,
)
from asgi_llmguard.testing import FakeProvider, RunningServer, serve, serve_async
from asgi_llmguard.usage.pricing import PriceTable, estimate_nanos

KEY = "sk-llmg-ws-0123456789abcdefghijklmnopqrstuvwxyz"
UPSTREAM_KEY = "sk-upstream-ws-secret"
CREATE = {"type": "response.create", "model": "gpt-4.1-mini", "input": "say hello to me"}


@dataclass
class Gateway:
    server: RunningServer
    fake: FakeProvider
    ledger: Path
    app: Any

    @property
    def ws_url(self) -> str:
        return self.server.url.replace("http://", "ws://")

    def rows(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        rows: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            rows = self._read()
            if len(rows) >= count:
                break
            time.sleep(0.05)
        assert len(rows) == count, rows
        return rows

    def _read(self) -> list[dict[str, Any]]:
        if not self.ledger.exists():
            return []
        with sqlite3.connect(self.ledger) as db:
            db.row_factory = sqlite3.Row
            if not db.execute("SELECT 1 FROM sqlite_master WHERE name='usage_events'").fetchone():
                return []
            return [dict(r) for r in db.execute("SELECT * FROM usage_events ORDER BY started_at")]

    def wait(self, predicate: Any, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, "condition not reached"
            time.sleep(0.02)


@pytest.fixture
def gateway(tmp_path):
    fake = FakeProvider(api_key=UPSTREAM_KEY)
    keys = StaticKeyStore(
        [StaticKey(KeyPolicy(key_id="ws", max_concurrency=50_000), key_hash=hash_key(KEY))]
    )
    ledger = tmp_path / "ledger.sqlite3"
    pipeline = UsagePipeline(
        [SQLiteSink(str(ledger))], spill_path=str(tmp_path / "spill"), flush_interval=0.05
    )
    with serve(fake) as upstream:
        app = build_stack(
            upstreams=[Upstream("openai", f"{upstream.url}/v1", api_key=UPSTREAM_KEY, name="oa")],
            keys=keys,
            pipeline=pipeline,
            websockets=WebSocketLimits(max_message_bytes=64 * 1024),
        )
        with serve(app) as server:
            yield Gateway(server, fake, ledger, app)


def _auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _until(ws: Any, kind: str) -> list[dict[str, Any]]:
    events = []
    while True:
        event = json.loads(ws.recv(timeout=5))
        events.append(event)
        if event["type"] in (kind, "error"):
            return events


def _until_closed(ws: Any) -> tuple[list[dict[str, Any]], ConnectionClosed]:
    events = []
    try:
        while True:
            events.append(json.loads(ws.recv(timeout=5)))
    except ConnectionClosed as closed:
        return events, closed


async def _until_closed_async(ws: Any) -> ConnectionClosed:
    try:
        while True:
            await ws.recv()
    except ConnectionClosed as closed:
        return closed


def test_an_upgrade_without_a_valid_key_is_refused_with_401_before_accepting(gateway):
    for headers in ({}, _auth("sk-llmg-wrong")):
        with pytest.raises(InvalidStatus) as refused:
            connect(f"{gateway.ws_url}/v1/responses", additional_headers=headers, open_timeout=5)
        assert refused.value.response.status_code == 401
        assert b"invalid_api_key" in refused.value.response.body
    assert not gateway.fake.requests  # the upstream was never opened
    assert gateway.rows(0) == []


def test_responses_websocket_turns_are_relayed_and_each_recorded(gateway):
    with connect(f"{gateway.ws_url}/v1/responses", additional_headers=_auth()) as ws:
        for _ in range(3):
            ws.send(json.dumps(CREATE))
            events = _until(ws, "response.completed")
            assert events[-1]["type"] == "response.completed", events[-1]
            deltas = [e["delta"] for e in events if e["type"] == "response.output_text.delta"]
            assert "".join(deltas) == "Hello from the fake provider."
    upgrade = gateway.fake.requests[0]
    assert upgrade.header("authorization") == f"Bearer {UPSTREAM_KEY}"
    assert KEY not in json.dumps(upgrade.headers)
    rows = gateway.rows(3)
    assert len({r["request_id"] for r in rows}) == 3
    assert {r["outcome"] for r in rows} == {"ok"}
    assert {r["endpoint"] for r in rows} == {"responses"}
    assert {(r["input_tokens"], r["output_tokens"]) for r in rows} == {(4, 5)}
    assert {r["key_id"] for r in rows} == {"ws"}
    assert all(r["cost_nanos"] > 0 for r in rows)


def test_the_key_subprotocol_is_accepted_and_never_echoed_nor_sent_upstream(gateway):
    protocols = ["realtime", f"openai-insecure-api-key.{KEY}"]
    with connect(f"{gateway.ws_url}/v1/realtime?model=gpt-realtime", subprotocols=protocols) as ws:
        assert ws.subprotocol == "realtime"
        assert json.loads(ws.recv(timeout=5))["type"] == "session.created"
    upgrade = gateway.fake.requests[0]
    assert KEY not in json.dumps(upgrade.headers)
    assert upgrade.header("sec-websocket-protocol") == "realtime"


def test_a_message_over_the_limit_closes_the_session_with_1009(gateway):
    with connect(f"{gateway.ws_url}/v1/responses", additional_headers=_auth(), max_size=None) as ws:
        ws.send(json.dumps({**CREATE, "input": "word " * 20_000}))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1009
    gateway.wait(lambda: gateway.app.forwarder.websockets.open == 0)
    assert not [r for r in gateway.fake.requests if r.method == "WEBSOCKET"]


def test_a_client_vanishing_mid_turn_leaves_a_cancelled_record_and_no_slot(gateway):
    headers = {**_auth(), "x-fake-chunk-delay": "0.2"}
    with connect(f"{gateway.ws_url}/v1/responses", additional_headers=headers) as ws:
        ws.send(json.dumps(CREATE))
        assert json.loads(ws.recv(timeout=5))["type"] == "response.created"
        ws.socket.shutdown(2)  # gone without a close frame
    (row,) = gateway.rows(1)
    assert row["outcome"] == "cancelled"
    assert row["reason"] == "client_disconnected"
    assert row["estimated"]
    assert row["input_tokens"] > 0
    gateway.wait(lambda: gateway.app.forwarder.websockets.open == 0)
    gateway.wait(lambda: not gateway.app.concurrency.in_flight)
    gateway.wait(lambda: gateway.fake.active_streams == 0)


def test_an_upstream_vanishing_mid_turn_closes_the_client_and_keeps_the_record(gateway):
    headers = {**_auth(), "x-fake-reset-after-chunks": "2"}
    with connect(f"{gateway.ws_url}/v1/responses", additional_headers=headers) as ws:
        ws.send(json.dumps(CREATE))
        events, closed = _until_closed(ws)
    assert [e["type"] for e in events].count("response.output_text.delta") == 2
    assert closed.rcvd is not None
    assert closed.rcvd.code == 1011
    (row,) = gateway.rows(1)
    assert row["outcome"] == "cancelled"
    assert row["output_tokens"] == 2
    assert row["estimated"]
    gateway.wait(lambda: not gateway.app.concurrency.in_flight)


def test_the_realtime_sdk_client_gets_its_answer_and_audio_is_priced_apart(gateway):
    client = openai.OpenAI(base_url=f"{gateway.server.url}/v1", api_key=KEY)
    with client.realtime.connect(model="gpt-realtime") as conn:
        assert conn.recv().type == "session.created"
        conn.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "hello there gateway"}],
                },
            }
        )
        conn.send({"type": "input_audio_buffer.append", "audio": "AAAA" * 100})
        conn.send({"type": "input_audio_buffer.commit"})
        conn.send({"type": "response.create"})
        for event in conn:
            if event.type == "response.done":
                usage = event.response.usage
                break
    assert usage is not None
    assert usage.output_token_details.audio_tokens == 20
    (row,) = gateway.rows(1)
    assert row["endpoint"] == "realtime"
    assert row["model"] == "gpt-realtime"
    assert row["input_tokens"] == usage.input_tokens
    assert row["output_tokens"] == 25
    # gpt-realtime: text in $4/M, audio in $32/M, text out $16/M, audio out $64/M
    text_in = usage.input_token_details.text_tokens
    audio_in = usage.input_token_details.audio_tokens
    expected = text_in * 4000 + audio_in * 32000 + 5 * 16000 + 20 * 64000
    assert row["cost_nanos"] == expected


def test_the_responses_sdk_websocket_client_gets_its_answer(gateway):
    client = openai.OpenAI(base_url=f"{gateway.server.url}/v1", api_key=KEY)
    with client.responses.connect() as conn:
        conn.send(CREATE)
        for event in conn:
            if event.type == "response.completed":
                assert event.response.usage.output_tokens == 5
                break
    (row,) = gateway.rows(1)
    assert row["outcome"] == "ok"


def test_a_thousand_sessions_opened_and_dropped_leave_nothing_behind(gateway):
    async def run() -> None:

        async def one(i: int) -> None:
            ws = await aconnect(f"{gateway.ws_url}/v1/responses", additional_headers=_auth())
            if i % 2:
                await ws.close()
            else:
                ws.transport.abort()

        for start in range(0, 1000, 100):
            await asyncio.gather(*(one(i) for i in range(start, start + 100)))

    asyncio.run(run())
    relay = gateway.app.forwarder.websockets
    gateway.wait(lambda: relay.open == 0, timeout=20)
    gateway.wait(lambda: not gateway.app.concurrency.in_flight, timeout=20)
    gateway.wait(lambda: gateway.fake.active_streams == 0, timeout=20)
    gateway.wait(lambda: gateway.app.drain_layer.in_flight == 0, timeout=20)
    assert gateway.rows(0) == []


async def test_a_draining_gateway_closes_open_sessions_with_1012_after_the_grace(tmp_path):
    fake = FakeProvider(api_key=UPSTREAM_KEY, chunk_delay=0.5)
    keys = StaticKeyStore([StaticKey(KeyPolicy(key_id="ws"), key_hash=hash_key(KEY))])
    ledger = tmp_path / "ledger.sqlite3"
    pipeline = UsagePipeline(
        [SQLiteSink(str(ledger))], spill_path=str(tmp_path / "spill"), flush_interval=0.05
    )
    async with serve_async(fake) as upstream:
        app = build_stack(
            upstreams=[Upstream("openai", f"{upstream.url}/v1", api_key=UPSTREAM_KEY, name="oa")],
            keys=keys,
            pipeline=pipeline,
        )
        async with serve_async(app) as server:
            url = server.url.replace("http://", "ws://") + "/v1/responses"
            async with aconnect(url, additional_headers=_auth()) as ws:
                await ws.send(json.dumps(CREATE))
                assert json.loads(await ws.recv())["type"] == "response.created"
                assert await app.drain(0.2) == 1
                closed = await _until_closed_async(ws)
            assert closed.rcvd is not None
            assert closed.rcvd.code == 1012
            assert "restarting" in closed.rcvd.reason
            assert not app.concurrency.in_flight
            with pytest.raises(InvalidStatus) as refused:
                await aconnect(url, additional_headers=_auth(), open_timeout=5)
            assert refused.value.response.status_code == 503
            await pipeline.aclose() if hasattr(pipeline, "aclose") else None
    gateway = Gateway(server, fake, ledger, app)
    (row,) = gateway.rows(1)
    assert row["outcome"] == "cancelled"
    assert row["reason"] == "shutdown"


def test_the_access_log_has_one_line_per_session_with_its_turns(gateway, caplog):
    caplog.set_level("INFO", logger="asgi_llmguard.access")
    with connect(f"{gateway.ws_url}/v1/responses", additional_headers=_auth()) as ws:
        for _ in range(2):
            ws.send(json.dumps(CREATE))
            _until(ws, "response.completed")
    gateway.wait(lambda: gateway.app.forwarder.websockets.open == 0)
    lines = [json.loads(r.message) for r in caplog.records if r.name == "asgi_llmguard.access"]
    (line,) = [x for x in lines if x.get("websocket")]
    assert line["status"] == 101
    assert line["turns"] == 2
    assert line["key_id"] == "ws"
    assert line["close_code"] == 1000
    assert line["tokens"] == 2 * (4 + 5)


@pytest.fixture
def azure_gateway(tmp_path):
    fake = FakeProvider(api_key=UPSTREAM_KEY)
    keys = StaticKeyStore([StaticKey(KeyPolicy(key_id="ws"), key_hash=hash_key(KEY))])
    ledger = tmp_path / "ledger.sqlite3"
    pipeline = UsagePipeline(
        [SQLiteSink(str(ledger))], spill_path=str(tmp_path / "spill"), flush_interval=0.05
    )
    with serve(fake) as upstream:
        azure = Upstream(
            "azure",
            upstream.url,
            api_key=UPSTREAM_KEY,
            name="az",
            api_version="2025-04-01-preview",
            deployments={"gpt-realtime": "rt-deployment"},
        )
        app = build_stack(upstreams=[azure], keys=keys, pipeline=pipeline)
        with serve(app) as server:
            yield Gateway(server, fake, ledger, app)


def test_realtime_on_an_azure_upstream_from_the_openai_and_azure_sdks(azure_gateway):
    gateway = azure_gateway
    client = openai.OpenAI(base_url=f"{gateway.server.url}/v1", api_key=KEY)
    with client.realtime.connect(model="gpt-realtime") as conn:
        assert conn.recv().type == "session.created"
        conn.send({"type": "response.create"})
        for event in conn:
            if event.type == "response.done":
                break
    upgrade = gateway.fake.requests[0]
    assert upgrade.path == "/openai/realtime"
    assert "deployment=rt-deployment" in upgrade.query_string
    assert "api-version=2025-04-01-preview" in upgrade.query_string
    assert upgrade.header("api-key") == UPSTREAM_KEY
    assert upgrade.header("authorization") is None

    azure = openai.AzureOpenAI(
        azure_endpoint=gateway.server.url,
        api_key=KEY,
        api_version="2025-04-01-preview",
        websocket_base_url=gateway.ws_url + "/openai",
    )
    with azure.realtime.connect(model="gpt-realtime") as conn:
        assert conn.recv().type == "session.created"
        conn.send({"type": "response.create"})
        for event in conn:
            if event.type == "response.done":
                break
    second = [r for r in gateway.fake.requests if r.method == "GET"][1]
    assert second.path == "/openai/realtime"
    assert second.header("api-key") == UPSTREAM_KEY
    rows = gateway.rows(2)
    assert [r["provider"] for r in rows] == ["openai", "azure"]
    assert {r["model"] for r in rows} == {"gpt-realtime"}
    assert {r["output_tokens"] for r in rows} == {25}
    assert all(r["cost_nanos"] > 0 for r in rows)


SMALL = {**CREATE, "max_output_tokens": 5}
#: A turn of ``SMALL`` costs 4 input and 5 output tokens of gpt-4.1-mini: 9,600 nano-dollars.
TURN_NANOS = 4 * 400 + 5 * 1600
#: What the budget reserves for it: its frame's size as prompt, at the dearest prompt price.
RESERVED_NANOS = estimate_nanos(
    PriceTable.default().resolve("gpt-4.1-mini"), len(json.dumps(SMALL)) // 4 + 1, 5
)
POOR_BUDGET_NANOS = RESERVED_NANOS + TURN_NANOS + TURN_NANOS // 2


@pytest.fixture
def guarded(tmp_path):
    """A gateway whose keys are limited: two requests a minute, one model, a budget of a few
    dollars' millionths; and short idle sessions."""
    fake = FakeProvider(api_key=UPSTREAM_KEY)
    limited = KeyPolicy(key_id="limited", rate_limits=(RateLimit("2/minute"),))
    narrow = KeyPolicy(key_id="narrow", models=("gpt-4.1-mini",))
    poor = KeyPolicy(key_id="poor", budget=Budget(total=POOR_BUDGET_NANOS / 1e9))
    keys = StaticKeyStore(
        [
            StaticKey(limited, key_hash=hash_key(KEY + "-limited")),
            StaticKey(narrow, key_hash=hash_key(KEY + "-narrow")),
            StaticKey(poor, key_hash=hash_key(KEY + "-poor")),
        ]
    )
    ledger = tmp_path / "ledger.sqlite3"
    pipeline = UsagePipeline(
        [SQLiteSink(str(ledger))], spill_path=str(tmp_path / "spill"), flush_interval=0.05
    )
    with serve(fake) as upstream:
        app = build_stack(
            upstreams=[Upstream("openai", f"{upstream.url}/v1", api_key=UPSTREAM_KEY, name="oa")],
            keys=keys,
            pipeline=pipeline,
            usage={"budgets": MemoryBudgetStore()},
            websockets=WebSocketLimits(idle_timeout=0.5),
        )
        with serve(app) as server:
            yield Gateway(server, fake, ledger, app)


def _turns(gateway: Gateway, key: str, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Send each event as a turn on one session; the last event each turn got."""
    answers = []
    with connect(f"{gateway.ws_url}/v1/responses", additional_headers=_auth(key)) as ws:
        for event in events:
            ws.send(json.dumps(event))
            answers.append(_until(ws, "response.completed")[-1])
    return answers


def test_every_turn_counts_against_the_rate_limit_and_a_refused_turn_keeps_the_session(guarded):
    answers = _turns(guarded, KEY + "-limited", [CREATE, CREATE, CREATE])
    assert [a["type"] for a in answers] == ["response.completed", "response.completed", "error"]
    refused = answers[2]
    assert refused["status"] == 429
    assert refused["error"]["code"] == "rate_limit_exceeded"
    assert int(refused["headers"]["retry-after"]) >= 1
    assert len([r for r in guarded.fake.requests if r.method == "WEBSOCKET"]) == 2


def test_a_turn_for_a_model_the_key_may_not_use_is_refused_with_403(guarded):
    other = {**CREATE, "model": "gpt-4o"}
    answers = _turns(guarded, KEY + "-narrow", [other, CREATE])
    assert answers[0]["type"] == "error"
    assert answers[0]["status"] == 403
    assert answers[0]["error"]["code"] == "model_not_allowed"
    assert answers[1]["type"] == "response.completed"
    turns = [r for r in guarded.fake.requests if r.method == "WEBSOCKET"]
    assert [t.json()["model"] for t in turns] == ["gpt-4.1-mini"]


def test_a_realtime_upgrade_for_a_model_the_key_may_not_use_is_refused_before_accepting(guarded):
    with pytest.raises(InvalidStatus) as refused:
        connect(
            f"{guarded.ws_url}/v1/realtime?model=gpt-realtime",
            additional_headers=_auth(KEY + "-narrow"),
            open_timeout=5,
        )
    assert refused.value.response.status_code == 403
    assert not guarded.fake.requests


def test_a_turn_over_the_budget_is_refused_and_settled_turns_are_charged(guarded):
    # Two turns' cost plus one reservation fit in the budget; a third reservation does not.
    answers = _turns(guarded, KEY + "-poor", [SMALL] * 3)
    assert [a["type"] for a in answers] == ["response.completed", "response.completed", "error"]
    assert answers[2]["status"] == 429
    assert answers[2]["error"]["code"] == "insufficient_quota"
    rows = guarded.rows(3)
    assert [r["outcome"] for r in rows] == ["ok", "ok", "rejected"]
    assert [r["cost_nanos"] for r in rows] == [TURN_NANOS, TURN_NANOS, 0]


def test_an_upstream_error_event_ends_its_turn_as_an_upstream_error(guarded):
    # The gateway has nothing against it; the upstream refuses it (instructions must be text).
    answers = _turns(guarded, KEY + "-limited", [{**CREATE, "instructions": 5}, CREATE])
    assert answers[0]["type"] == "error"
    assert answers[0]["status"] == 400
    assert answers[1]["type"] == "response.completed"
    refused, served = guarded.rows(2)
    assert refused["outcome"] == "upstream_error"
    assert refused["status"] == 400
    assert refused["cost_nanos"] == 0
    assert served["outcome"] == "ok"
    assert served["output_tokens"] == 5


def test_an_idle_session_is_closed_with_1001(guarded):
    with connect(
        f"{guarded.ws_url}/v1/responses", additional_headers=_auth(KEY + "-limited")
    ) as ws:
        _, closed = _until_closed(ws)
    assert closed.rcvd is not None
    assert closed.rcvd.code == 1001
    assert "idle" in closed.rcvd.reason


def test_a_turn_sent_as_a_binary_frame_is_still_counted(guarded):
    key = KEY + "-limited"
    with connect(f"{guarded.ws_url}/v1/responses", additional_headers=_auth(key)) as ws:
        for _ in range(3):
            ws.send(json.dumps(CREATE).encode())
        answers = [_until(ws, "response.completed")[-1] for _ in range(3)]
    assert [a["type"] for a in answers].count("error") == 1


def test_an_upgrade_to_a_path_without_a_websocket_is_refused_with_404(gateway):
    for path in ("/v1/chat/completions", "/v1/nothing"):
        with pytest.raises(InvalidStatus) as refused:
            connect(f"{gateway.ws_url}{path}", additional_headers=_auth(), open_timeout=5)
        assert refused.value.response.status_code == 404
    assert not gateway.fake.requests


def test_an_upstream_that_refuses_the_upgrade_refuses_the_client(gateway):
    headers = {**_auth(), "x-fake-status": "503"}
    with pytest.raises(InvalidStatus) as refused:
        connect(f"{gateway.ws_url}/v1/responses", additional_headers=headers, open_timeout=5)
    assert refused.value.response.status_code == 502
    assert b"upstream_error" in refused.value.response.body
    headers = {**_auth(), "x-fake-status": "429"}
    with pytest.raises(InvalidStatus) as refused:
        connect(f"{gateway.ws_url}/v1/responses", additional_headers=headers, open_timeout=5)
    assert refused.value.response.status_code == 429
    gateway.wait(lambda: not gateway.app.concurrency.in_flight)


def test_an_unreachable_upstream_refuses_the_upgrade_with_502():
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    app = build_stack(upstreams=[Upstream("openai", f"http://127.0.0.1:{dead}/v1", api_key="k")])
    with serve(app) as server:
        url = server.url.replace("http://", "ws://") + "/v1/responses"
        with pytest.raises(InvalidStatus) as refused:
            connect(url, open_timeout=5)
    assert refused.value.response.status_code == 502
    assert app.forwarder.websockets.open == 0


def test_a_response_the_realtime_server_starts_by_itself_is_recorded(gateway):
    """Voice activity detection: the upstream answers speech without a ``response.create``."""
    url = f"{gateway.ws_url}/v1/realtime?model=gpt-realtime"
    with connect(url, additional_headers=_auth()) as ws:
        assert json.loads(ws.recv(timeout=5))["type"] == "session.created"
        vad = {"audio": {"input": {"turn_detection": {"type": "server_vad"}}}}
        ws.send(json.dumps({"type": "session.update", "session": vad}))
        assert _until(ws, "session.updated")[-1]["type"] == "session.updated"
        ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": "AAAA" * 75}))
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        done = _until(ws, "response.done")[-1]
    assert done["type"] == "response.done"
    (row,) = gateway.rows(1)
    assert row["outcome"] == "ok"
    assert row["model"] == "gpt-realtime"
    assert row["input_tokens"] == 3
    assert row["output_tokens"] == 25
    assert row["cost_nanos"] == 3 * 32000 + 5 * 16000 + 20 * 64000


def test_an_upstream_refusing_the_upgrade_fails_over_and_cools_down(tmp_path):
    broken, healthy = FakeProvider(status=503), FakeProvider()
    ledger = tmp_path / "ledger.sqlite3"
    pipeline = UsagePipeline(
        [SQLiteSink(str(ledger))], spill_path=str(tmp_path / "spill"), flush_interval=0.05
    )
    with serve(broken) as first, serve(healthy) as second:
        app = build_stack(
            upstreams=[
                Upstream("openai", f"{first.url}/v1", api_key="k1", name="first"),
                Upstream("openai", f"{second.url}/v1", api_key="k2", name="second"),
            ],
            pipeline=pipeline,
            routing=Routing(selector="fill-first"),
        )
        with serve(app) as server:
            url = server.url.replace("http://", "ws://") + "/v1/realtime?model=gpt-realtime"
            for _ in range(3):
                with connect(url) as ws:
                    assert json.loads(ws.recv(timeout=5))["type"] == "session.created"
    assert len(broken.requests) == 1  # tried once, then cooling down
    assert [r.method for r in healthy.requests] == ["GET", "GET", "GET"]


def test_a_session_past_its_maximum_duration_is_closed_with_1001():
    fake = FakeProvider()
    with serve(fake) as upstream:
        app = build_stack(
            upstreams=[Upstream("openai", f"{upstream.url}/v1", api_key="k")],
            websockets=WebSocketLimits(max_duration=0.5, idle_timeout=None),
        )
        with serve(app) as server:
            url = server.url.replace("http://", "ws://") + "/v1/responses"
            started = time.monotonic()
            with connect(url) as ws:
                while time.monotonic() - started < 2:  # busy: never idle
                    try:
                        ws.send(json.dumps(CREATE))
                        _until(ws, "response.completed")
                    except ConnectionClosed as exc:
                        closed = exc
                        break
    assert time.monotonic() - started < 1.5
    assert closed.rcvd is not None
    assert closed.rcvd.code == 1001
    assert "maximum duration" in closed.rcvd.reason


def test_multiplexed_lanes_are_recorded_against_their_own_turns(gateway):
    """``stream_id`` lanes run side by side: the second lane's short answer finishes first,
    and each response is recorded against the turn that asked for it."""
    headers = {**_auth(), "x-fake-chunk-delay": "0.05"}
    long = {**CREATE, "stream_id": "a", "input": "one"}
    short = {**CREATE, "stream_id": "b", "model": "gpt-4o", "input": "two three four five"}
    short["max_output_tokens"] = 1
    finished = []
    with connect(f"{gateway.ws_url}/v1/responses", additional_headers=headers) as ws:
        ws.send(json.dumps(long))
        ws.send(json.dumps(short))
        while len(finished) < 2:
            event = json.loads(ws.recv(timeout=5))
            if event["type"] in ("response.completed", "response.incomplete"):
                finished.append(event["stream_id"])
    assert finished == ["b", "a"]
    rows = gateway.rows(2)
    by_model = {r["model"]: r for r in rows}
    assert by_model["gpt-4o"]["input_tokens"] == 4
    assert by_model["gpt-4o"]["output_tokens"] == 1
    assert by_model["gpt-4.1-mini"]["input_tokens"] == 1
    assert by_model["gpt-4.1-mini"]["output_tokens"] == 5
    assert all(r["served_model"] == r["model"] for r in rows)
