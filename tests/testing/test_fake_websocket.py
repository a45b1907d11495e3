"""The fake provider's WebSocket APIs: the Responses API's WebSocket mode and the Realtime API,
driven by the real openai SDK and by raw sockets."""

from __future__ import annotations

import json

import openai
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from asgi_llmguard.testing import FakeProvider, serve

KEY = "sk-fake-ws"


@pytest.fixture(scope="module")
def upstream():
    fake = FakeProvider(api_key=KEY)
    with serve(fake) as server:
        yield fake, server.url


def _events(ws, last: str) -> list[dict]:
    events = []
    while True:
        events.append(json.loads(ws.recv(timeout=5)))
        if events[-1]["type"] in (last, "error"):
            return events


def test_the_responses_websocket_streams_the_http_events_and_ends_with_usage(upstream):
    fake, url = upstream
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY)
    with client.responses.connect() as conn:
        conn.send({"type": "response.create", "model": "gpt-4.1-mini", "input": "one two three"})
        kinds = []
        for event in conn:
            kinds.append(event.type)
            if event.type == "response.completed":
                usage = event.response.usage
                break
    assert kinds[0] == "response.created"
    assert kinds.count("response.output_text.delta") == 5
    assert usage.input_tokens == 3
    assert usage.output_tokens == 5
    assert fake.requests[-1].method == "WEBSOCKET"
    assert fake.requests[-1].json()["input"] == "one two three"


def test_a_warm_up_turn_generates_nothing(upstream):
    _, url = upstream
    ws_url = url.replace("http://", "ws://") + "/v1/responses"
    with connect(ws_url, additional_headers={"Authorization": f"Bearer {KEY}"}) as ws:
        ws.send(
            json.dumps({"type": "response.create", "model": "m", "input": "a b", "generate": False})
        )
        events = _events(ws, "response.completed")
    assert [e["type"] for e in events] == ["response.created", "response.completed"]
    usage = events[-1]["response"]["usage"]
    assert (usage["input_tokens"], usage["output_tokens"]) == (2, 0)
    assert events[-1]["response"]["output"] == []


def test_a_bad_turn_gets_an_error_event_and_the_socket_stays_open(upstream):
    _, url = upstream
    ws_url = url.replace("http://", "ws://") + "/v1/responses"
    with connect(ws_url, additional_headers={"Authorization": f"Bearer {KEY}"}) as ws:
        ws.send(json.dumps({"type": "response.create", "input": "no model"}))
        error = json.loads(ws.recv(timeout=5))
        assert error["type"] == "error"
        assert error["status"] == 400
        assert error["error"]["param"] == "model"
        ws.send(json.dumps({"type": "response.create", "model": "m", "input": "x"}))
        assert _events(ws, "response.completed")[-1]["type"] == "response.completed"


def test_the_upgrade_needs_the_key_as_a_header_or_subprotocol(upstream):
    _, url = upstream
    ws_url = url.replace("http://", "ws://") + "/v1/realtime?model=gpt-realtime"
    with pytest.raises(InvalidStatus) as refused:
        connect(ws_url, open_timeout=5)
    assert refused.value.response.status_code == 401
    protocols = ["realtime", f"openai-insecure-api-key.{KEY}"]
    with connect(ws_url, subprotocols=protocols) as ws:
        assert ws.subprotocol == "realtime"
        assert json.loads(ws.recv(timeout=5))["type"] == "session.created"


def test_realtime_text_and_audio_usage(upstream):
    _, url = upstream
    ws_url = url.replace("http://", "ws://") + "/v1/realtime?model=gpt-realtime"
    with connect(ws_url, additional_headers={"Authorization": f"Bearer {KEY}"}) as ws:
        assert json.loads(ws.recv(timeout=5))["type"] == "session.created"
        item = {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "hi you"}],
        }
        ws.send(json.dumps({"type": "conversation.item.create", "item": item}))
        ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": "AAAA" * 75}))
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        ws.send(json.dumps({"type": "response.create"}))
        first = _events(ws, "response.done")[-1]["response"]["usage"]
        ws.send(
            json.dumps({"type": "response.create", "response": {"output_modalities": ["text"]}})
        )
        second = _events(ws, "response.done")[-1]["response"]["usage"]
    # 300 bytes of audio: 3 audio tokens; the spoken reply: 5 text and 20 audio tokens
    assert first["input_token_details"]["text_tokens"] == 2
    assert first["input_token_details"]["audio_tokens"] == 3
    assert first["output_token_details"] == {"text_tokens": 5, "audio_tokens": 20}
    # the reply is now part of the conversation; a text-only answer has no audio
    assert second["input_tokens"] == 2 + 3 + 25
    assert second["output_token_details"] == {"text_tokens": 5, "audio_tokens": 0}


def test_reset_after_chunks_drops_the_socket_mid_response(upstream):
    fake, url = upstream
    ws_url = url.replace("http://", "ws://") + "/v1/responses"
    headers = {"Authorization": f"Bearer {KEY}", "x-fake-reset-after-chunks": "1"}
    resets = fake.resets
    with connect(ws_url, additional_headers=headers) as ws:
        ws.send(json.dumps({"type": "response.create", "model": "m", "input": "x"}))
        with pytest.raises(ConnectionClosed):
            _events(ws, "response.completed")
    fake.wait_until(lambda: fake.resets == resets + 1)


def test_stream_id_lanes_run_side_by_side_and_echo_their_lane(upstream):
    _, url = upstream
    ws_url = url.replace("http://", "ws://") + "/v1/responses"
    headers = {"Authorization": f"Bearer {KEY}", "x-fake-chunk-delay": "0.02"}
    with connect(ws_url, additional_headers=headers) as ws:
        for lane in ("a", "b"):
            ws.send(
                json.dumps(
                    {"type": "response.create", "model": "m", "input": "x", "stream_id": lane}
                )
            )
        events = []
        while [e["type"] for e in events].count("response.completed") < 2:
            events.append(json.loads(ws.recv(timeout=5)))
    lanes = [e["stream_id"] for e in events]
    assert set(lanes) == {"a", "b"}
    # interleaved: lane b's first event comes before lane a's last one
    assert lanes.index("b") < len(lanes) - 1 - lanes[::-1].index("a")
