"""Every shared store on a real three-node Redis Cluster, through the gateway and the OpenAI SDK.

The cluster is started by the fixture on free ports (see `tests.redis_servers`). Two gateways
stand for two replicas: what one counts, the other sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from asgi_llmguard import (
    Budget,
    CooldownPolicy,
    KeyPolicy,
    RateLimit,
    Routing,
    StaticKey,
    StaticKeyStore,
    Upstream,
    budget_store,
    build_stack,
    cooldown_store,
    hash_key,
)
from asgi_llmguard.testing import FakeProvider, serve
from tests.redis_servers import redis_cluster

CALLER_KEY = "sk-llmg-cluster-0123456789abcdefghijklmnopqrstuvwxyz"
UPSTREAM_KEY = "sk-upstream-cluster-secret"
MESSAGES: Any = [{"role": "user", "content": "hello there"}]
#: Store timeouts for these tests: a client's first call also learns the cluster's slots, which
#: on a loaded test machine can take longer than the production defaults allow.
SLOW = 2.0


@pytest.fixture(scope="module")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_cluster(tmp_path_factory.mktemp("cluster")) as ports:
        yield f"redis+cluster://127.0.0.1:{ports[0]}"


def _prefix() -> str:
    return f"llmguard:test:{uuid.uuid4().hex[:12]}:"


def _keys(policy: KeyPolicy) -> StaticKeyStore:
    return StaticKeyStore([StaticKey(policy, key_hash=hash_key(CALLER_KEY))])


def _chat(server: Any) -> int:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=CALLER_KEY, max_retries=0)
    try:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=16)
    except openai.APIStatusError as exc:
        return exc.status_code
    return 200


def test_rate_limits_are_shared_by_replicas_through_the_cluster(cluster_url: str) -> None:
    # A request limit and a token limit: each request's two buckets are checked by one script,
    # so their keys must share a slot.
    policy = KeyPolicy(
        key_id="rl",
        rate_limits=(RateLimit("3/minute"), RateLimit("100000/minute", kind="tokens")),
    )
    prefix = _prefix()
    fake = FakeProvider(api_key=UPSTREAM_KEY)
    with serve(fake) as upstream:

        def gateway() -> Any:
            return build_stack(
                upstreams=[Upstream("openai", f"{upstream.url}/v1", api_key=UPSTREAM_KEY)],
                keys=_keys(policy),
                rate_limit={"storage": cluster_url, "key_prefix": prefix, "redis_timeout": SLOW},
                usage=None,
            )

        with serve(gateway()) as one, serve(gateway()) as two:
            statuses = [_chat(server) for server in (one, two, one, two, one)]
    assert statuses == [200, 200, 200, 429, 429]
    assert len(fake.requests) == 3


def test_window_algorithms_run_on_the_cluster_too(cluster_url: str) -> None:
    policy = KeyPolicy(key_id="win", rate_limits=(RateLimit("2/minute"),))
    fake = FakeProvider(api_key=UPSTREAM_KEY)
    with serve(fake) as upstream:
        app = build_stack(
            upstreams=[Upstream("openai", f"{upstream.url}/v1", api_key=UPSTREAM_KEY)],
            keys=_keys(policy),
            rate_limit={
                "storage": cluster_url,
                "key_prefix": _prefix(),
                "redis_timeout": SLOW,
                "algorithm": "sliding-window-counter",
            },
            usage=None,
        )
        with serve(app) as server:
            assert [_chat(server) for _ in range(3)] == [200, 200, 429]


def test_budgets_are_shared_by_replicas_through_the_cluster(cluster_url: str) -> None:
    budget = Budget(total=1.0)
    policy = KeyPolicy(key_id="spender", budget=budget)
    prefix = _prefix()
    fake = FakeProvider(api_key=UPSTREAM_KEY)
    with serve(fake) as upstream:

        def gateway() -> Any:
            return build_stack(
                upstreams=[Upstream("openai", f"{upstream.url}/v1", api_key=UPSTREAM_KEY)],
                keys=_keys(policy),
                usage={"budgets": budget_store(cluster_url, prefix=prefix, timeout=SLOW)},
            )

        with serve(gateway()) as one, serve(gateway()) as two:
            assert _chat(one) == 200

            async def spent_then_hold_the_rest() -> int:
                store = budget_store(cluster_url, prefix=prefix, timeout=SLOW)
                try:
                    total = (await store.spent("key:spender", budget))["total"]
                    assert total.spent_nanos > 0  # settled by replica one, seen here
                    assert total.reserved_nanos == 0
                    held = await store.reserve("key:spender", budget, total.remaining_nanos)
                    assert hasattr(held, "id")
                    return total.spent_nanos
                finally:
                    await store.aclose()

            spent = asyncio.run(spent_then_hold_the_rest())
            assert _chat(two) == 429  # nothing left: refused on the other replica
            assert _chat(one) == 429
    assert len(fake.requests) == 1
    assert spent < 1_000_000_000


def test_concurrent_reservations_never_overspend_on_the_cluster(cluster_url: str) -> None:
    budget = Budget(total=1.0, daily=1.0)
    prefix = _prefix()

    async def race() -> None:
        one = budget_store(cluster_url, prefix=prefix, timeout=SLOW)
        two = budget_store(cluster_url, prefix=prefix, timeout=SLOW)
        try:
            tenth = 100_000_000
            results = await asyncio.gather(
                *(
                    store.reserve(f"key:{subject}", budget, tenth)
                    for subject in ("a", "b", "c")
                    for store in (one, two) * 20
                )
            )
            for subject in ("a", "b", "c"):
                mine = results[:40] if subject == "a" else results[40:80]
                if subject == "c":
                    mine = results[80:]
                held = [r for r in mine if hasattr(r, "id")]
                assert len(held) == 10  # exactly the budget, never more
                # Settled on either replica, whichever made the hold.
                for i, reservation in enumerate(held):
                    assert await (one, two)[i % 2].settle(reservation, tenth)  # type: ignore[arg-type]
                usage = await two.spent(f"key:{subject}", budget)
                assert usage["total"].spent_nanos == 1_000_000_000
                assert usage["daily"].reserved_nanos == 0
                assert not hasattr(await one.reserve(f"key:{subject}", budget, 1), "id")
        finally:
            await one.aclose()
            await two.aclose()

    asyncio.run(race())


def test_cooldowns_are_shared_by_replicas_through_the_cluster(cluster_url: str) -> None:
    prefix = _prefix()
    tired = FakeProvider(api_key=UPSTREAM_KEY)
    fresh = FakeProvider(api_key=UPSTREAM_KEY)
    with serve(tired) as a, serve(fresh) as b:

        def gateway() -> Any:
            store = cooldown_store(
                cluster_url, CooldownPolicy(), prefix=prefix, refresh=0.05, timeout=SLOW
            )
            return build_stack(
                upstreams=[
                    Upstream("openai", f"{a.url}/v1", api_key=UPSTREAM_KEY, name="a"),
                    Upstream("openai", f"{b.url}/v1", api_key=UPSTREAM_KEY, name="b"),
                ],
                routing=Routing(selector="fill-first", cooldowns=store),
                usage=None,
                rate_limit=None,
            )

        with serve(gateway()) as one, serve(gateway()) as two:
            on_two = openai.OpenAI(base_url=f"{two.url}/v1", api_key="x", max_retries=0)
            on_two.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
            assert (len(tired.requests), len(fresh.requests)) == (1, 0)  # "a" first
            tired.configure(status=429, retry_after=60)
            on_one = openai.OpenAI(base_url=f"{one.url}/v1", api_key="x", max_retries=0)
            with contextlib.suppress(openai.RateLimitError):  # retried on "b" or not
                on_one.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
            tried_a = len(tired.requests)
            assert tried_a == 2
            time.sleep(0.5)  # replica two's refresher reads the cluster
            for _ in range(3):
                on_two.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
            assert len(tired.requests) == tried_a  # replica two no longer tries "a"


def test_an_unreachable_cluster_is_a_store_failure_not_a_crash() -> None:
    from tests.redis_servers import free_ports

    (port,) = free_ports(1)
    dead = f"redis+cluster://127.0.0.1:{port}"
    fake = FakeProvider(api_key=UPSTREAM_KEY)
    with serve(fake) as upstream:
        for on_error, status in (("closed", 503), ("open", 200)):
            policy = KeyPolicy(
                key_id=f"dead-{on_error}",
                rate_limits=(RateLimit("5/minute", on_error=on_error),),  # type: ignore[arg-type]
            )
            app = build_stack(
                upstreams=[Upstream("openai", f"{upstream.url}/v1", api_key=UPSTREAM_KEY)],
                keys=_keys(policy),
                rate_limit={"storage": dead, "redis_timeout": 0.5},
                usage=None,
            )
            with serve(app) as server:
                assert _chat(server) == status
        budgeted = KeyPolicy(key_id="dead-budget", budget=Budget(total=1.0))
        app = build_stack(
            upstreams=[Upstream("openai", f"{upstream.url}/v1", api_key=UPSTREAM_KEY)],
            keys=_keys(budgeted),
            rate_limit=None,
            usage={"budgets": budget_store(dead, timeout=0.5)},
        )
        with serve(app) as server:
            assert _chat(server) == 503  # budgets fail closed by default


def test_scripts_lost_by_every_node_are_loaded_again(cluster_url: str) -> None:
    # A node restart or failover empties its script cache: the batcher reloads the scripts
    # through the cluster and sends the calls answered NOSCRIPT again.
    from asgi_llmguard import redis_check

    budget = Budget(total=1.0)
    prefix = _prefix()

    async def scenario() -> None:
        store = budget_store(cluster_url, prefix=prefix, timeout=SLOW)
        check = redis_check(cluster_url)
        try:
            subjects = [f"key:s{i}" for i in range(12)]  # spread over the three nodes
            for subject in subjects:
                assert hasattr(await store.reserve(subject, budget, 1), "id")
            assert await check() is True
            admin: Any = store._redis  # the store's own cluster client
            assert await admin.script_flush()  # sent to every primary
            results = await asyncio.gather(*(store.reserve(s, budget, 1) for s in subjects))
            assert all(hasattr(r, "id") for r in results)
        finally:
            await store.aclose()
            await check.aclose()

    asyncio.run(scenario())


def test_an_operator_can_forget_a_keys_buckets_on_the_cluster(cluster_url: str) -> None:
    from asgi_llmguard import rate_limiter
    from asgi_llmguard.ratelimit import parse_limit

    limit = parse_limit(RateLimit("1/minute"))

    async def scenario() -> None:
        limiter = rate_limiter(cluster_url, key_prefix=_prefix(), redis_timeout=SLOW)
        try:
            for who in ("k=a|x", "k=a|y", "k=b|x"):
                assert (await limiter.acquire(who, limit, 1)).allowed
                assert not (await limiter.acquire(who, limit, 1)).allowed
            assert await limiter.forget("k=a|") == 2
            assert (await limiter.acquire("k=a|x", limit, 1)).allowed
            assert not (await limiter.acquire("k=b|x", limit, 1)).allowed
        finally:
            await limiter.aclose()

    asyncio.run(scenario())


async def test_stores_learn_the_cluster_layout_when_the_gateway_starts(
    cluster_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """At start every cluster store fetches the slot map, so the first request does not spend
    its store timeout (0.25 s for rate limits by default) learning it; an unreachable cluster
    at start is a warning, and the store connects on first use."""
    budgets = budget_store(cluster_url, prefix=_prefix())
    cooldowns = cooldown_store(cluster_url, CooldownPolicy(), prefix=_prefix())
    gateway = build_stack(
        upstreams=[Upstream("openai", "http://127.0.0.1:9/v1", api_key=UPSTREAM_KEY)],
        routing=Routing(cooldowns=cooldowns),
        rate_limit={"storage": cluster_url, "key_prefix": _prefix()},
        usage={"budgets": budgets},
    )
    assert gateway.rate_limit is not None
    clients = {
        "rate limits": gateway.rate_limit.limiter._client,  # type: ignore[attr-defined]
        "budgets": budgets._redis,  # type: ignore[attr-defined]
        "cooldowns": cooldowns._redis,  # type: ignore[attr-defined]
    }
    for client in clients.values():
        assert not client.nodes_manager.slots_cache  # nothing fetched yet: lazy until start
    async with gateway:
        for name, client in clients.items():
            assert len(client.nodes_manager.slots_cache) == 16384, name

    from tests.redis_servers import free_ports

    (port,) = free_ports(1)
    dead = budget_store(f"redis+cluster://127.0.0.1:{port}", prefix=_prefix())
    with caplog.at_level("WARNING", logger="asgi_llmguard"):
        async with dead:
            pass
    assert "could not reach the Redis Cluster" in caplog.text
