"""The usage layer through real sockets: real SDKs -> gateway (uvicorn) -> fake upstream.

Every record is checked against the fake's deterministic token rule (a token is a word), so the
numbers asserted come from the upstream, not from the gateway under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import anthropic
import httpx
import openai
import orjson
import pytest

from asgi_llmguard import Upstream
from asgi_llmguard.context import get_context
from asgi_llmguard.forward.app import ForwardingApp
from asgi_llmguard.middleware.classify import ClassifyMiddleware
from asgi_llmguard.middleware.usage import UsageMiddleware
from asgi_llmguard.policy import Budget, KeyPolicy
from asgi_llmguard.testing import FakeProvider, RunningServer, serve
from asgi_llmguard.usage.budgets import MemoryBudgetStore
from asgi_llmguard.usage.events import UsageEvent
from asgi_llmguard.usage.pricing import ModelPrice, PriceTable, ServiceTierPrice
from asgi_llmguard.usage.sinks.sqlite import SQLiteSink

REPLY = "Hello from the fake provider."
WORDS = FakeProvider.count_tokens(REPLY)
KEY = "sk-upstream-usage"
# Round prices so expected costs are easy to compute: $1/M input, $2/M output, $0.5/M cached.
PRICE = ModelPrice(input=1.0, output=2.0, cached_input=0.5)
PRICES = PriceTable.default().with_overrides(
    models={
        "test-model": PRICE,
        "claude-test": PRICE,
        "embed-test": ModelPrice(input=0.1, output=0.0),
        "dep-test": PRICE,
    }
)


def nanos(input_tokens: int, output_tokens: int, price: ModelPrice = PRICE) -> int:
    return round(input_tokens * price.input * 1000 + output_tokens * price.output * 1000)


@dataclass
class Collector:
    events: list[UsageEvent] = field(default_factory=list)

    def emit(self, event: UsageEvent) -> None:
        self.events.append(event)

    def wait(self, count: int, timeout: float = 2.0) -> list[UsageEvent]:
        deadline = time.monotonic() + timeout
        while len(self.events) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.events)} events, expected {count}")
            time.sleep(0.005)
        return self.events


class AssignKey:
    """Stands in for the auth layer: the key policy comes from a test header."""

    def __init__(self, app, policies: dict[str, KeyPolicy]) -> None:
        self.app = app
        self.policies = policies

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            for name, value in scope["headers"]:
                if name == b"x-test-key":
                    get_context(scope).key = self.policies[value.decode()]
        await self.app(scope, receive, send)


@dataclass
class Stack:
    url: str
    events: Collector
    fake: FakeProvider
    fake_url: str = ""

    def openai(self, **headers: str) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=f"{self.url}/v1", api_key="c", max_retries=0, default_headers=headers
        )

    def anthropic(self, **headers: str) -> anthropic.Anthropic:
        return anthropic.Anthropic(
            base_url=self.url, api_key="c", max_retries=0, default_headers=headers
        )


@pytest.fixture(scope="module")
def fake_server() -> Iterator[tuple[FakeProvider, RunningServer]]:
    fake = FakeProvider(api_key=KEY)
    with serve(fake) as server:
        yield fake, server


def _stack(upstream_url: str, events: Collector, **usage_kwargs) -> ClassifyMiddleware:
    forwarder = ForwardingApp(
        [
            Upstream("openai", f"{upstream_url}/v1", api_key=KEY, name="fake-openai"),
            Upstream("anthropic", upstream_url, api_key=KEY, name="fake-anthropic"),
        ]
    )
    usage_kwargs.setdefault("prices", PRICES)
    usage = UsageMiddleware(forwarder, pipeline=events, **usage_kwargs)
    policies = {
        "poor": KeyPolicy(key_id="poor", budget=Budget(total=0.10)),
        "team": KeyPolicy(key_id="team-member", metadata={"team": "ml"}),
    }
    return ClassifyMiddleware(AssignKey(usage, policies))


@pytest.fixture
def stack(fake_server) -> Iterator[Stack]:
    fake, upstream = fake_server
    fake.reset()
    events = Collector()
    with serve(_stack(upstream.url, events)) as server:
        yield Stack(server.url, events, fake, upstream.url)


def one(stack: Stack) -> UsageEvent:
    events = stack.events.wait(1)
    time.sleep(0.05)
    assert len(events) == 1, events
    return events[0]


def test_chat_completion_record(stack):
    out = stack.openai().chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": "one two three"}]
    )
    assert out.choices[0].message.content == REPLY
    e = one(stack)
    assert (e.provider, e.endpoint, e.model, e.served_model) == (
        "openai",
        "chat.completions",
        "test-model",
        "test-model",
    )
    assert (e.input_tokens, e.output_tokens) == (3, WORDS)
    assert e.cost_nanos == nanos(3, WORDS)
    assert (e.outcome, e.status, e.stream, e.estimated) == ("ok", 200, False, False)
    assert e.credential_id == "fake-openai"
    assert e.ttfb is not None
    assert 0 < e.ttfb <= e.latency


def test_stream_without_include_usage_is_metered_and_unchanged_for_the_client(stack):
    with httpx.Client() as http:
        raw = http.post(
            f"{stack.url}/v1/chat/completions",
            json={
                "model": "test-model",
                "stream": True,
                "messages": [{"role": "user", "content": "a b"}],
            },
        ).content
    # The gateway asked the upstream for usage ...
    assert stack.fake.requests[-1].json()["stream_options"] == {"include_usage": True}
    # ... and the client sees neither the usage chunk nor the "usage": null members.
    assert b'"usage"' not in raw
    assert raw.endswith(b"data: [DONE]\n\n")
    events = [line for line in raw.split(b"\n\n") if line.startswith(b"data: {")]
    assert (
        "".join(orjson.loads(ev[6:])["choices"][0]["delta"].get("content") or "" for ev in events)
        == REPLY
    )
    e = one(stack)
    assert (e.input_tokens, e.output_tokens, e.estimated, e.stream) == (2, WORDS, False, True)
    assert e.cost_nanos == nanos(2, WORDS)


_IDS = re.compile(rb'"id":"chatcmpl-[0-9a-f]+","object":"chat\.completion\.chunk","created":\d+')


@pytest.mark.parametrize("line_ending", ["crlf", "cr", "lf"])
@pytest.mark.parametrize("usage_in_last_chunk", ["true", "false"])
def test_stripped_stream_is_byte_for_byte_what_the_client_would_have_got(
    stack, line_ending, usage_in_last_chunk
):
    """The gateway asks for usage and removes exactly what that added: the upstream's own
    separators and bytes reach the client, whether usage came in its own chunk or on the last
    chunk with choices."""
    request = {
        "model": "test-model",
        "stream": True,
        "messages": [{"role": "user", "content": "a b"}],
    }
    headers = {
        "x-fake-line-ending": line_ending,
        "x-fake-usage-in-last-chunk": usage_in_last_chunk,
        "authorization": f"Bearer {KEY}",
    }
    with httpx.Client() as http:
        through = http.post(f"{stack.url}/v1/chat/completions", json=request, headers=headers)
        direct = http.post(f"{stack.fake_url}/v1/chat/completions", json=request, headers=headers)
    assert stack.fake.requests[0].json()["stream_options"] == {"include_usage": True}
    sep = {"crlf": b"\r\n\r\n", "cr": b"\r\r", "lf": b"\n\n"}[line_ending]
    assert direct.content.count(sep) == len(FakeProvider.reply_chunks(REPLY)) + 3
    # Only the chunk ids and timestamps differ between two answers of the fake.
    assert _IDS.sub(b"ID", through.content) == _IDS.sub(b"ID", direct.content)
    e = stack.events.wait(1)[0]
    assert (e.input_tokens, e.output_tokens, e.estimated) == (2, WORDS, False)


def test_stream_with_include_usage_keeps_the_chunk_for_the_client(stack):
    chunks = list(
        stack.openai().chat.completions.create(
            model="test-model",
            messages=[{"role": "user", "content": "a b c d"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == 4
    e = one(stack)
    assert (e.input_tokens, e.output_tokens) == (4, WORDS)


def test_responses_stream_and_anthropic_stream(stack):
    events = list(stack.openai().responses.create(model="test-model", input="x y z", stream=True))
    assert events[-1].type == "response.completed"
    client = stack.anthropic()
    with client.messages.stream(
        model="claude-test", max_tokens=100, messages=[{"role": "user", "content": "hi you"}]
    ) as stream:
        assert "".join(stream.text_stream) == REPLY
    first, second = stack.events.wait(2)
    assert (first.endpoint, first.input_tokens, first.output_tokens) == ("responses", 3, WORDS)
    assert (second.provider, second.endpoint) == ("anthropic", "messages")
    assert (second.input_tokens, second.output_tokens) == (2, WORDS)
    assert second.cost_nanos == nanos(2, WORDS)


def test_embeddings_completions_count_tokens_and_models(stack):
    client = stack.openai()
    client.embeddings.create(model="embed-test", input=["a b c", "d"])
    client.completions.create(model="test-model", prompt="once upon a time")
    stack.anthropic().messages.count_tokens(
        model="claude-test", messages=[{"role": "user", "content": "a b c"}]
    )
    client.models.list()
    emb, comp, count, models = stack.events.wait(4)
    assert (emb.endpoint, emb.input_tokens, emb.output_tokens) == ("embeddings", 4, 0)
    assert emb.cost_nanos == nanos(4, 0, ModelPrice(input=0.1, output=0.0))
    assert (comp.endpoint, comp.input_tokens, comp.output_tokens) == ("completions", 4, WORDS)
    # Read-only endpoints are recorded but never billed.
    assert (count.endpoint, count.cost_nanos, count.outcome) == ("messages.count_tokens", 0, "ok")
    assert (models.endpoint, models.cost_nanos) == ("models.list", 0)


def test_client_disconnect_after_five_chunks_is_a_cancelled_record(stack):
    body = orjson.dumps(
        {
            "model": "test-model",
            "stream": True,
            "messages": [{"role": "user", "content": "p q r s"}],
        }
    )
    host, port = stack.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"x-fake-chunk-delay: 0.05\r\nx-fake-chunks: 100\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        seen = b""
        while seen.count(b'"content":"') < 6:  # the role chunk plus 5 content chunks
            data = sock.recv(65536)
            assert data
            seen += data
    e = one(stack)
    assert (e.outcome, e.reason) == ("cancelled", "client_disconnected")
    assert e.estimated
    assert 5 <= e.output_tokens <= 8  # what went out before the disconnect was noticed
    assert e.input_tokens > 0  # estimated from the request: never free
    assert e.cost_nanos > 0
    stack.fake.wait_until(lambda: stack.fake.disconnects == 1, 1.0)


def test_anthropic_client_leaving_mid_stream_is_billed_what_was_streamed(stack):
    """message_start's output_tokens is a placeholder: a client that reads ten text deltas and
    leaves is billed an estimate of what was streamed, flagged estimated."""
    client = stack.anthropic(**{"x-fake-chunk-delay": "0.05", "x-fake-chunks": "100"})
    texts: list[str] = []
    with client.messages.stream(
        model="claude-test", max_tokens=1000, messages=[{"role": "user", "content": "a b c"}]
    ) as stream:
        for text in stream.text_stream:
            texts.append(text)
            if len(texts) == 10:
                break
    e = one(stack)
    assert e.outcome == "cancelled"
    assert e.estimated
    assert e.input_tokens == 3  # from message_start: the provider's own number
    # The fake's token rule: one token per word streamed; a few more may have gone out
    # before the gateway noticed the client had gone.
    assert FakeProvider.count_tokens("".join(texts)) == 10
    assert 10 <= e.output_tokens <= 14
    assert e.cost_nanos == nanos(3, e.output_tokens)
    stack.fake.wait_until(lambda: stack.fake.disconnects == 1, 1.0)


@pytest.mark.parametrize(
    ("knob", "outcome"),
    [
        ("x-fake-reset-after-chunks", "upstream_error"),
        ("x-fake-truncate-after-chunks", "upstream_truncated"),
    ],
)
def test_anthropic_stream_the_upstream_breaks_is_billed_what_was_streamed(stack, knob, outcome):
    client = stack.anthropic(**{knob: "4", "x-fake-chunks": "50"})
    texts: list[str] = []

    def consume() -> None:
        with client.messages.stream(
            model="claude-test", max_tokens=1000, messages=[{"role": "user", "content": "a b"}]
        ) as stream:
            texts.extend(stream.text_stream)

    with pytest.raises((anthropic.APIStatusError, anthropic.APIConnectionError)):
        consume()
    e = one(stack)
    assert FakeProvider.count_tokens("".join(texts)) == 4
    assert (e.outcome, e.estimated, e.input_tokens, e.output_tokens) == (outcome, True, 2, 4)


def test_disconnect_before_the_first_token(stack):
    body = b'{"model": "test-model", "messages": [{"role": "user", "content": "x"}]}'
    host, port = stack.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nx-fake-latency: 5\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        stack.fake.wait_until(lambda: len(stack.fake.requests) == 1, 2.0)
    e = one(stack)
    assert (e.outcome, e.reason, e.output_tokens, e.status) == (
        "cancelled",
        "client_disconnected",
        0,
        0,
    )


def test_truncated_stream_ends_with_an_error_event_and_keeps_partial_usage(stack):
    client = stack.anthropic(**{"x-fake-truncate-after-chunks": "2"})

    def consume() -> None:
        with client.messages.stream(
            model="claude-test", max_tokens=100, messages=[{"role": "user", "content": "a b c"}]
        ) as stream:
            for _ in stream.text_stream:
                pass

    with pytest.raises(anthropic.APIStatusError):
        consume()
    e = one(stack)
    assert e.outcome == "upstream_truncated"
    assert e.input_tokens == 3  # from message_start: the provider's own number
    assert e.output_tokens >= 1
    with httpx.Client() as http:
        raw = http.post(
            f"{stack.url}/v1/chat/completions",
            json={
                "model": "test-model",
                "stream": True,
                "messages": [{"role": "user", "content": "x"}],
            },
            headers={"x-fake-truncate-after-chunks": "2"},
        ).content
    assert raw.endswith(b"\n\n")
    assert b'\n\ndata: {"error"' in raw


def test_upstream_error_is_recorded_and_not_charged(stack):
    with pytest.raises(openai.InternalServerError):
        stack.openai(**{"x-fake-status": "500"}).chat.completions.create(
            model="test-model", messages=[{"role": "user", "content": "x"}]
        )
    e = one(stack)
    assert (e.outcome, e.status, e.cost_nanos) == ("upstream_error", 500, 0)


def test_unpriced_model_is_refused_before_the_upstream(stack):
    with pytest.raises(openai.BadRequestError) as info:
        stack.openai().chat.completions.create(
            model="no-such-model-anywhere", messages=[{"role": "user", "content": "x"}]
        )
    assert "no-such-model-anywhere" in str(info.value)
    assert len(stack.fake.requests) == 0
    e = one(stack)
    assert (e.outcome, e.status) == ("rejected", 400)


def test_default_price_charges_unpriced_models(fake_server):
    fake, upstream = fake_server
    fake.reset()
    events = Collector()
    default = ModelPrice(input=10.0, output=10.0)
    with serve(_stack(upstream.url, events, missing_price=default)) as server:
        openai.OpenAI(
            base_url=f"{server.url}/v1", api_key="c", max_retries=0
        ).chat.completions.create(model="mystery", messages=[{"role": "user", "content": "x"}])
    (e,) = events.wait(1)
    assert e.cost_nanos == nanos(1, WORDS, default)


def test_invalid_json_is_400_in_each_shape(stack):
    with httpx.Client() as http:
        bad = http.post(f"{stack.url}/v1/chat/completions", content=b"{nope")
        bad_anthropic = http.post(f"{stack.url}/v1/messages", content=b"\xff\xfe")
    assert bad.status_code == 400
    assert bad.json()["error"]["type"] == "invalid_request_error"
    assert bad_anthropic.status_code == 400
    assert bad_anthropic.json()["type"] == "error"
    assert len(stack.fake.requests) == 0


def test_budget_race_admits_at_most_two_of_eight(fake_server):
    # $0.10 left; each request's worst case is exactly $0.05 (max_tokens 25,000 at $2/M output,
    # and a zero input price), and 8 arrive together: at most 2 may pass.
    fake, upstream = fake_server
    fake.reset()
    events = Collector()
    prices = PRICES.with_overrides(models={"test-model": ModelPrice(input=0.0, output=2.0)})
    app = _stack(upstream.url, events, prices=prices, budgets=MemoryBudgetStore())

    async def race(url: str) -> list[int]:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            replies = await asyncio.gather(
                *(
                    client.post(
                        "/v1/chat/completions",
                        json={
                            "model": "test-model",
                            "max_tokens": 25_000,
                            "messages": [{"role": "user", "content": "x"}],
                        },
                        headers={"x-test-key": "poor", "x-fake-latency": "0.3"},
                    )
                    for _ in range(8)
                )
            )
        bodies = [r.json() for r in replies if r.status_code == 429]
        assert all(b["error"]["code"] == "insufficient_quota" for b in bodies)
        assert all(b["error"]["type"] == "insufficient_quota" for b in bodies)
        return [r.status_code for r in replies]

    with serve(app) as server:
        statuses = asyncio.run(race(server.url))
    assert statuses.count(200) == 2
    assert statuses.count(429) == 6
    recorded = events.wait(8)
    assert sorted(e.outcome for e in recorded) == ["ok"] * 2 + ["rejected"] * 6
    assert len(fake.requests) == 2


def test_per_call_tool_fees_are_charged():
    # A Responses answer with two server-side web searches, priced at $0.01 per call.
    answer = orjson.dumps(
        {
            "id": "resp_1",
            "object": "response",
            "model": "search-model",
            "output": [
                {"type": "web_search_call", "id": "ws_1", "status": "completed"},
                {"type": "web_search_call", "id": "ws_2", "status": "completed"},
                {"type": "message", "role": "assistant", "content": []},
            ],
            "usage": {"input_tokens": 10, "output_tokens": 20, "total_tokens": 30},
        }
    )

    async def upstream(scope, receive, send):
        if scope["type"] != "http":
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(answer)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": answer})

    price = ModelPrice(input=1.0, output=2.0, per_call={"web_search": 0.01})
    events = Collector()
    with serve(upstream) as up:
        app = _stack(up.url, events, prices=PRICES.with_overrides(models={"search-model": price}))
        with serve(app) as server:
            httpx.post(
                f"{server.url}/v1/responses",
                json={"model": "search-model", "input": "news", "tools": [{"type": "web_search"}]},
            ).raise_for_status()
    (e,) = events.wait(1)
    assert e.cost_nanos == nanos(10, 20) + 2 * 10_000_000


def test_responses_compact_is_metered_and_anthropic_models_list_is_not(stack):
    r = httpx.post(
        f"{stack.url}/v1/responses/compact",
        json={"model": "test-model", "input": "one two three"},
        headers={"authorization": "Bearer client-key"},
    )
    assert r.status_code == 200, r.text
    stack.anthropic().models.list()
    compact, models = stack.events.wait(2)
    assert (compact.endpoint, compact.input_tokens, compact.output_tokens) == (
        "responses.compact",
        3,
        WORDS,
    )
    assert compact.cost_nanos == nanos(3, WORDS)
    assert (models.provider, models.endpoint, models.cost_nanos) == ("anthropic", "models.list", 0)


@pytest.mark.parametrize("streamed", [False, True])
def test_anthropic_one_hour_cache_writes_are_priced_at_their_own_rate(stack, streamed):
    # claude-sonnet-4-5 from the shipped table: $3/M input, 5-minute write $3.75/M (1.25x),
    # 1-hour write $6/M (2x), $15/M output.
    client = stack.anthropic(**{"x-fake-cache-write-5m": "100", "x-fake-cache-write-1h": "1000"})
    request = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "hi you"}],
    }
    if streamed:
        with client.messages.stream(**request) as stream:
            assert "".join(stream.text_stream) == REPLY
            usage = stream.get_final_message().usage
    else:
        usage = client.messages.create(**request).usage
    assert usage.cache_creation.ephemeral_1h_input_tokens == 1000
    e = one(stack)
    assert (e.input_tokens, e.cache_creation_tokens, e.cache_creation_1h_tokens) == (
        1102,
        1100,
        1000,
    )
    assert e.cost_nanos == 2 * 3_000 + 100 * 3_750 + 1000 * 6_000 + WORDS * 15_000


def test_a_price_with_one_cache_write_price_charges_one_hour_writes_at_twice_input(fake_server):
    _, upstream = fake_server
    events = Collector()
    prices = PriceTable.default().with_overrides(
        models={"claude-one-write": ModelPrice(input=1.0, cache_creation=1.25, output=2.0)}
    )
    with serve(_stack(upstream.url, events, prices=prices)) as server:
        client = Stack(server.url, events, fake_server[0]).anthropic(
            **{"x-fake-cache-write-5m": "100", "x-fake-cache-write-1h": "1000"}
        )
        client.messages.create(
            model="claude-one-write", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
        )
        (e,) = events.wait(1)
    assert e.cost_nanos == 1 * 1_000 + 100 * 1_250 + 1000 * 2_000 + WORDS * 2_000


# Service tiers: the price follows the tier the answer reports, not the one the request named.
TIERED = ModelPrice(
    input=1.0,
    output=2.0,
    cached_input=0.5,
    service_tiers={
        "flex": ServiceTierPrice(input=0.5, output=1.0),
        "priority": ServiceTierPrice(input=2.0, cached_input=1.0, output=4.0),
    },
)
TIER_PRICES = {
    "flex": ModelPrice(input=0.5, output=1.0),
    "priority": ModelPrice(input=2.0, output=4.0),
}


@pytest.fixture
def tiered(fake_server) -> Iterator[Stack]:
    fake, upstream = fake_server
    fake.reset()
    events = Collector()
    prices = PRICES.with_overrides(models={"tiered-model": TIERED, "claude-tiered": TIERED})
    with serve(_stack(upstream.url, events, prices=prices)) as server:
        yield Stack(server.url, events, fake, upstream.url)


def _openai_call(client: openai.OpenAI, api: str, streamed: bool, requested: str) -> str | None:
    """One call through the SDK; the tier the SDK saw in the answer."""
    if api == "chat":
        request = {
            "model": "tiered-model",
            "messages": [{"role": "user", "content": "one two three"}],
            "service_tier": requested,
        }
        if not streamed:
            return client.chat.completions.create(**request).service_tier
        tiers = {
            c.service_tier
            for c in client.chat.completions.create(
                **request, stream=True, stream_options={"include_usage": True}
            )
        }
        assert len(tiers) == 1, tiers
        return tiers.pop()
    request = {"model": "tiered-model", "input": "one two three", "service_tier": requested}
    if not streamed:
        return client.responses.create(**request).service_tier
    with client.responses.stream(**request) as stream:
        return stream.get_final_response().service_tier


@pytest.mark.parametrize("streamed", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("api", ["chat", "responses"])
@pytest.mark.parametrize(
    ("reported", "requested", "price"),
    [
        ("flex", "auto", TIER_PRICES["flex"]),
        ("priority", "flex", TIER_PRICES["priority"]),
        ("scale", "priority", PRICE),  # a tier with no price of its own: the standard price
        ("default", "priority", PRICE),
    ],
)
def test_openai_answers_are_priced_by_the_tier_they_report(
    tiered, api, streamed, reported, requested, price
):
    client = tiered.openai(**{"x-fake-service-tier": reported})
    assert _openai_call(client, api, streamed, requested) == reported
    e = one(tiered)
    assert (e.input_tokens, e.output_tokens, e.service_tier) == (3, WORDS, reported)
    assert e.cost_nanos == nanos(3, WORDS, price)


@pytest.mark.parametrize("streamed", [False, True], ids=["json", "stream"])
def test_a_tier_price_leaves_unset_prices_at_the_standard_ones(tiered, streamed):
    # flex sets no cached price: cached tokens cost the standard cached price ($0.5/M).
    client = tiered.openai(**{"x-fake-service-tier": "flex", "x-fake-cached-tokens": "2"})
    _openai_call(client, "chat", streamed, "flex")
    e = one(tiered)
    assert (e.input_tokens, e.cached_input_tokens, e.service_tier) == (3, 2, "flex")
    assert e.cost_nanos == 1 * 500 + 2 * 500 + WORDS * 1_000


@pytest.mark.parametrize("streamed", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize(
    ("reported", "price"),
    [("priority", TIER_PRICES["priority"]), ("standard", PRICE), ("batch", PRICE)],
)
def test_anthropic_messages_are_priced_by_the_tier_in_their_usage(
    tiered, streamed, reported, price
):
    client = tiered.anthropic(**{"x-fake-service-tier": reported})
    request = {
        "model": "claude-tiered",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "one two three"}],
    }
    if streamed:
        with client.messages.stream(**request) as stream:
            assert "".join(stream.text_stream) == REPLY
            usage = stream.get_final_message().usage
    else:
        usage = client.messages.create(**request).usage
    assert usage.service_tier == reported
    e = one(tiered)
    assert (e.input_tokens, e.output_tokens, e.service_tier) == (3, WORDS, reported)
    assert e.cost_nanos == nanos(3, WORDS, price)


def test_shipped_priority_price_and_the_ledger_row(tiered, tmp_path):
    # gpt-5 from the shipped table: Priority $2.50/M input, $20/M output (standard $1.25/$10).
    client = tiered.openai(**{"x-fake-service-tier": "priority"})
    client.chat.completions.create(
        model="gpt-5", messages=[{"role": "user", "content": "one two three"}]
    )
    e = one(tiered)
    assert e.cost_nanos == 3 * 2_500 + WORDS * 20_000

    async def store() -> None:
        sink = SQLiteSink(tmp_path / "ledger.db")
        await sink.write([e])
        await sink.aclose()

    asyncio.run(store())
    with sqlite3.connect(tmp_path / "ledger.db") as db:
        row = db.execute("SELECT service_tier, cost_nanos FROM usage_events").fetchone()
    assert row == ("priority", 3 * 2_500 + WORDS * 20_000)


def test_a_large_answer_is_priced_by_its_tier_too(tiered):
    # Over 4 MiB, the gateway keeps only the answer's tail: the tier after the usage is kept.
    client = tiered.openai(**{"x-fake-service-tier": "priority", "x-fake-chunks": "800000"})
    answer = client.chat.completions.create(
        model="tiered-model", messages=[{"role": "user", "content": "one two three"}]
    )
    assert len(answer.choices[0].message.content or "") > 4 << 20
    assert answer.service_tier == "priority"
    e = one(tiered)
    assert (e.output_tokens, e.service_tier) == (800_000, "priority")
    assert e.cost_nanos == nanos(3, 800_000, TIER_PRICES["priority"])


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_a_stream_cut_before_its_usage_is_estimated_at_the_tier_it_reported(tiered, api):
    client = tiered.openai(
        **{"x-fake-service-tier": "priority", "x-fake-truncate-after-chunks": "2"}
    )
    # The SDK reads what came; a Responses stream without its final event has no final response.
    with contextlib.suppress(openai.APIError, RuntimeError):
        _openai_call(client, api, True, "auto")
    e = one(tiered)
    assert (e.estimated, e.service_tier, e.output_tokens) == (True, "priority", 2)
    assert e.cost_nanos == nanos(e.input_tokens, 2, TIER_PRICES["priority"])
