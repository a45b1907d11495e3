"""Warm-up of secondary credentials: each rule of the warm-up has a test that breaks with it.

The `Warmer` tests drive the scheduler directly with probes the test controls; the gateway tests
run fill-first routing against fake upstreams on loopback ports and look at what reached them.
"""

from __future__ import annotations

import asyncio

import anthropic
import orjson
import pytest

from asgi_llmguard import Upstream
from asgi_llmguard.forward.router import Routing, WarmupPolicy
from asgi_llmguard.forward.warmup import Warmer
from tests.forward.test_routing import Recorder, chat, fleet, gateway, oai, upstream


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def probe(result: bool, gate: asyncio.Event | None = None, calls: list[int] | None = None):  # type: ignore[no-untyped-def]
    async def run() -> bool:
        if calls is not None:
            calls.append(1)
        if gate is not None:
            await gate.wait()
        return result

    return run


async def test_inside_the_ttl_nothing_is_spawned() -> None:
    warmer = Warmer(WarmupPolicy(ttl=60))
    assert warmer.maybe_warm("p", "cred-1", probe(True))
    await warmer.wait()
    built = []

    def factory() -> object:  # a probe built would mean a task was about to start
        built.append(1)
        return probe(True)()

    tasks_before = len(asyncio.all_tasks())
    for _ in range(1000):
        assert not warmer.maybe_warm("p", "cred-1", factory)  # type: ignore[arg-type]
    assert warmer.started == 1
    assert built == []
    assert len(asyncio.all_tasks()) == tasks_before


async def test_one_warm_up_in_flight_per_provider() -> None:
    warmer = Warmer()
    gate = asyncio.Event()
    assert warmer.maybe_warm("anthropic", "cred-1", probe(True, gate))
    assert not warmer.maybe_warm("anthropic", "cred-2", probe(True))
    assert warmer.maybe_warm("openai", "cred-3", probe(True))  # another provider may run
    assert warmer.in_flight() == 2
    gate.set()
    await warmer.wait()
    assert warmer.maybe_warm("anthropic", "cred-2", probe(True))
    await warmer.wait()
    assert warmer.started == 3


async def test_the_ttl_belongs_to_the_credential() -> None:
    warmer = Warmer()
    assert warmer.maybe_warm("p", "cred-1", probe(True))
    await warmer.wait()
    assert warmer.is_warm("p", "cred-1")
    assert not warmer.is_warm("p", "cred-2")
    assert warmer.maybe_warm("p", "cred-2", probe(True))
    await warmer.wait()


async def test_a_failed_warm_up_releases_its_reservation() -> None:
    warmer = Warmer()
    assert warmer.maybe_warm("p", "cred-1", probe(False))  # a non-2xx answer
    await warmer.wait()
    assert not warmer.is_warm("p", "cred-1")
    assert warmer.failed == 1

    async def boom() -> bool:
        raise OSError("unreachable")

    assert warmer.maybe_warm("p", "cred-1", boom)  # the next one may run
    await warmer.wait()
    assert warmer.maybe_warm("p", "cred-1", probe(True))
    await warmer.wait()
    assert warmer.succeeded == 1


async def test_own_timeout_releases_the_reservation() -> None:
    warmer = Warmer(WarmupPolicy(timeout=0.05))
    never = asyncio.Event()
    assert warmer.maybe_warm("p", "cred-1", probe(True, never))
    await warmer.wait()
    assert warmer.failed == 1
    assert warmer.in_flight() == 0
    assert not warmer.is_warm("p", "cred-1")


async def test_detached_from_the_callers_cancellation() -> None:
    warmer = Warmer()
    gate = asyncio.Event()

    async def request() -> None:
        warmer.maybe_warm("p", "cred-1", probe(True, gate))
        await asyncio.sleep(10)

    caller = asyncio.create_task(request())
    await asyncio.sleep(0)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert warmer.in_flight() == 1
    gate.set()
    await warmer.wait()
    assert warmer.succeeded == 1


async def test_expired_entries_are_pruned_and_the_map_is_capped() -> None:
    clock = Clock()
    warmer = Warmer(WarmupPolicy(ttl=10, max_entries=50), clock=clock)
    for i in range(50):
        assert warmer.maybe_warm(f"p{i}", f"c{i}", probe(True))
    await warmer.wait()
    assert len(warmer) == 50
    assert not warmer.maybe_warm("p-new", "c-new", probe(True))  # full, nothing expired
    clock.now += 11
    assert warmer.maybe_warm("p-new", "c-new", probe(True))
    await warmer.wait()
    assert len(warmer) == 1


# ------------------------------------------------------------------ through the gateway


def _warm_requests(fake: object, path: str = "/v1/chat/completions") -> list[dict[str, object]]:
    return [
        orjson.loads(r.body)
        for r in fake.requests  # type: ignore[attr-defined]
        if r.path == path and (r.header("x-request-id") or "").startswith("warmup_")
    ]


def test_fill_first_warms_each_secondary_once_and_records_it_as_warmup() -> None:
    with fleet("a", "b", "c") as f:
        routing = Routing(selector="fill-first", warmup=WarmupPolicy(ttl=60))
        recorder = Recorder()
        ups = [upstream(f, n) for n in ("a", "b", "c")]
        with gateway(ups, routing, recorder) as (url, gw):
            client = oai(url)
            chat(client, "gpt-4o-mini(high)")
            warmer = gw.forwarder.warmer
            assert warmer is not None
            f.fakes["b"].wait_until(lambda: _warm_requests(f.fakes["b"]), timeout=5)
            f.fakes["c"].wait_until(lambda: _warm_requests(f.fakes["c"]), timeout=5)
            for _ in range(200):
                chat(client)
            assert warmer.started == 2
            for name in ("b", "c"):
                sent = _warm_requests(f.fakes[name])
                assert len(sent) == 1
                assert sent[0]["model"] == "gpt-4o-mini"  # the suffix never goes upstream
                assert sent[0]["max_completion_tokens"] == 1
            assert f.count("a") == 201
            events = recorder.wait_for(203)
            warm = [e for e in events if e.outcome == "warmup"]
            assert sorted(e.credential_id or "" for e in warm) == ["b", "c"]
            assert all(e.key_id is None and e.status == 200 for e in warm)
            assert all(e.input_tokens > 0 and e.cost_nanos > 0 for e in warm)


def test_a_500_to_a_warm_up_lets_the_next_request_try_again() -> None:
    with fleet("a", "b") as f:
        f.fakes["b"].configure(status=500)
        routing = Routing(selector="fill-first", warmup=WarmupPolicy(ttl=60))
        with gateway([upstream(f, "a"), upstream(f, "b")], routing) as (url, gw):
            client = oai(url)
            warmer = gw.forwarder.warmer
            assert warmer is not None
            chat(client)
            f.fakes["b"].wait_until(lambda: warmer.failed == 1, timeout=5)
            chat(client)
            f.fakes["b"].wait_until(lambda: warmer.failed == 2, timeout=5)
            assert warmer.started == 2
            f.fakes["b"].configure(status=None)
            chat(client)
            f.fakes["b"].wait_until(lambda: warmer.succeeded == 1, timeout=5)
            for _ in range(20):
                chat(client)
            assert warmer.started == 3


def test_no_warm_up_for_read_only_requests_or_pinned_sessions() -> None:
    with fleet("a", "b") as f:
        # b refuses warm-ups, so nothing stays warm: every request that may warm does.
        f.fakes["b"].configure(status=500)
        ups = [
            upstream(f, "a", provider="anthropic"),
            upstream(f, "b", provider="anthropic"),
        ]
        routing = Routing(
            selector="fill-first", warmup=WarmupPolicy(), session_header="x-session-id"
        )
        with gateway(ups, routing) as (url, gw):
            warmer = gw.forwarder.warmer
            assert warmer is not None

            def client(**headers: str) -> anthropic.Anthropic:
                return anthropic.Anthropic(
                    base_url=url,
                    api_key="client-secret-key",
                    max_retries=0,
                    default_headers=headers or None,
                )

            def create(c: anthropic.Anthropic) -> None:
                c.messages.create(
                    model="claude-haiku-4-5",
                    max_tokens=5,
                    messages=[{"role": "user", "content": "hi"}],
                )

            def settled() -> None:
                f.fakes["b"].wait_until(lambda: warmer.in_flight() == 0, timeout=5)

            for _ in range(5):
                client().messages.count_tokens(
                    model="claude-haiku-4-5", messages=[{"role": "user", "content": "hi"}]
                )
            create(client(**{"x-llmguard-credential": "a"}))
            assert warmer.started == 0

            sticky = client(**{"x-session-id": "s-1"})
            create(sticky)  # the session's first request is routed, so it may warm
            settled()
            assert warmer.started == 1
            for _ in range(3):
                create(sticky)  # now pinned by the session
                settled()
            assert warmer.started == 1
            create(client())  # an ordinary request still warms (b keeps refusing)
            settled()
            assert warmer.started == 2
            assert len(_warm_requests(f.fakes["b"], "/v1/messages")) == 2
            assert _warm_requests(f.fakes["b"], "/v1/messages/count_tokens") == []


def test_warm_up_leaves_the_alias_rotation_alone() -> None:
    def members_chosen(warm: bool) -> list[str]:
        with fleet("a", "b") as f:
            ups = [upstream(f, "a"), upstream(f, "b")]
            routing = Routing(
                selector="fill-first",
                aliases={"fast": ["m1", "m2", "m3"]},
                warmup=WarmupPolicy() if warm else None,
            )
            with gateway(ups, routing) as (url, _):
                client = oai(url)
                chosen = []
                for _ in range(6):
                    chat(client, "fast")
                    chosen.append(orjson.loads(f.fakes["a"].requests[-1].body)["model"])
                    f.fakes["a"].requests.clear()
                return chosen

    assert members_chosen(warm=True) == members_chosen(warm=False) == ["m1", "m2", "m3"] * 2


def test_upstream_keys_never_logged_by_warm_up(caplog: pytest.LogCaptureFixture) -> None:
    with fleet("a") as f:
        dead = Upstream("openai", "http://127.0.0.1:9/v1", api_key="sk-upstream-dead", name="z")
        routing = Routing(selector="fill-first", warmup=WarmupPolicy())
        with gateway([upstream(f, "a"), dead], routing) as (url, gw):
            chat(oai(url))
            warmer = gw.forwarder.warmer
            assert warmer is not None
            f.fakes["a"].wait_until(lambda: warmer.failed == 1, timeout=5)
        assert "sk-upstream" not in caplog.text


def test_a_credential_serving_by_translation_is_warmed_in_its_own_format() -> None:
    with fleet("a", "b") as f:
        routing = Routing(selector="fill-first", warmup=WarmupPolicy(ttl=60))
        recorder = Recorder()
        ups = [upstream(f, n, "anthropic", models=("claude-*",)) for n in ("a", "b")]
        with gateway(ups, routing, recorder) as (url, _):
            chat(oai(url), "claude-haiku-4-5")  # an OpenAI route, Anthropic credentials
            f.fakes["b"].wait_until(lambda: _warm_requests(f.fakes["b"], "/v1/messages"), timeout=5)
            (sent,) = _warm_requests(f.fakes["b"], "/v1/messages")
            assert sent["model"] == "claude-haiku-4-5"
            assert sent["max_tokens"] == 1
            assert [r.path for r in f.fakes["a"].requests] == ["/v1/messages"]
