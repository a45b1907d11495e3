"""Every shared store over TLS (``rediss://``) to a Redis that asks for client certificates.

The test makes its own CA, server and client certificates (``openssl``) and starts its own
TLS-only ``redis-server`` on a free port (see `tests.redis_servers`).
"""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import openai
import pytest

from asgi_llmguard import (
    Budget,
    KeyPolicy,
    RateLimit,
    StaticKey,
    StaticKeyStore,
    Upstream,
    budget_store,
    build_stack,
    cooldown_store,
    hash_key,
    redis_check,
)
from asgi_llmguard.testing import FakeProvider, serve
from asgi_llmguard.usage.budgets import BudgetStoreError
from tests.redis_servers import need_binaries, tls_redis

CALLER_KEY = "sk-llmg-tls-0123456789abcdefghijklmnopqrstuvwxyz0123"
UPSTREAM_KEY = "sk-upstream-tls-secret"
#: Store timeouts for these tests: a TLS handshake on a loaded test machine can take longer than
#: the production defaults allow.
SLOW = 2.0


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certs(directory: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, both signed by it."""
    need_binaries("openssl")
    d = directory
    ca = ("-subj", "/CN=llmguard test CA", "-keyout", "ca.key", "-out", "ca.crt")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", *ca, cwd=d)
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, ext in (("server", ["-extfile", "server.ext"]), ("client", [])):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "2", "-out", f"{name}.crt", *ext, cwd=d)  # fmt: skip
    return {
        "ca_cert": d / "ca.crt",
        "server_cert": d / "server.crt",
        "server_key": d / "server.key",
        "client_cert": d / "client.crt",
        "client_key": d / "client.key",
    }


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, dict[str, Path]]]:
    directory = tmp_path_factory.mktemp("tls")
    certs = make_certs(directory)
    with tls_redis(directory, certs) as port:
        yield port, certs


def _client_options(certs: dict[str, Path]) -> dict[str, str]:
    return {
        "ssl_ca_certs": str(certs["ca_cert"]),
        "ssl_certfile": str(certs["client_cert"]),
        "ssl_keyfile": str(certs["client_key"]),
    }


def test_budgets_over_tls_with_a_client_certificate(tls: tuple[int, dict[str, Path]]) -> None:
    port, certs = tls
    url = f"rediss://127.0.0.1:{port}/0"
    prefix = f"llmguard:test:{uuid.uuid4().hex[:12]}:"
    budget = Budget(total=1.0)

    async def scenario() -> None:
        store = budget_store(url, prefix=prefix, timeout=SLOW, **_client_options(certs))
        try:
            held = await store.reserve("key:t", budget, 400_000_000)
            assert await store.settle(held, 250_000_000)  # type: ignore[arg-type]
            assert (await store.spent("key:t", budget))["total"].spent_nanos == 250_000_000
        finally:
            await store.aclose()
        # No client certificate: the server refuses the handshake.
        anonymous = budget_store(
            url, prefix=prefix, timeout=SLOW, ssl_ca_certs=str(certs["ca_cert"])
        )
        try:
            with pytest.raises(BudgetStoreError):
                await anonymous.reserve("key:t", budget, 1)
        finally:
            await anonymous.aclose()
        # A server this CA did not sign is not trusted (the system CAs do not know ours).
        own = {"ssl_certfile": str(certs["client_cert"]), "ssl_keyfile": str(certs["client_key"])}
        untrusted = budget_store(url, prefix=prefix, timeout=SLOW, **own)
        try:
            with pytest.raises(BudgetStoreError):
                await untrusted.reserve("key:t", budget, 1)
        finally:
            await untrusted.aclose()

    asyncio.run(scenario())


def test_rate_limits_cooldowns_and_health_over_tls_options_in_the_url(
    tls: tuple[int, dict[str, Path]],
) -> None:
    port, certs = tls
    url = f"rediss://127.0.0.1:{port}/0?{urlencode(_client_options(certs))}"
    policy = KeyPolicy(key_id="tls", rate_limits=(RateLimit("2/minute"),))
    keys = StaticKeyStore([StaticKey(policy, key_hash=hash_key(CALLER_KEY))])
    fake = FakeProvider(api_key=UPSTREAM_KEY)
    with serve(fake) as upstream:
        app = build_stack(
            upstreams=[Upstream("openai", f"{upstream.url}/v1", api_key=UPSTREAM_KEY)],
            keys=keys,
            rate_limit={
                "storage": url,
                "key_prefix": f"llmguard:test:{uuid.uuid4().hex}:",
                "redis_timeout": SLOW,
            },
            usage=None,
        )
        with serve(app) as server:
            client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=CALLER_KEY, max_retries=0)
            statuses = []
            for _ in range(3):
                try:
                    client.chat.completions.create(
                        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
                    )
                    statuses.append(200)
                except openai.APIStatusError as exc:
                    statuses.append(exc.status_code)
            assert statuses == [200, 200, 429]

    async def shared() -> None:
        prefix = f"llmguard:test:{uuid.uuid4().hex[:12]}:"
        one: Any = cooldown_store(url, prefix=prefix, timeout=SLOW)
        two: Any = cooldown_store(url, prefix=prefix, timeout=SLOW)
        check = redis_check(url, timeout=SLOW)
        try:
            assert await one.record_failure("a", "m", status=429, retry_after=30) is not None
            await two.pull()
            assert two.cooling_until("a", "m") is not None
            assert await check() is True
        finally:
            await one.aclose()
            await two.aclose()
            await check.aclose()

    asyncio.run(shared())


def test_a_cluster_over_tls(tmp_path_factory: pytest.TempPathFactory) -> None:
    from asgi_llmguard import rate_limiter
    from asgi_llmguard.ratelimit import parse_limit
    from tests.redis_servers import redis_cluster

    directory = tmp_path_factory.mktemp("tls-cluster")
    certs = make_certs(directory)
    limit = parse_limit(RateLimit("1/minute"))
    budget = Budget(total=1.0)
    with redis_cluster(directory, certs) as ports:
        url = f"rediss+cluster://127.0.0.1:{ports[0]}?{urlencode(_client_options(certs))}"

        async def scenario() -> None:
            prefix = f"llmguard:test:{uuid.uuid4().hex[:12]}:"
            budgets = budget_store(url, prefix=prefix, timeout=SLOW)
            limiter = rate_limiter(url, key_prefix=prefix, redis_timeout=SLOW)
            try:
                # Subjects on every node: each is reached over TLS with the client certificate.
                for i in range(12):
                    held = await budgets.reserve(f"key:{i}", budget, 10)
                    assert await budgets.settle(held, 10)  # type: ignore[arg-type]
                assert (await limiter.acquire("k=a|x", limit, 1)).allowed
                assert not (await limiter.acquire("k=a|x", limit, 1)).allowed
            finally:
                await budgets.aclose()
                await limiter.aclose()

        asyncio.run(scenario())
