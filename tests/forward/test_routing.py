"""Routing across upstream credentials, against several fake upstreams on loopback ports.

Each fake upstream is its own uvicorn server; the gateway runs under uvicorn too, and the clients
are the real ``openai`` and ``anthropic`` SDKs (with their own retries off, so every retry seen
here is the gateway's).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anthropic
import httpx
import openai
import orjson
import pytest

from asgi_llmguard import Upstream, build_stack
from asgi_llmguard.forward.breaker import BreakerPolicy
from asgi_llmguard.forward.cooldowns import CooldownPolicy
from asgi_llmguard.forward.router import RetryPolicy, Routing
from asgi_llmguard.stack import Gateway
from asgi_llmguard.testing import FakeProvider, RunningServer, serve
from asgi_llmguard.usage.events import UsageEvent
from asgi_llmguard.usage.pricing import ModelPrice

PRICE = ModelPrice(input=1.0, output=2.0)


class Recorder:
    """Collects usage events the way a pipeline would receive them."""

    def __init__(self) -> None:
        self.events: list[UsageEvent] = []

    def emit(self, event: UsageEvent) -> None:
        self.events.append(event)

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    def wait_for(self, count: int, timeout: float = 5.0) -> list[UsageEvent]:
        deadline = time.monotonic() + timeout
        while len(self.events) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.events


@dataclass
class Fleet:
    """Named fake upstreams, each on its own port."""

    fakes: dict[str, FakeProvider] = field(default_factory=dict)
    servers: dict[str, RunningServer] = field(default_factory=dict)

    def count(self, name: str, path: str = "/v1/chat/completions") -> int:
        return sum(1 for r in self.fakes[name].requests if r.path == path)

    def counts(self, path: str = "/v1/chat/completions") -> dict[str, int]:
        return {name: self.count(name, path) for name in self.fakes}


@contextmanager
def fleet(*names: str) -> Iterator[Fleet]:
    with ExitStack() as stack:
        out = Fleet()
        for name in names:
            fake = FakeProvider(api_key=f"sk-upstream-{name}")
            out.fakes[name] = fake
            out.servers[name] = stack.enter_context(serve(fake))
        yield out


def upstream(f: Fleet, name: str, provider: str = "openai", **kwargs: object) -> Upstream:
    url = f.servers[name].url
    base = f"{url}/v1" if provider == "openai" else url
    return Upstream(
        provider,  # type: ignore[arg-type]
        base,
        api_key=f"sk-upstream-{name}",
        name=name,
        **kwargs,  # type: ignore[arg-type]
    )


@contextmanager
def gateway(
    upstreams: list[Upstream], routing: Routing, recorder: Recorder | None = None
) -> Iterator[tuple[str, Gateway]]:
    gw = build_stack(
        upstreams=upstreams,
        routing=routing,
        size_limit=None,
        rate_limit=None,
        concurrency=None,
        access_log=None,
        usage={"missing_price": PRICE},
        pipeline=recorder,  # type: ignore[arg-type]
    )
    with serve(gw) as server:
        yield server.url, gw


def oai(url: str, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{url}/v1",
        api_key="client-secret-key",
        max_retries=0,
        default_headers=headers or None,
    )


def chat(client: openai.OpenAI, model: str = "gpt-4o-mini", **kwargs: object) -> str:
    resp = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "hello there"}],
        **kwargs,  # type: ignore[call-overload]
    )
    return str(resp.model)


def test_fill_first_stays_on_primary_until_429_then_returns_after_cooldown() -> None:
    with fleet("a", "b") as f:
        routing = Routing(selector="fill-first", cooldowns=CooldownPolicy(base=0.5, cap=1.0))
        recorder = Recorder()
        with gateway([upstream(f, "a"), upstream(f, "b")], routing, recorder) as (url, gw):
            client = oai(url)
            for _ in range(5):
                chat(client)
            assert f.counts() == {"a": 5, "b": 0}

            f.fakes["a"].configure(status=429, retry_after=1)
            chat(client)  # a answers 429 before any byte: the gateway moves to b
            assert f.counts() == {"a": 6, "b": 1}
            for _ in range(3):
                chat(client)  # a is cooling: straight to b
            assert f.counts() == {"a": 6, "b": 4}

            f.fakes["a"].configure(status=None, retry_after=None)
            time.sleep(1.1)  # the cooldown a's Retry-After asked for
            chat(client)
            assert f.counts() == {"a": 7, "b": 4}

            events = recorder.wait_for(10)
            first_fail = [e for e in events if e.outcome == "upstream_error"]
            assert len(first_fail) == 1
            failed = first_fail[0]
            assert (failed.credential_id, failed.status, failed.attempt) == ("a", 429, 0)
            served = [e for e in events if e.request_id == failed.request_id and e is not failed]
            assert [(e.credential_id, e.attempt, e.outcome) for e in served] == [("b", 1, "ok")]
            snapshot = gw.forwarder.router.cooldowns.snapshot()  # type: ignore[union-attr]
            assert snapshot == [] or all(c.until <= time.time() for c in snapshot)


def test_round_robin_spreads_evenly() -> None:
    with fleet("a", "b", "c") as f:
        ups = [upstream(f, n) for n in ("a", "b", "c")]
        with gateway(ups, Routing()) as (url, _):
            client = oai(url)
            for _ in range(30):
                chat(client)
            assert f.counts() == {"a": 10, "b": 10, "c": 10}


def test_weighted_follows_weights_without_bursts() -> None:
    with fleet("a", "b") as f:
        ups = [upstream(f, "a", weight=3), upstream(f, "b", weight=1)]
        with gateway(ups, Routing(selector="weighted")) as (url, _):
            client = oai(url)
            order = []
            for _ in range(8):
                before = f.count("b")
                chat(client)
                order.append("b" if f.count("b") > before else "a")
            assert f.counts() == {"a": 6, "b": 2}
            # smooth: b never twice in a row, a never four times in a row
            assert "bb" not in "".join(order)
            assert "aaaa" not in "".join(order)


def test_priority_uses_lower_groups_only_when_the_first_is_cooling() -> None:
    with fleet("a", "b", "c") as f:
        ups = [upstream(f, "a"), upstream(f, "b"), upstream(f, "c", priority=1)]
        routing = Routing(selector="priority", cooldowns=CooldownPolicy(base=30, cap=60))
        with gateway(ups, routing) as (url, _):
            client = oai(url)
            for _ in range(10):
                chat(client)
            assert f.counts() == {"a": 5, "b": 5, "c": 0}
            f.fakes["a"].configure(status=429)
            f.fakes["b"].configure(status=429)
            chat(client)
            chat(client)
            assert f.count("c") == 2


def test_every_credential_cooling_gives_429_with_the_earliest_retry_after() -> None:
    with fleet("a", "b") as f:
        f.fakes["a"].configure(status=429, retry_after=30)
        f.fakes["b"].configure(status=429, retry_after=7)
        with gateway([upstream(f, "a"), upstream(f, "b")], Routing()) as (url, _):
            client = oai(url)
            with pytest.raises(openai.RateLimitError):
                chat(client)  # both tried; the last 429 is relayed as the upstream sent it
            before = f.counts()
            with pytest.raises(openai.RateLimitError) as caught:
                chat(client)
            assert f.counts() == before  # nobody was asked
            response = caught.value.response
            assert 6 <= int(response.headers["retry-after"]) <= 7
            assert response.json()["error"]["code"] == "upstream_cooling_down"


def test_alias_pool_member_failing_before_first_byte_hands_over() -> None:
    with fleet("a", "b") as f:
        ups = [upstream(f, "a", models=("model-a",)), upstream(f, "b", models=("model-b",))]
        routing = Routing(selector="fill-first", aliases={"fast": ["model-a", "model-b"]})
        recorder = Recorder()
        with gateway(ups, routing, recorder) as (url, _):
            client = oai(url)
            assert chat(client, "fast") == "fast"  # rewritten back to the alias
            assert f.counts() == {"a": 1, "b": 0}  # this request's turn was model-a
            f.fakes["a"].configure(status=503)
            f.fakes["b"].requests.clear()
            f.fakes["a"].requests.clear()
            # The rotation puts model-b first now, model-a next; a's failure hands over.
            stream = client.chat.completions.create(
                model="fast", messages=[{"role": "user", "content": "hi"}], stream=True
            )
            chunks = list(stream)
            assert {c.model for c in chunks} == {"fast"}
            assert f.count("b") == 1
            sent = orjson.loads(f.fakes["b"].requests[-1].body)
            assert sent["model"] == "model-b"
            chat(client, "fast")  # model-a first: 503 -> model-b
            assert f.counts() == {"a": 1, "b": 2}
            events = recorder.wait_for(5)
            failed = [e for e in events if e.outcome == "upstream_error"]
            assert [(e.credential_id, e.served_model, e.status) for e in failed] == [
                ("a", "model-a", 503)
            ]
            ok = [e for e in events if e.outcome == "ok"]
            assert all(e.model == "fast" for e in ok)
            assert {e.served_model for e in ok} == {"model-a", "model-b"}
            assert all(e.cost_nanos > 0 for e in ok)


def test_failure_after_the_first_byte_is_not_retried_and_ends_with_an_sse_error() -> None:
    with fleet("a", "b") as f:
        f.fakes["a"].configure(reset_after_chunks=2)
        routing = Routing(selector="fill-first", hold_first_event=True)
        with gateway([upstream(f, "a"), upstream(f, "b")], routing) as (url, _):
            client = oai(url)
            stream = client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
            )
            received: list[object] = []

            def read() -> None:
                for chunk in stream:
                    received.append(chunk)

            with pytest.raises(openai.APIError):
                read()
            assert received  # bytes had reached the client
            assert f.count("b") == 0


async def _error_in_200_stream(scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
    """An upstream that accepts a stream with 200, then sends an error as its first event."""
    if scope["type"] != "http":
        return
    message = await receive()  # type: ignore[operator]
    while message.get("more_body"):
        message = await receive()  # type: ignore[operator]
    event = b'data: {"error": {"message": "Overloaded", "type": "server_error"}}\n\n'
    await send(  # type: ignore[operator]
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/event-stream")],
        }
    )
    await send({"type": "http.response.body", "body": event})  # type: ignore[operator]


@pytest.mark.parametrize("hold", [True, False])
def test_error_inside_a_200_stream_fails_over_when_the_first_event_is_held(hold: bool) -> None:
    with fleet("b") as f, serve(_error_in_200_stream) as bad:
        a = Upstream("openai", f"{bad.url}/v1", api_key="sk-upstream-a", name="a")
        routing = Routing(selector="fill-first", hold_first_event=hold)
        with gateway([a, upstream(f, "b")], routing) as (url, _):
            stream = oai(url).chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
            )
            if hold:
                text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
                assert text
                assert f.count("b") == 1
            else:  # without holding, the error reaches the client and nothing is retried
                with pytest.raises(openai.APIError):
                    list(stream)
                assert f.count("b") == 0


def test_connect_error_moves_on_and_every_attempt_is_recorded() -> None:
    with fleet("b") as f:
        dead = Upstream("openai", "http://127.0.0.1:9/v1", api_key="sk-upstream-dead", name="dead")
        recorder = Recorder()
        routing = Routing(selector="fill-first")
        with gateway([dead, upstream(f, "b")], routing, recorder) as (url, _):
            chat(oai(url))
            events = recorder.wait_for(2)
            assert [(e.credential_id, e.attempt, e.outcome, e.status) for e in events] == [
                ("dead", 0, "upstream_error", 0),
                ("b", 1, "ok", 200),
            ]
            assert len({e.request_id for e in events}) == 1


def test_timeout_after_sending_is_not_retried() -> None:
    from asgi_llmguard.forward.config import Timeouts

    with fleet("a", "b") as f:
        f.fakes["a"].configure(latency=2.0)
        gw = build_stack(
            upstreams=[upstream(f, "a"), upstream(f, "b")],
            routing=Routing(selector="fill-first"),
            timeouts=Timeouts(first_byte=0.3, write=0.1),
            size_limit=None,
            rate_limit=None,
            concurrency=None,
            usage=None,
            access_log=None,
        )
        with serve(gw) as server:
            with pytest.raises(openai.InternalServerError) as caught:
                chat(oai(server.url))
            assert caught.value.status_code == 504
            assert f.count("b") == 0  # the first upstream may have started a generation


def test_pinned_credential_is_never_routed_elsewhere() -> None:
    with fleet("a", "b") as f, gateway([upstream(f, "a"), upstream(f, "b")], Routing()) as (url, _):
        pinned = oai(url, **{"x-llmguard-credential": "b"})
        for _ in range(4):
            chat(pinned)
        assert f.counts() == {"a": 0, "b": 4}
        f.fakes["b"].configure(status=429, retry_after=5)
        with pytest.raises(openai.RateLimitError):
            chat(pinned)
        with pytest.raises(openai.RateLimitError) as caught:
            chat(pinned)  # cooling: 429, never a: a pinned request has no fallback
        assert caught.value.response.json()["error"]["code"] == "upstream_cooling_down"
        assert f.count("a") == 0
        with pytest.raises(openai.BadRequestError):
            chat(oai(url, **{"x-llmguard-credential": "nope"}))


def test_sticky_session_stays_on_one_credential() -> None:
    with fleet("a", "b") as f:
        routing = Routing(session_header="x-session-id")
        with gateway([upstream(f, "a"), upstream(f, "b")], routing) as (url, gw):
            one = oai(url, **{"x-session-id": "conv-1"})
            for _ in range(6):
                chat(one)
            counts = f.counts()
            assert sorted(counts.values()) == [0, 6]
            plain = oai(url)
            for _ in range(4):
                chat(plain)
            assert sum(f.counts().values()) == 10
            assert min(f.counts().values()) == 2  # the others still rotate
            assert gw.forwarder.router.sessions() == 1


def test_thinking_suffix_becomes_provider_parameters() -> None:
    with fleet("a") as f:
        ups = [upstream(f, "a"), upstream(f, "a", provider="anthropic")]
        ups[1] = Upstream("anthropic", f.servers["a"].url, api_key="sk-upstream-a", name="a-ant")
        with gateway(ups, Routing()) as (url, _):
            assert chat(oai(url), "gpt-5(high)") == "gpt-5"
            sent = orjson.loads(f.fakes["a"].requests[-1].body)
            assert sent["model"] == "gpt-5"
            assert sent["reasoning_effort"] == "high"

            client = anthropic.Anthropic(base_url=url, api_key="client-secret-key", max_retries=0)
            client.messages.create(
                model="claude-sonnet-4-5(16384)",
                max_tokens=1000,
                messages=[{"role": "user", "content": "hi"}],
            )
            sent = orjson.loads(f.fakes["a"].requests[-1].body)
            assert sent["model"] == "claude-sonnet-4-5"
            assert sent["thinking"] == {"type": "enabled", "budget_tokens": 16384}
            assert sent["max_tokens"] == 17384

            with pytest.raises(openai.BadRequestError) as caught:
                chat(oai(url), "gpt-5(hgih)")
            assert "thinking suffix" in caught.value.response.json()["error"]["message"]


def test_circuit_breaker_opens_and_traffic_moves() -> None:
    with fleet("a", "b") as f:
        f.fakes["a"].configure(status=500)
        routing = Routing(
            selector="fill-first",
            cooldowns=None,
            breaker=BreakerPolicy(min_requests=4, failure_ratio=0.5, open_for=60),
        )
        with gateway([upstream(f, "a"), upstream(f, "b")], routing) as (url, gw):
            client = oai(url)
            for _ in range(10):
                chat(client)
            # after 4 failures the breaker opens and a is no longer tried
            assert f.count("a") == 4
            assert f.count("b") == 10
            assert gw.forwarder.router.breaker.state("a") == "open"  # type: ignore[union-attr]


def test_retries_are_bounded_by_max_attempts() -> None:
    with fleet("a", "b", "c") as f:
        for fake in f.fakes.values():
            fake.configure(status=503)
        routing = Routing(selector="fill-first", retry=RetryPolicy(max_attempts=2, backoff=0))
        with gateway([upstream(f, n) for n in ("a", "b", "c")], routing) as (url, _):
            with pytest.raises(openai.InternalServerError) as caught:
                chat(oai(url))
            assert caught.value.status_code == 503
            assert f.counts() == {"a": 1, "b": 1, "c": 0}


def test_single_upstream_relays_its_own_429_every_time() -> None:
    with fleet("a") as f:
        f.fakes["a"].configure(status=429, retry_after=3)
        with gateway([upstream(f, "a")], Routing()) as (url, _):
            for _ in range(3):
                with httpx.Client() as http:
                    r = http.post(
                        f"{url}/v1/chat/completions",
                        json={"model": "m", "messages": [{"role": "user", "content": "x"}]},
                    )
                assert r.status_code == 429
                assert r.headers["retry-after"] == "3"
            assert f.count("a") == 3


def test_operator_lists_and_resets_cooldowns_with_the_cli() -> None:
    import os
    import subprocess
    import sys

    admin_key = "adm-routing-0123456789-abcdefghij"
    with fleet("a", "b") as f:
        gw = build_stack(
            upstreams=[upstream(f, "a"), upstream(f, "b")],
            routing=Routing(selector="fill-first"),
            size_limit=None,
            rate_limit=None,
            concurrency=None,
            usage=None,
            access_log=None,
            admin={"key": admin_key},
        )
        with serve(gw) as server:
            client = oai(server.url)
            f.fakes["a"].configure(status=429, retry_after=600)
            chat(client)
            f.fakes["a"].configure(status=None, retry_after=None)
            chat(client)
            assert f.counts() == {"a": 1, "b": 2}  # a is cooling for ten minutes

            env = {
                **os.environ,
                "LLMGUARD_ADMIN_URL": f"{server.url}/admin",
                "LLMGUARD_ADMIN_KEY": admin_key,
            }

            def cli(*args: str) -> str:
                done = subprocess.run(
                    [sys.executable, "-m", "asgi_llmguard.cli", "cooldowns", *args],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=30,
                    check=True,
                )
                return done.stdout

            listed = cli("list", "--json")
            entries = orjson.loads(listed)["cooldowns"]
            assert [(c["credential_id"], c["model"], c["reason"]) for c in entries] == [
                ("a", "gpt-4o-mini", "rate_limited")
            ]
            assert 590 < entries[0]["remaining"] <= 600
            with httpx.Client() as http:
                refused = http.get(f"{server.url}/admin/cooldowns")
            assert refused.status_code == 401
            cli("reset", "--credential", "a")
            chat(client)
            assert f.counts() == {"a": 2, "b": 2}  # back on the primary at once
            assert orjson.loads(cli("list", "--json"))["cooldowns"] == []


def test_the_routing_section_of_the_config_file_builds_the_router(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from asgi_llmguard.config import load_config, resolve_upstreams, stack_kwargs
    from asgi_llmguard.errors import ConfigurationError
    from asgi_llmguard.forward.shared_cooldowns import RedisCooldowns

    monkeypatch.setenv("LLMGUARD_TEST_COOLDOWNS", "redis://127.0.0.1:6379/0")
    path = tmp_path / "llmguard.toml"
    path.write_text(
        """
[[upstreams]]
name = "primary"
provider = "anthropic"
base_url = "http://127.0.0.1:9"
models = ["claude-*"]

[[upstreams]]
name = "secondary"
provider = "anthropic"
base_url = "http://127.0.0.1:10"
weight = 2
priority = 1

[routing]
selector = "fill-first"
session_header = "x-session-id"
pin_header = ""
hold_first_event = true
cooldown_store_env = "LLMGUARD_TEST_COOLDOWNS"

[routing.aliases]
fast = ["claude-haiku-4-5", "claude-sonnet-4-5(low)"]

[routing.cooldowns]
base = 2.0
cap = 60.0

[routing.breaker]
min_requests = 5

[routing.retry]
max_attempts = 2
statuses = [429, 529]

[routing.warmup]
ttl = 120.0
"""
    )
    config = load_config(path)
    kwargs = stack_kwargs(config, resolve_upstreams(config))
    routing = kwargs["routing"]
    assert routing.selector == "fill-first"
    assert routing.pin_header is None
    assert routing.session_header == "x-session-id"
    assert routing.hold_first_event
    assert routing.retry.max_attempts == 2
    assert routing.retry.statuses == frozenset({429, 529})
    assert routing.warmup.ttl == 120.0
    assert routing.breaker.min_requests == 5
    assert isinstance(routing.cooldowns, RedisCooldowns)
    assert routing.cooldowns.policy.base == 2.0
    gateway = build_stack(**kwargs)
    router = gateway.forwarder.router
    assert [c.credential_id for c in router.pool("anthropic", "claude-x").members] == [
        "primary",
        "secondary",
    ]
    assert [c.credential_id for c in router.pool("anthropic", "other").members] == ["secondary"]
    assert router.plan("anthropic", "fast").alias == "fast"
    asyncio.run(gateway.aclose())

    path.write_text(path.read_text().replace('selector = "fill-first"', 'selector = "random"'))
    with pytest.raises(ConfigurationError):
        load_config(path)
    bad = path.read_text().replace('selector = "random"', "").replace("base = 2.0", "base = 0")
    path.write_text(bad)
    with pytest.raises(ConfigurationError, match="routing"):
        stack_kwargs(load_config(path), resolve_upstreams(load_config(path)))
