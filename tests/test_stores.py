"""Stores chosen by URL through one registry, on one Redis client policy."""

from __future__ import annotations

import uuid

import pytest

from asgi_llmguard import (
    Budget,
    ConfigurationError,
    CooldownPolicy,
    MemoryBudgetStore,
    RedisBudgetStore,
    RedisCooldowns,
    budget_store,
    cooldown_store,
    rate_limiter,
    store_from_url,
)
from asgi_llmguard._redis import redis_client
from asgi_llmguard.forward.cooldowns import MemoryCooldowns
from asgi_llmguard.ratelimit import MemoryGcra, RedisGcra, WindowLimiter
from tests.conftest import require_service

pytestmark = pytest.mark.anyio

HOST, PORT = "127.0.0.1", 6379


@pytest.mark.parametrize("url", ["memory", "memory://", "async+memory://", "MEMORY://"])
async def test_memory_spellings_all_name_the_memory_backend(url):
    assert type(budget_store(url, prefix="ignored:", timeout=1.0)) is MemoryBudgetStore
    assert type(cooldown_store(url, CooldownPolicy(cap=9.0))) is MemoryCooldowns
    assert cooldown_store(url, CooldownPolicy(cap=9.0)).policy.cap == 9.0
    assert isinstance(rate_limiter(url), MemoryGcra)
    assert isinstance(store_from_url("budgets", url), MemoryBudgetStore)


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "rediss://cache.example:6380/0",
        "unix:///run/redis.sock?db=0",
        "redis+cluster://10.0.0.1:7000",
        "rediss+cluster://10.0.0.1:7000",
        "async+redis://127.0.0.1:6379/0",
    ],
)
async def test_redis_urls_name_the_redis_backends_without_connecting(url):
    budgets = budget_store(url, prefix="p:")
    cooldowns = cooldown_store(url)
    limiter = rate_limiter(url)
    windows = rate_limiter(url, algorithm="fixed-window")
    try:
        assert isinstance(budgets, RedisBudgetStore)
        assert isinstance(cooldowns, RedisCooldowns)
        assert isinstance(limiter, RedisGcra)
        assert isinstance(windows, WindowLimiter)
    finally:
        for store in (budgets, cooldowns, limiter, windows):
            await store.aclose()


@pytest.mark.parametrize(
    "url", ["postgresql://u:pw@db/x", "memcached://h:11211", "redis://u:pw@h:port/0", "", "redis"]
)
async def test_other_urls_are_refused_naming_no_password(url):
    for kind in ("budgets", "cooldowns", "rate_limits"):
        with pytest.raises(ConfigurationError) as info:
            store_from_url(kind, url)  # type: ignore[arg-type]
        assert "pw" not in str(info.value)


async def test_tls_options_need_a_tls_url():
    with pytest.raises(ConfigurationError, match="rediss://"):
        budget_store("redis://127.0.0.1:6379/0", ssl_ca_certs="/etc/ca.pem")
    with pytest.raises(TypeError):
        cooldown_store("redis://127.0.0.1:6379/0", ssl_ca_cert="/typo.pem")


async def test_one_client_policy_for_every_url():
    client = redis_client(
        "rediss://:secret@cache.example:6380/2?ssl_cert_reqs=none",
        timeout=0.3,
        max_connections=5,
        ssl_ca_certs="/etc/ca.pem",
    )
    pool = client.connection_pool  # type: ignore[union-attr]
    assert pool.max_connections == 5
    assert pool.timeout == 0.3
    kwargs = pool.connection_kwargs
    assert kwargs["socket_timeout"] == 0.3
    assert kwargs["socket_connect_timeout"] == 0.3
    assert kwargs["ssl_ca_certs"] == "/etc/ca.pem"
    assert kwargs["ssl_cert_reqs"] == "none"
    assert kwargs["retry"].get_retries() == 1
    await client.aclose()
    from redis.asyncio.cluster import RedisCluster

    cluster = redis_client("redis+cluster://10.0.0.1:7000", timeout=0.3, max_connections=5)
    assert isinstance(cluster, RedisCluster)
    await cluster.aclose()


async def test_a_budget_store_from_a_url_is_shared_through_redis():
    require_service("Redis", HOST, PORT)
    prefix = f"llmguard:test:{uuid.uuid4().hex}:"
    url = f"redis://{HOST}:{PORT}/0"
    one = budget_store(url, prefix=prefix, max_connections=2)
    two = store_from_url("budgets", url, prefix=prefix)
    budget = Budget(total=1.0)
    try:
        held = await one.reserve("key:a", budget, 600_000_000)
        refused = await two.reserve("key:a", budget, 600_000_000)
        assert not hasattr(refused, "id")  # the second process sees the first one's hold
        assert await one.settle(held, 100_000_000)  # type: ignore[arg-type]
        assert (await two.spent("key:a", budget))["total"].spent_nanos == 100_000_000
    finally:
        await one.reset("key:a")
        await one.aclose()
        await two.aclose()


@pytest.mark.parametrize("memory", ["memory", "memory://"])
def test_the_config_file_names_stores_by_url_and_sizes_their_pools(tmp_path, memory):
    import asyncio

    from asgi_llmguard import build_stack
    from asgi_llmguard.config import load_config, resolve_upstreams, stack_kwargs

    path = tmp_path / "llmguard.toml"
    path.write_text(
        f"""
[[upstreams]]
name = "primary"
provider = "openai"
base_url = "http://127.0.0.1:9/v1"

[rate_limit]
storage = "redis://127.0.0.1:6379/0"
redis_max_connections = 3

[budgets]
store = "{memory}"

[routing]
cooldown_store = "rediss://cache.example:6380/0?ssl_ca_certs=/etc/ca.pem"
cooldown_store_max_connections = 5
"""
    )
    config = load_config(path)
    kwargs = stack_kwargs(config, resolve_upstreams(config))
    gateway = build_stack(**kwargs)
    try:
        limiter = gateway.layers["rate_limit"].limiter  # type: ignore[attr-defined]
        assert limiter._client.connection_pool.max_connections == 3
        assert isinstance(kwargs["usage"]["budgets"], MemoryBudgetStore)
        cooldowns = kwargs["routing"].cooldowns
        assert isinstance(cooldowns, RedisCooldowns)
        pool = cooldowns._redis.connection_pool
        assert pool.max_connections == 5
        assert pool.connection_kwargs["ssl_ca_certs"] == "/etc/ca.pem"
    finally:
        asyncio.run(gateway.aclose())


async def test_key_databases_come_from_the_same_registry(tmp_path):
    from asgi_llmguard import SQLiteKeyStore

    keys = store_from_url("keys", f"sqlite:///{tmp_path}/keys.sqlite3")
    assert isinstance(keys, SQLiteKeyStore)
    with pytest.raises(ConfigurationError):
        store_from_url("keys", "redis://127.0.0.1:6379/0")
    with pytest.raises(ConfigurationError, match="unknown kind"):
        store_from_url("sessions", "memory://")  # type: ignore[arg-type]
