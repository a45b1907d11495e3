"""Routes served by an upstream of another wire format, through the gateway over real sockets:
the openai SDK on an Anthropic Messages upstream and the anthropic SDK on a Chat Completions
upstream (the fake provider), with the ledger's rows."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from asgi_llmguard import (
    KeyPolicy,
    SQLiteSink,
    StaticKey,
    StaticKeyStore,
    Upstream,
    UsagePipeline,
    build_stack,
    hash_key,
)
from asgi_llmguard.forward.router import Routing
from asgi_llmguard.testing import FakeProvider, serve

KEY = "sk-llmg-translate-0123456789abcdefghijklmnopqrstuvwxyz"
UPSTREAM_KEY = "sk-upstream-translate"
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "Time in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    },
]


class Gateway:
    def __init__(self, url: str, fake: FakeProvider, ledger: Path) -> None:
        self.url = url
        self.fake = fake
        self.ledger = ledger

    def rows(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        rows: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            if self.ledger.exists():
                with sqlite3.connect(self.ledger) as db:
                    db.row_factory = sqlite3.Row
                    if db.execute(
                        "SELECT 1 FROM sqlite_master WHERE name='usage_events'"
                    ).fetchone():
                        rows = [
                            dict(r)
                            for r in db.execute("SELECT * FROM usage_events ORDER BY started_at")
                        ]
            if len(rows) >= count:
                break
            time.sleep(0.05)
        assert len(rows) == count, rows
        return rows

    def openai(self) -> openai.OpenAI:
        return openai.OpenAI(api_key=KEY, base_url=f"{self.url}/v1", max_retries=0)

    def anthropic(self) -> anthropic.Anthropic:
        return anthropic.Anthropic(api_key=KEY, base_url=self.url, max_retries=0)


def _gateway(tmp_path: Path, upstreams, routing: Routing | None = None, **fake_knobs):
    fake = FakeProvider(api_key=UPSTREAM_KEY, **fake_knobs)
    keys = StaticKeyStore([StaticKey(KeyPolicy(key_id="k"), key_hash=hash_key(KEY))])
    ledger = tmp_path / "ledger.sqlite3"
    pipeline = UsagePipeline(
        [SQLiteSink(str(ledger))], spill_path=str(tmp_path / "spill"), flush_interval=0.05
    )
    return fake, keys, pipeline, ledger


@pytest.fixture
def on_anthropic(tmp_path):
    """An OpenAI-style gateway whose only upstream for ``claude-*`` is an Anthropic one."""
    fake, keys, pipeline, ledger = _gateway(tmp_path, None)
    with serve(fake) as upstream:
        app = build_stack(
            upstreams=[
                Upstream("openai", f"{upstream.url}/v1", api_key=UPSTREAM_KEY, name="oa"),
                Upstream(
                    "anthropic",
                    upstream.url,
                    api_key=UPSTREAM_KEY,
                    name="an",
                    models=("claude-*",),
                ),
            ],
            keys=keys,
            pipeline=pipeline,
        )
        with serve(app) as server:
            yield Gateway(server.url, fake, ledger)


def test_an_openai_client_is_answered_by_an_anthropic_upstream(on_anthropic):
    client = on_anthropic.openai()
    answer = client.chat.completions.create(
        model="claude-haiku-4-5", messages=[{"role": "user", "content": "hello there"}]
    )
    assert answer.object == "chat.completion"
    assert answer.choices[0].message.content
    assert answer.choices[0].finish_reason == "stop"
    (request,) = on_anthropic.fake.requests
    assert request.path == "/v1/messages"
    sent = request.json()
    assert sent["model"] == "claude-haiku-4-5"
    assert sent["messages"] == [{"role": "user", "content": "hello there"}]
    (row,) = on_anthropic.rows(1)
    assert row["provider"] == "openai"
    assert row["served_api"] == "anthropic"
    assert row["model"] == "claude-haiku-4-5"
    assert row["served_model"] == "claude-haiku-4-5"
    assert row["credential_id"] == "an"
    assert row["outcome"] == "ok"
    assert row["input_tokens"] == answer.usage.prompt_tokens
    assert row["output_tokens"] == answer.usage.completion_tokens > 0
    assert not row["estimated"]


def test_an_openai_stream_from_an_anthropic_upstream_is_translated_and_metered(on_anthropic):
    client = on_anthropic.openai()
    stream = client.chat.completions.create(
        model="claude-haiku-4-5",
        messages=[{"role": "user", "content": "hello"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text = ""
    usage = None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage is not None:
            usage = chunk.usage
    assert text
    assert usage is not None
    assert usage.completion_tokens > 0
    (row,) = on_anthropic.rows(1)
    assert row["served_api"] == "anthropic"
    assert row["stream"]
    assert row["input_tokens"] == usage.prompt_tokens
    assert row["output_tokens"] == usage.completion_tokens
    assert row["outcome"] == "ok"
    assert not row["estimated"]


def test_a_stream_without_usage_asked_still_meters_and_shows_none(on_anthropic):
    client = on_anthropic.openai()
    chunks = list(
        client.chat.completions.create(
            model="claude-haiku-4-5", messages=[{"role": "user", "content": "hello"}], stream=True
        )
    )
    assert all(c.usage is None for c in chunks)
    (row,) = on_anthropic.rows(1)
    assert row["output_tokens"] > 0
    assert not row["estimated"]


def test_an_upstream_error_reaches_the_openai_client_in_its_shape(on_anthropic):
    client = on_anthropic.openai()
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(
            model="claude-haiku-4-5",
            messages=[{"role": "user", "content": "hello"}],
            extra_headers={"x-fake-status": "429", "x-fake-retry-after": "7"},
        )
    assert caught.value.status_code == 429
    assert caught.value.response.headers["retry-after"] == "7"
    body = caught.value.response.json()
    assert set(body) == {"error"}
    assert body["error"]["message"]
    (row,) = on_anthropic.rows(1)
    assert row["status"] == 429
    assert row["outcome"] == "upstream_error"


def test_an_untranslatable_field_is_a_400_naming_it(on_anthropic):
    client = on_anthropic.openai()
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="claude-haiku-4-5", messages=[{"role": "user", "content": "hi"}], logprobs=True
        )
    assert "'logprobs'" in caught.value.response.json()["error"]["message"]
    assert not on_anthropic.fake.requests


def test_a_model_its_own_format_serves_is_not_translated(on_anthropic):
    client = on_anthropic.openai()
    client.chat.completions.create(model="gpt-5-mini", messages=[{"role": "user", "content": "hi"}])
    (request,) = on_anthropic.fake.requests
    assert request.path == "/v1/chat/completions"
    (row,) = on_anthropic.rows(1)
    assert row["served_api"] is None


def test_a_two_turn_parallel_tool_loop_through_the_openai_sdk(tmp_path):
    fake, keys, pipeline, ledger = _gateway(tmp_path, None)
    fake = FakeProvider(api_key=UPSTREAM_KEY, tool_call="auto", parallel_tool_calls=True)
    with serve(fake) as upstream:
        app = build_stack(
            upstreams=[
                Upstream("anthropic", upstream.url, api_key=UPSTREAM_KEY, models=("claude-*",))
            ],
            keys=keys,
            pipeline=pipeline,
        )
        with serve(app) as server:
            gw = Gateway(server.url, fake, ledger)
            client = gw.openai()
            messages: list[Any] = [{"role": "user", "content": "weather and time in Paris"}]
            stream = client.chat.completions.create(
                model="claude-haiku-4-5", messages=messages, tools=TOOLS, stream=True
            )
            calls: dict[int, dict[str, Any]] = {}
            finish = None
            for chunk in stream:
                for choice in chunk.choices:
                    finish = choice.finish_reason or finish
                    for call in choice.delta.tool_calls or ():
                        entry = calls.setdefault(call.index, {"id": "", "name": "", "args": ""})
                        entry["id"] += call.id or ""
                        entry["name"] += (call.function.name or "") if call.function else ""
                        entry["args"] += (call.function.arguments or "") if call.function else ""
            assert finish == "tool_calls"
            assert [c["name"] for c in calls.values()] == ["get_weather", "get_time"]
            for c in calls.values():
                json.loads(c["args"])  # reassembled from the streamed pieces
            messages.append(
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": c["id"],
                            "type": "function",
                            "function": {"name": c["name"], "arguments": c["args"]},
                        }
                        for c in calls.values()
                    ],
                }
            )
            for c in calls.values():
                messages.append({"role": "tool", "tool_call_id": c["id"], "content": "sunny 20C"})
            final = client.chat.completions.create(
                model="claude-haiku-4-5", messages=messages, tools=TOOLS
            )
            assert final.choices[0].message.content.startswith("Tool result:")
            assert "sunny 20C" in final.choices[0].message.content
            rows = gw.rows(2)
            assert [r["served_api"] for r in rows] == ["anthropic", "anthropic"]
            assert all(r["outcome"] == "ok" and not r["estimated"] for r in rows)


@pytest.fixture
def two_fakes(request):
    failing = FakeProvider(api_key=UPSTREAM_KEY, status=request.param)
    healthy = FakeProvider(api_key=UPSTREAM_KEY)
    with serve(failing) as bad, serve(healthy) as good:
        yield failing, bad.url, healthy, good.url


def _serve_gateway(tmp_path, upstreams, routing):
    keys = StaticKeyStore([StaticKey(KeyPolicy(key_id="k"), key_hash=hash_key(KEY))])
    ledger = tmp_path / "ledger.sqlite3"
    pipeline = UsagePipeline(
        [SQLiteSink(str(ledger))], spill_path=str(tmp_path / "spill"), flush_interval=0.05
    )
    app = build_stack(upstreams=upstreams, keys=keys, pipeline=pipeline, routing=routing)
    return serve(app), ledger


@pytest.mark.parametrize("two_fakes", [429], indirect=True)
def test_an_openai_client_fails_over_from_a_rate_limited_member_to_an_anthropic_one(
    tmp_path, two_fakes
):
    failing, bad_url, healthy, good_url = two_fakes
    running, ledger = _serve_gateway(
        tmp_path,
        [
            Upstream("openai", f"{bad_url}/v1", api_key=UPSTREAM_KEY, name="oa"),
            Upstream("anthropic", good_url, api_key=UPSTREAM_KEY, name="an", models=("claude-*",)),
        ],
        Routing(aliases={"fast": ["gpt-5-mini", "claude-haiku-4-5"]}),
    )
    with running as server:
        gw = Gateway(server.url, healthy, ledger)
        answer = gw.openai().chat.completions.create(
            model="fast", messages=[{"role": "user", "content": "hello"}]
        )
        assert answer.choices[0].message.content
        assert answer.model == "fast"
        assert [r.path for r in failing.requests] == ["/v1/chat/completions"]
        assert [r.path for r in healthy.requests] == ["/v1/messages"]
        first, second = sorted(gw.rows(2), key=lambda r: r["attempt"])
        assert (first["credential_id"], first["status"], first["outcome"]) == (
            "oa",
            429,
            "upstream_error",
        )
        assert first["served_api"] is None
        assert (second["credential_id"], second["outcome"], second["served_api"]) == (
            "an",
            "ok",
            "anthropic",
        )
        assert second["served_model"] == "claude-haiku-4-5"
        assert second["model"] == "fast"
        assert second["cost_nanos"] > 0  # the served model's price (the alias has none)
        assert second["output_tokens"] > 0


@pytest.mark.parametrize("two_fakes", [529], indirect=True)
def test_an_anthropic_client_fails_over_from_an_overloaded_member_to_a_chat_one(
    tmp_path, two_fakes
):
    failing, bad_url, healthy, good_url = two_fakes
    running, ledger = _serve_gateway(
        tmp_path,
        [
            Upstream("anthropic", bad_url, api_key=UPSTREAM_KEY, name="an"),
            Upstream(
                "openai", f"{good_url}/v1", api_key=UPSTREAM_KEY, name="vllm", models=("qwen3-*",)
            ),
        ],
        Routing(aliases={"fast": ["claude-haiku-4-5", "qwen3-coder"]}),
    )
    with running as server:
        gw = Gateway(server.url, healthy, ledger)
        with gw.anthropic().messages.stream(
            model="fast", max_tokens=100, messages=[{"role": "user", "content": "hello"}]
        ) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
        assert text
        assert final.model == "fast"
        assert final.usage.output_tokens > 0
        assert [r.path for r in failing.requests] == ["/v1/messages"]
        assert [r.path for r in healthy.requests] == ["/v1/chat/completions"]
        first, second = sorted(gw.rows(2), key=lambda r: r["attempt"])
        assert (first["credential_id"], first["status"]) == ("an", 529)
        assert (second["credential_id"], second["outcome"], second["served_api"]) == (
            "vllm",
            "ok",
            "openai",
        )
        assert second["served_model"] == "qwen3-coder"
        assert second["output_tokens"] == final.usage.output_tokens
        assert second["input_tokens"] == final.usage.input_tokens


@pytest.fixture
def on_chat(tmp_path):
    """An Anthropic-style gateway whose only upstream for ``gpt-*`` speaks Chat Completions."""
    fake = FakeProvider(api_key=UPSTREAM_KEY)
    running, ledger = None, None
    with serve(fake) as upstream:
        running, ledger = _serve_gateway(
            tmp_path,
            [
                Upstream("anthropic", upstream.url, api_key=UPSTREAM_KEY, name="an"),
                Upstream(
                    "openai",
                    f"{upstream.url}/v1",
                    api_key=UPSTREAM_KEY,
                    name="vllm",
                    models=("gpt-*",),
                ),
            ],
            Routing(),
        )
        with running as server:
            yield Gateway(server.url, fake, ledger)


def test_an_anthropic_client_is_answered_by_a_chat_upstream(on_chat):
    message = on_chat.anthropic().messages.create(
        model="gpt-5-mini",
        max_tokens=50,
        system="be brief",
        messages=[{"role": "user", "content": "hello"}],
    )
    assert message.type == "message"
    assert message.content[0].text
    assert message.stop_reason == "end_turn"
    (request,) = on_chat.fake.requests
    assert request.path == "/v1/chat/completions"
    sent = request.json()
    assert sent["messages"][0] == {"role": "system", "content": "be brief"}
    assert sent["max_completion_tokens"] == 50
    (row,) = on_chat.rows(1)
    assert row["provider"] == "anthropic"
    assert row["served_api"] == "openai"
    assert row["credential_id"] == "vllm"
    assert row["input_tokens"] == message.usage.input_tokens
    assert row["output_tokens"] == message.usage.output_tokens


def test_a_chat_upstream_error_reaches_the_anthropic_client_in_its_shape(on_chat):
    with pytest.raises(anthropic.InternalServerError) as caught:
        on_chat.anthropic().messages.create(
            model="gpt-5-mini",
            max_tokens=50,
            messages=[{"role": "user", "content": "hello"}],
            extra_headers={"x-fake-status": "503"},
        )
    assert caught.value.status_code == 503
    body = caught.value.response.json()
    assert body["type"] == "error"
    assert body["error"]["message"]


def test_an_untranslatable_field_is_a_400_in_the_anthropic_shape(on_chat):
    with pytest.raises(anthropic.BadRequestError) as caught:
        on_chat.anthropic().messages.create(
            model="gpt-5-mini",
            max_tokens=50,
            extra_body={"top_k": 5},
            messages=[{"role": "user", "content": "hello"}],
        )
    body = caught.value.response.json()
    assert body["type"] == "error"
    assert "'top_k'" in body["error"]["message"]
    assert not on_chat.fake.requests


def test_a_broken_chat_stream_ends_with_an_anthropic_error_event(on_chat):
    client = on_chat.anthropic()
    with (
        pytest.raises(anthropic.APIStatusError) as caught,
        client.messages.stream(
            model="gpt-5-mini",
            max_tokens=50,
            messages=[{"role": "user", "content": "hello"}],
            extra_headers={"x-fake-reset-after-chunks": "2", "x-fake-chunks": "5"},
        ) as stream,
    ):
        for _ in stream.text_stream:
            pass
    assert "upstream" in str(caught.value).lower()
    (row,) = on_chat.rows(1)
    assert row["outcome"] == "upstream_error"


@pytest.mark.parametrize("stream", [False, True])
def test_usage_is_metered_from_the_upstreams_own_format(on_anthropic, stream):
    # Chat Completions has no field for the 1-hour cache split: only the Anthropic answer says it.
    client = on_anthropic.openai()
    headers = {"x-fake-cache-write-5m": "2", "x-fake-cache-write-1h": "3"}
    if stream:
        list(
            client.chat.completions.create(
                model="claude-haiku-4-5",
                messages=[{"role": "user", "content": "hello there friend"}],
                stream=True,
                extra_headers=headers,
            )
        )
    else:
        client.chat.completions.create(
            model="claude-haiku-4-5",
            messages=[{"role": "user", "content": "hello there friend"}],
            extra_headers=headers,
        )
    (row,) = on_anthropic.rows(1)
    assert row["cache_creation_tokens"] == 5
    assert row["cache_creation_1h_tokens"] == 3
    assert row["service_tier"] == "standard"


def test_a_keys_policy_may_let_a_translation_drop_a_field(tmp_path):
    fake = FakeProvider(api_key=UPSTREAM_KEY)
    lenient = "sk-llmg-lenient-0123456789abcdefghijklmnopqrstuvwxyz"
    keys = StaticKeyStore(
        [
            StaticKey(KeyPolicy(key_id="k"), key_hash=hash_key(KEY)),
            StaticKey(
                KeyPolicy(key_id="lenient", translate_drop=frozenset({"logprobs"})),
                key_hash=hash_key(lenient),
            ),
        ]
    )
    ledger = tmp_path / "ledger.sqlite3"
    pipeline = UsagePipeline(
        [SQLiteSink(str(ledger))], spill_path=str(tmp_path / "spill"), flush_interval=0.05
    )
    with serve(fake) as upstream:
        app = build_stack(
            upstreams=[
                Upstream("anthropic", upstream.url, api_key=UPSTREAM_KEY, models=("claude-*",))
            ],
            keys=keys,
            pipeline=pipeline,
        )
        with serve(app) as server:
            gw = Gateway(server.url, fake, ledger)
            request = {
                "model": "claude-haiku-4-5",
                "messages": [{"role": "user", "content": "hi"}],
                "logprobs": True,
            }
            with pytest.raises(openai.BadRequestError):
                gw.openai().chat.completions.create(**request)
            client = openai.OpenAI(api_key=lenient, base_url=f"{server.url}/v1", max_retries=0)
            assert client.chat.completions.create(**request).choices[0].message.content
            (sent,) = fake.requests
            assert "logprobs" not in sent.json()
            (row,) = gw.rows(1)
            assert row["key_id"] == "lenient"
            assert json.loads(row["metadata"]) == {"llmguard.translation_dropped": "logprobs"}


def test_a_translated_stream_is_relayed_as_it_arrives(on_anthropic):
    # Five content chunks 0.3 s apart: the first must reach the client long before the last.
    body = {
        "model": "claude-haiku-4-5",
        "messages": [{"role": "user", "content": "hello"}],
        "stream": True,
    }
    headers = {
        "authorization": f"Bearer {KEY}",
        "x-fake-chunks": "5",
        "x-fake-chunk-delay": "0.3",
    }
    started = time.monotonic()
    first_content = None
    with httpx.stream(
        "POST", f"{on_anthropic.url}/v1/chat/completions", json=body, headers=headers, timeout=10
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if first_content is None and '"content":' in line:
                first_content = time.monotonic() - started
        total = time.monotonic() - started
    assert first_content is not None
    assert total >= 1.4
    assert first_content < total - 0.9


def test_an_anthropic_client_runs_a_parallel_tool_loop_on_a_chat_upstream(tmp_path):
    fake = FakeProvider(api_key=UPSTREAM_KEY, tool_call="auto", parallel_tool_calls=True)
    tools = [
        {
            "name": t["function"]["name"],
            "description": t["function"]["description"],
            "input_schema": t["function"]["parameters"],
        }
        for t in TOOLS
    ]
    with serve(fake) as upstream:
        running, ledger = _serve_gateway(
            tmp_path,
            [Upstream("openai", f"{upstream.url}/v1", api_key=UPSTREAM_KEY, models=("gpt-*",))],
            Routing(),
        )
        with running as server:
            gw = Gateway(server.url, fake, ledger)
            client = gw.anthropic()
            messages: list[Any] = [{"role": "user", "content": "weather and time in Paris"}]
            with client.messages.stream(
                model="gpt-5-mini", max_tokens=200, messages=messages, tools=tools
            ) as stream:
                first = stream.get_final_message()
            assert first.stop_reason == "tool_use"
            uses = [b for b in first.content if b.type == "tool_use"]
            assert [u.name for u in uses] == ["get_weather", "get_time"]
            assert all(isinstance(u.input, dict) for u in uses)
            messages.append({"role": "assistant", "content": [u.model_dump() for u in uses]})
            messages.append(
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": u.id, "content": "sunny 20C"}
                        for u in uses
                    ],
                }
            )
            final = client.messages.create(
                model="gpt-5-mini", max_tokens=200, messages=messages, tools=tools
            )
            assert final.content[0].text.startswith("Tool result:")
            assert "sunny 20C" in final.content[0].text
            sent = fake.requests[-1].json()
            assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "tool", "tool"]
            rows = gw.rows(2)
            assert [r["served_api"] for r in rows] == ["openai", "openai"]
            assert all(r["outcome"] == "ok" for r in rows)
            assert all(not r["estimated"] for r in rows)


def test_structured_output_crosses_as_a_forced_tool_and_comes_back_as_text(tmp_path):
    fake = FakeProvider(
        api_key=UPSTREAM_KEY, tool_call="auto", tool_arguments='{"city": "Paris", "temp": 20}'
    )
    with serve(fake) as upstream:
        running, ledger = _serve_gateway(
            tmp_path,
            [Upstream("anthropic", upstream.url, api_key=UPSTREAM_KEY, models=("claude-*",))],
            Routing(),
        )
        with running as server:
            gw = Gateway(server.url, fake, ledger)
            schema = {
                "type": "object",
                "properties": {"city": {"type": "string"}, "temp": {"type": "number"}},
                "required": ["city", "temp"],
            }
            for stream in (False, True):
                request: dict[str, Any] = {
                    "model": "claude-haiku-4-5",
                    "messages": [{"role": "user", "content": "weather?"}],
                    "response_format": {
                        "type": "json_schema",
                        "json_schema": {"name": "weather", "schema": schema},
                    },
                }
                if stream:
                    text = "".join(
                        c.choices[0].delta.content or ""
                        for c in gw.openai().chat.completions.create(**request, stream=True)
                        if c.choices
                    )
                else:
                    answer = gw.openai().chat.completions.create(**request)
                    assert answer.choices[0].finish_reason == "stop"
                    text = answer.choices[0].message.content or ""
                assert json.loads(text) == {"city": "Paris", "temp": 20}
                sent = fake.requests[-1].json()
                assert sent["tool_choice"] == {"type": "tool", "name": "weather"}


def test_a_thinking_suffix_is_applied_by_the_served_formats_adapter(on_anthropic):
    answer = on_anthropic.openai().chat.completions.create(
        model="claude-sonnet-4-5(4096)", messages=[{"role": "user", "content": "think"}]
    )
    assert answer.choices[0].message.content
    sent = on_anthropic.fake.requests[-1].json()
    assert sent["model"] == "claude-sonnet-4-5"
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 4096}
    assert sent["max_tokens"] > 4096
    (row,) = on_anthropic.rows(1)
    assert row["model"] == "claude-sonnet-4-5(4096)"
    assert row["served_model"] == "claude-sonnet-4-5"


def test_a_websocket_session_is_never_translated(on_anthropic):
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    url = on_anthropic.url.replace("http://", "ws://")
    with pytest.raises(InvalidStatus) as refused:
        connect(
            f"{url}/v1/realtime?model=claude-haiku-4-5",
            additional_headers={"Authorization": f"Bearer {KEY}"},
            open_timeout=5,
        )
    assert refused.value.response.status_code == 400
    assert b"WebSocket" in refused.value.response.body
    assert not on_anthropic.fake.requests


def test_a_member_that_cannot_take_the_request_hands_it_to_the_next(tmp_path):
    fake = FakeProvider(api_key=UPSTREAM_KEY)
    with serve(fake) as upstream:
        running, ledger = _serve_gateway(
            tmp_path,
            [
                Upstream("openai", f"{upstream.url}/v1", api_key=UPSTREAM_KEY, name="oa"),
                Upstream(
                    "anthropic", upstream.url, api_key=UPSTREAM_KEY, name="an", models=("claude-*",)
                ),
            ],
            Routing(aliases={"fast": ["claude-haiku-4-5", "gpt-5-mini"]}),
        )
        with running as server:
            gw = Gateway(server.url, fake, ledger)
            answer = gw.openai().chat.completions.create(
                model="fast", messages=[{"role": "user", "content": "hi"}], logprobs=True
            )
            assert answer.choices[0].message.content
            assert [r.path for r in fake.requests] == ["/v1/chat/completions"]
            (row,) = gw.rows(1)
            assert (row["attempt"], row["credential_id"], row["served_api"]) == (0, "oa", None)
            assert row["served_model"] == "gpt-5-mini"
            # The last member refuses in the client's dialect, naming the field.
            with pytest.raises(openai.BadRequestError) as caught:
                gw.openai().chat.completions.create(
                    model="claude-haiku-4-5",
                    messages=[{"role": "user", "content": "hi"}],
                    logprobs=True,
                )
            assert "'logprobs'" in caught.value.response.json()["error"]["message"]


@pytest.mark.parametrize("two_fakes", [529], indirect=True)
def test_a_translated_member_that_is_overloaded_fails_over_to_a_native_one(tmp_path, two_fakes):
    failing, bad_url, healthy, good_url = two_fakes
    running, ledger = _serve_gateway(
        tmp_path,
        [
            Upstream("anthropic", bad_url, api_key=UPSTREAM_KEY, name="an", models=("claude-*",)),
            Upstream("openai", f"{good_url}/v1", api_key=UPSTREAM_KEY, name="oa"),
        ],
        Routing(aliases={"fast": ["claude-haiku-4-5", "gpt-5-mini"]}),
    )
    with running as server:
        gw = Gateway(server.url, healthy, ledger)
        chunks = list(
            gw.openai().chat.completions.create(
                model="fast", messages=[{"role": "user", "content": "hello"}], stream=True
            )
        )
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert [r.path for r in failing.requests] == ["/v1/messages"]
        assert [r.path for r in healthy.requests] == ["/v1/chat/completions"]
        first, second = sorted(gw.rows(2), key=lambda r: r["attempt"])
        assert (first["credential_id"], first["status"], first["outcome"]) == (
            "an",
            529,
            "upstream_error",
        )
        assert first["served_model"] == "claude-haiku-4-5"  # the member it tried
        assert (second["credential_id"], second["outcome"]) == ("oa", "ok")
        assert second["served_api"] is None
        assert second["served_model"] == "gpt-5-mini"


@pytest.mark.parametrize("two_fakes", [429], indirect=True)
def test_a_translated_member_that_is_rate_limited_fails_over_for_an_anthropic_client(
    tmp_path, two_fakes
):
    failing, bad_url, healthy, good_url = two_fakes
    running, ledger = _serve_gateway(
        tmp_path,
        [
            Upstream(
                "openai", f"{bad_url}/v1", api_key=UPSTREAM_KEY, name="vllm", models=("qwen3-*",)
            ),
            Upstream("anthropic", good_url, api_key=UPSTREAM_KEY, name="an"),
        ],
        Routing(aliases={"fast": ["qwen3-coder", "claude-haiku-4-5"]}),
    )
    with running as server:
        gw = Gateway(server.url, healthy, ledger)
        message = gw.anthropic().messages.create(
            model="fast", max_tokens=50, messages=[{"role": "user", "content": "hello"}]
        )
        assert message.content[0].text
        assert [r.path for r in failing.requests] == ["/v1/chat/completions"]
        assert [r.path for r in healthy.requests] == ["/v1/messages"]
        first, second = sorted(gw.rows(2), key=lambda r: r["attempt"])
        assert (first["credential_id"], first["status"]) == ("vllm", 429)
        assert (second["credential_id"], second["outcome"], second["served_api"]) == (
            "an",
            "ok",
            None,
        )


def test_a_held_first_event_is_translated_with_the_rest(tmp_path):
    fake = FakeProvider(api_key=UPSTREAM_KEY)
    with serve(fake) as upstream:
        running, ledger = _serve_gateway(
            tmp_path,
            [
                Upstream("openai", f"{upstream.url}/v1", api_key=UPSTREAM_KEY, name="oa"),
                Upstream(
                    "anthropic", upstream.url, api_key=UPSTREAM_KEY, name="an", models=("claude-*",)
                ),
            ],
            Routing(aliases={"fast": ["claude-haiku-4-5", "gpt-5-mini"]}, hold_first_event=True),
        )
        with running as server:
            gw = Gateway(server.url, fake, ledger)
            chunks = list(
                gw.openai().chat.completions.create(
                    model="fast",
                    messages=[{"role": "user", "content": "hello"}],
                    stream=True,
                    stream_options={"include_usage": True},
                )
            )
            assert chunks[0].choices[0].delta.role == "assistant"  # from the held message_start
            assert chunks[0].model == "fast"
            usage = chunks[-1].usage
            assert usage is not None
            (row,) = gw.rows(1)
            assert row["served_api"] == "anthropic"
            assert row["output_tokens"] == usage.completion_tokens


def test_a_translated_request_asks_for_an_uncompressed_answer(on_anthropic):
    # The SDK accepts gzip; the gateway relays native answers as encoded, but must read these.
    client = on_anthropic.openai()
    client.chat.completions.create(
        model="claude-haiku-4-5",
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={"accept-encoding": "gzip, deflate"},
    )
    client.chat.completions.create(
        model="gpt-5-mini",
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={"accept-encoding": "gzip, deflate"},
    )
    translated, native = on_anthropic.fake.requests
    assert translated.path == "/v1/messages"
    assert translated.header("accept-encoding") == "identity"
    assert native.header("accept-encoding") == "gzip, deflate"
