"""Reloading the config file on SIGHUP, against a real ``asgi-llmguard serve`` process.

Keys, a rate limit and a price change in the file; after SIGHUP the new key works, the removed
one is refused, the new limit and price apply, and a stream in flight across the reload ends
intact with exactly one usage record. A file that does not validate leaves the old config serving.
"""

from __future__ import annotations

import concurrent.futures
import signal
import sqlite3
import time
import uuid
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import httpx
import openai
import pytest

from asgi_llmguard import Upstream
from asgi_llmguard.keys import hash_key
from asgi_llmguard.middleware.metrics import MetricsMiddleware
from asgi_llmguard.reload import ReloadableGateway
from asgi_llmguard.testing import FakeProvider, serve, serve_async
from tests.conftest import require_service
from tests.test_drain import free_port, gateway_config, gateway_process

ALICE, BOB, CAROL = (f"sk-llmg-reload-{name}-0123456789abcdef" for name in ("a", "b", "c"))
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def _keys(*entries: tuple[str, str]) -> str:
    return "".join(
        f'\n[[keys]]\nname = "{name}"\nkey_hash = "{hash_key(key)}"\n' for name, key in entries
    )


def _config(port: int, upstream: str, ledger: Path, *, keys: str, limit: str, price: int) -> str:
    extra = f"""
[rate_limit]
limits = [{{ limit = "{limit}", per = "key" }}]

[prices]
"gpt-4o-mini" = {{ input = {price}, output = {2 * price} }}
{keys}"""
    return gateway_config(port, upstream, ledger, grace=5, extra=extra)


def _until(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def _chat(url: str, key: str) -> int:
    return httpx.post(
        f"{url}/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {key}"}
    ).status_code


def _sdk_stream(url: str) -> tuple[str, str | None]:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=ALICE, max_retries=0)
    text, finish = [], None
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "long story"}],
        stream=True,
        extra_headers={"x-fake-chunk-delay": "0.05", "x-fake-chunks": "40"},
    )
    for chunk in stream:
        if chunk.choices:
            text.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
    return "".join(text), finish


def test_sighup_reloads_keys_limits_and_prices_without_dropping_a_stream(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    ledger = tmp_path / "ledger.sqlite3"
    config = tmp_path / "llmguard.toml"
    log = config.with_suffix(".log")
    fake = FakeProvider()
    with serve(fake) as upstream:

        def write(**kwargs: object) -> None:
            config.write_text(_config(port, upstream.url, ledger, **kwargs))  # type: ignore[arg-type]

        write(keys=_keys(("alice", ALICE), ("bob", BOB)), limit="1000/minute", price=1)
        with (
            gateway_process(config, port) as proc,
            concurrent.futures.ThreadPoolExecutor(1) as pool,
        ):
            assert _chat(url, BOB) == 200
            assert _chat(url, CAROL) == 401
            stream = pool.submit(_sdk_stream, url)
            fake.wait_until(lambda: fake.active_streams == 1, 10.0)

            # Bob removed, Carol added, a tighter limit, a higher price.
            write(keys=_keys(("alice", ALICE), ("carol", CAROL)), limit="2/minute", price=3)
            proc.send_signal(signal.SIGHUP)
            _until(lambda: _chat(url, CAROL) == 200, "the new key was never accepted")
            assert fake.active_streams == 1  # the reload happened while the stream was going
            assert _chat(url, BOB) == 401
            assert _chat(url, CAROL) == 200
            assert _chat(url, CAROL) == 429  # the new limit: 2 per minute
            text, finish = stream.result(timeout=20)

            # A file that does not validate: refused, the running config serves on.
            config.write_text("[server]\nport = 'not a number'\n")
            proc.send_signal(signal.SIGHUP)
            _until(lambda: "reload refused" in log.read_text(), "the bad file was not refused")
            assert _chat(url, ALICE) == 200
            assert _chat(url, BOB) == 401
            assert proc.poll() is None

            proc.send_signal(signal.SIGTERM)
            proc.wait(20)

    assert finish == "stop"  # intact: it ran to its end across the reload
    assert text
    with closing(sqlite3.connect(ledger)) as db:
        rows = list(
            db.execute(
                "SELECT key_id, stream, status, output_tokens, input_tokens, cost_nanos"
                " FROM usage_events ORDER BY recorded_at"
            )
        )
    streams = [r for r in rows if r[1] == 1]
    assert len(streams) == 1
    assert streams[0][0] == "alice"
    assert streams[0][2] == 200
    by_key = {r[0]: r for r in rows if r[1] == 0 and r[2] == 200}
    bob, carol = by_key["bob"], by_key["carol"]
    assert (bob[3], bob[4]) == (carol[3], carol[4])  # the same answer...
    assert carol[5] == 3 * bob[5] > 0  # ...at the new price


ADMIN_KEY = "adm-reload-0123456789-abcdefghijkl"


def test_admin_reload_applies_the_file_and_refuses_a_bad_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMGUARD_TEST_ADMIN_KEY", ADMIN_KEY)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    ledger = tmp_path / "ledger.sqlite3"
    config = tmp_path / "llmguard.toml"
    admin = '\n[admin]\nenabled = true\nkey_env = "LLMGUARD_TEST_ADMIN_KEY"\n'
    with serve(FakeProvider()) as upstream:

        def write(keys: str) -> None:
            text = _config(port, upstream.url, ledger, keys=keys, limit="1000/minute", price=1)
            config.write_text(text + admin)

        write(_keys(("alice", ALICE)))
        with gateway_process(config, port):
            headers = {"authorization": f"Bearer {ADMIN_KEY}"}
            assert _chat(url, CAROL) == 401
            assert httpx.post(f"{url}/admin/reload").status_code == 401  # no admin key

            write(_keys(("alice", ALICE), ("carol", CAROL)))
            done = httpx.post(f"{url}/admin/reload", headers=headers, timeout=10)
            assert done.status_code == 200, done.text
            assert _chat(url, CAROL) == 200

            config.write_text("[server]\nport = 'not a number'\n")
            refused = httpx.post(f"{url}/admin/reload", headers=headers, timeout=10)
            assert refused.status_code == 400
            assert "port" in refused.json()["error"]["message"]
            assert _chat(url, CAROL) == 200  # the running config serves on


async def test_a_reload_that_fails_to_start_leaves_the_shared_limiter_working(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new stack shares the running stack's rate limiter when ``[rate_limit]`` is unchanged;
    when the new stack then fails to start, closing what it started must not close that
    limiter: the running stack keeps counting in Redis, without store errors."""
    require_service("Redis", "127.0.0.1", 6379)
    prefix = f"llmguard-test:{uuid.uuid4().hex[:12]}:"
    config = tmp_path / "llmguard.toml"
    base = (
        f"[usage]\nenabled = false\n"
        f"[rate_limit]\nstorage = 'redis://127.0.0.1:6379/0'\nkey_prefix = '{prefix}'\n"
        "limits = [{ limit = '3/minute', per = 'global' }]\n"
    )
    config.write_text(base)
    with serve(FakeProvider()) as upstream:
        upstreams = [Upstream("openai", f"{upstream.url}/v1", api_key="sk-upstream-reload")]
        gateway = ReloadableGateway(config, upstreams=upstreams)
        async with (
            serve_async(gateway, lifespan="on") as server,
            httpx.AsyncClient(base_url=server.url) as client,
        ):
            assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200

            async def refuses(self: object) -> None:
                raise OSError("the metrics refresher cannot start")

            monkeypatch.setattr(MetricsMiddleware, "start", refuses)
            config.write_text(base + "[metrics]\n")
            result = await gateway.reload()
            assert not result.ok
            assert "failed to start" in (result.error or "")

            statuses = [
                (await client.post("/v1/chat/completions", json=CHAT)).status_code for _ in range(3)
            ]
            assert statuses == [200, 200, 429]
            limiter = gateway.gateway.rate_limit
            assert limiter is not None
            assert limiter.stats.store_errors == 0
