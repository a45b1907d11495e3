"""Vertex AI upstream credentials: real google-auth against the fake Vertex AI's token endpoint."""

from __future__ import annotations

import asyncio
import logging
import socket
import time

import httpx
import pytest

from asgi_llmguard.providers.google_auth import GoogleCredentialsError, GoogleTokenSource
from asgi_llmguard.testing import FakeVertex, serve

GEMINI = (
    "/v1/projects/fake-project/locations/us-central1/publishers/google/models/m:generateContent"
)
BODY = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}


@pytest.fixture(scope="module")
def fake_and_url():
    fake = FakeVertex()
    with serve(fake) as upstream:
        yield fake, upstream.url


@pytest.fixture
def fake(fake_and_url):
    fake, _ = fake_and_url
    fake.configure(token_expires_in=3599, token_status=None, token_latency=0.0)
    fake.reset()
    return fake


@pytest.fixture
def key_file(fake, fake_and_url, tmp_path):
    return fake.write_service_account_file(tmp_path / "sa.json", fake_and_url[1])


def _token_requests(fake: FakeVertex) -> int:
    return sum(1 for r in fake.requests if r.path == "/token")


def _call(url: str, token: str) -> int:
    answer = httpx.post(url + GEMINI, json=BODY, headers={"authorization": f"Bearer {token}"})
    return answer.status_code


async def test_the_token_is_fetched_once_and_cached(fake, fake_and_url, key_file):
    source = GoogleTokenSource.from_service_account_file(key_file)
    assert source.token() is None
    first = await source.get()
    assert [await source.get() for _ in range(5)] == [first] * 5
    assert [source.token() for _ in range(1000)] == [first] * 1000
    assert fake.tokens_issued == 1
    assert _token_requests(fake) == 1
    assert source.project_id == "fake-project"
    # the fake accepted the signed assertion, and accepts the token it issued
    assert await asyncio.to_thread(_call, fake_and_url[1], first) == 200
    await source.aclose()


async def test_the_token_is_refreshed_ahead_of_expiry_without_blocking_callers(fake, key_file):
    fake.configure(token_expires_in=2, token_latency=0.5)
    source = GoogleTokenSource.from_service_account_file(
        key_file, refresh_margin=1.0, expiry_skew=0.1
    )
    first = await source.get()
    await asyncio.sleep(1.05)  # inside the refresh margin, still valid
    slowest = 0.0
    seen = set()
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        started = time.perf_counter()
        token = source.token()
        slowest = max(slowest, time.perf_counter() - started)
        assert token is not None  # callers never lack a token while the refresh runs
        seen.add(token)
        if token != first:
            break
        await asyncio.sleep(0.01)
    assert len(seen) == 2, "the token was not refreshed before it expired"
    # the refresh took 0.5 s at the endpoint; no caller waited for it
    assert slowest < 0.15
    assert fake.tokens_issued == 2
    await source.aclose()


async def test_concurrent_callers_share_one_refresh(fake, key_file):
    fake.configure(token_latency=0.3)
    source = GoogleTokenSource.from_service_account_file(key_file)
    tokens = await asyncio.gather(*(source.get() for _ in range(50)))
    assert len(set(tokens)) == 1
    assert fake.tokens_issued == 1
    assert _token_requests(fake) == 1
    await source.aclose()


async def test_callers_in_other_threads_share_the_same_refresh(fake, key_file):
    fake.configure(token_latency=0.3)
    source = GoogleTokenSource.from_service_account_file(key_file)
    tokens = await asyncio.gather(
        *(asyncio.to_thread(asyncio.run, source.get()) for _ in range(4)), source.get()
    )
    assert len(set(tokens)) == 1
    assert fake.tokens_issued == 1
    await source.aclose()


async def test_a_cancelled_waiter_does_not_cancel_the_refresh_for_the_others(fake, key_file):
    fake.configure(token_latency=0.3)
    source = GoogleTokenSource.from_service_account_file(key_file)
    doomed = asyncio.ensure_future(source.get())
    others = [asyncio.ensure_future(source.get()) for _ in range(3)]
    await asyncio.sleep(0.05)
    doomed.cancel()
    tokens = await asyncio.gather(*others)
    assert len(set(tokens)) == 1
    assert source.token() == tokens[0]
    assert fake.tokens_issued == 1
    await source.aclose()


async def test_the_token_endpoint_can_be_given_apart_from_the_key_file(
    fake, fake_and_url, tmp_path
):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    path = fake.write_service_account_file(tmp_path / "sa.json", f"http://127.0.0.1:{closed}")
    source = GoogleTokenSource.from_service_account_file(path, token_uri=f"{fake_and_url[1]}/token")
    assert await source.get()
    assert fake.tokens_issued == 1
    await source.aclose()


async def test_a_failing_endpoint_leaves_the_valid_token_in_use(fake, key_file, caplog):
    caplog.set_level(logging.DEBUG)
    fake.configure(token_expires_in=4)
    source = GoogleTokenSource.from_service_account_file(
        key_file, refresh_margin=2, expiry_skew=0.1, retry_interval=0.2
    )
    first = await source.get()
    fake.configure(token_status=400)
    await asyncio.sleep(2.05)  # inside the refresh margin
    assert source.token() == first
    await fake.wait_for(lambda: source.failures >= 1, timeout=2)
    assert source.token() == first  # still valid: still served
    assert await source.get() == first
    failures = [r for r in caplog.records if "google_token_refresh_failed" in r.getMessage()]
    assert failures
    assert "keeping the current token" in failures[0].getMessage()
    # the endpoint heals: the next attempt (after retry_interval) gets a new token
    fake.configure(token_status=None)
    await asyncio.sleep(0.25)
    assert source.token() == first
    await fake.wait_for(lambda: source.token() not in (first, None), timeout=2)
    await source.aclose()


async def test_no_token_and_a_refusing_endpoint_raise_a_clear_error(fake, key_file):
    fake.configure(token_status=400)
    source = GoogleTokenSource.from_service_account_file(key_file, failure_hold=5)
    with pytest.raises(GoogleCredentialsError) as caught:
        await source.get()
    assert caught.value.retryable is False
    message = str(caught.value)
    assert "llm-gateway@fake-project.iam.gserviceaccount.com" in message
    assert "refused the credential (invalid_grant)" in message
    # within failure_hold the error comes back without another request to the endpoint
    asked = _token_requests(fake)
    with pytest.raises(GoogleCredentialsError):
        await source.get()
    assert _token_requests(fake) == asked
    with pytest.raises(GoogleCredentialsError):
        await source.start()
    await source.aclose()


async def test_an_unreachable_endpoint_is_a_retryable_error(fake, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    path = fake.write_service_account_file(tmp_path / "sa.json", f"http://127.0.0.1:{closed}")
    source = GoogleTokenSource.from_service_account_file(path)
    with pytest.raises(GoogleCredentialsError) as caught:
        await source.get()
    assert caught.value.retryable is True
    assert "could not be reached" in str(caught.value)


async def test_the_token_and_the_key_never_appear_in_repr_errors_or_logs(fake, key_file, caplog):
    caplog.set_level(logging.DEBUG)
    source = GoogleTokenSource.from_service_account_file(key_file)
    assert "no token" in repr(source)
    token = await source.get()
    fake.configure(token_status=403)
    source_failing = GoogleTokenSource.from_service_account_file(key_file)
    with pytest.raises(GoogleCredentialsError) as caught:
        await source_failing.get()
    private_key = fake.account.info("x")["private_key"]
    key_line = private_key.splitlines()[1]
    texts = [repr(source), str(source), repr(source_failing), str(caught.value)]
    texts += [r.getMessage() for r in caplog.records]
    texts += [str(r.args) for r in caplog.records]
    assert texts
    assert all(token not in t and key_line not in t for t in texts)
    assert "token expires in" in repr(source)
    await source.aclose()


async def test_application_default_credentials_read_the_key_file_named_by_the_env(
    fake, key_file, monkeypatch
):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
    source = GoogleTokenSource.application_default()
    assert source.project_id == "fake-project"
    assert repr(source).startswith("GoogleTokenSource('application-default'")
    async with source:
        assert source.token() is not None
    assert fake.tokens_issued == 1


def test_a_bad_key_file_is_a_configuration_error(tmp_path):
    from asgi_llmguard import ConfigurationError

    bad = tmp_path / "sa.json"
    bad.write_text('{"type": "service_account"}')
    with pytest.raises(ConfigurationError, match="service-account key file"):
        GoogleTokenSource.from_service_account_file(bad)
    with pytest.raises(ConfigurationError, match="service-account key file"):
        GoogleTokenSource.from_service_account_file(tmp_path / "missing.json")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_an_unreachable_endpoint_at_start_is_retried_in_the_background(
    fake, tmp_path, caplog
):
    caplog.set_level(logging.DEBUG, logger="asgi_llmguard.google_auth")
    port = _free_port()
    path = fake.write_service_account_file(tmp_path / "sa.json", f"http://127.0.0.1:{port}")
    source = GoogleTokenSource.from_service_account_file(path, retry_interval=0.2)
    await source.start()  # a temporary failure does not fail the start
    assert source.token() is None
    why = source.unavailable()
    assert why.retryable is True
    assert why.retry_after is not None
    assert 0 < why.retry_after <= 1
    await fake.wait_for(lambda: source.failures >= 3, timeout=5)
    # the same failure again and again is logged once
    logged = [
        r
        for r in caplog.records
        if r.levelno >= logging.WARNING and "google_token_refresh_failed" in r.getMessage()
    ]
    assert len(logged) == 1, [r.getMessage() for r in logged]
    assert "retrying in the background" in logged[0].getMessage()
    # the endpoint comes up: the next background attempt gets a token, no caller asked for it
    with serve(fake, port=port):
        await fake.wait_for(lambda: source._token is not None, timeout=5)
    assert source.token() is not None
    assert fake.tokens_issued == 1
    await source.aclose()


async def test_a_refused_key_fails_the_start_and_is_logged_once_as_an_error(fake, key_file, caplog):
    caplog.set_level(logging.DEBUG, logger="asgi_llmguard.google_auth")
    fake.configure(token_status=400)
    source = GoogleTokenSource.from_service_account_file(key_file, retry_interval=0.1)
    with pytest.raises(GoogleCredentialsError) as caught:
        await source.start()
    assert caught.value.retryable is False
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert "check the service-account key" in errors[0].getMessage()
    private_key = fake.account.info("x")["private_key"].splitlines()[1]
    assert all(private_key not in r.getMessage() for r in caplog.records)
    # a source whose start failed schedules nothing
    asked = _token_requests(fake)
    await asyncio.sleep(0.4)
    assert _token_requests(fake) == asked
    await source.aclose()


async def test_an_expired_token_is_refreshed_in_the_background_with_no_request(fake, tmp_path):
    fake.configure(token_expires_in=2)
    port = _free_port()
    path = fake.write_service_account_file(tmp_path / "sa.json", f"http://127.0.0.1:{port}")
    source = GoogleTokenSource.from_service_account_file(
        path, refresh_margin=1, expiry_skew=0.1, retry_interval=0.2, max_retry_interval=0.4
    )
    with serve(fake, port=port):
        await source.start()
    first = source.token()
    assert first is not None
    # the token endpoint is gone; the token expires; the refreshes in the margin fail
    await asyncio.sleep(2.1)
    assert source.token() is None
    assert source.unavailable().retryable is True
    failures = source.failures
    assert failures >= 1
    with serve(fake, port=port):
        # nobody calls token(): the background retries find the endpoint back
        await fake.wait_for(lambda: source._token is not None and source._token.value != first, 3)
    assert source.token() not in (first, None)
    await source.aclose()
