"""`x-should-retry` on the gateway's own refusals, with the real SDKs and their default retries.

The OpenAI and Anthropic SDKs retry 401, 403, 429 and 5xx unless the answer says
`x-should-retry: false`; a refusal that waiting cannot fix must say so, a short wait must say
`true` with `Retry-After`.
"""

from __future__ import annotations

import contextlib
import time

import anthropic
import openai
import pytest

from asgi_llmguard import (
    Budget,
    KeyPolicy,
    MemoryBudgetStore,
    RateLimit,
    StaticKey,
    StaticKeyStore,
    Upstream,
    build_stack,
    hash_key,
)
from asgi_llmguard.testing import FakeProvider, serve

UPSTREAM_KEY = "sk-upstream-should-retry-secret"
LIMITED = "sk-llmg-limited-0123456789abcdefghijklmnopqrstuvwxyz"
SPENT = "sk-llmg-spent-0123456789abcdefghijklmnopqrstuvwxyz01"
DAILY = "sk-llmg-daily-0123456789abcdefghijklmnopqrstuvwxyz01"
MESSAGES = [{"role": "user", "content": "hello"}]


class Counting:
    """Counts the requests that reach the gateway."""

    def __init__(self, app):
        self.app = app
        self.requests = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            self.requests += 1
        await self.app(scope, receive, send)


def _key(key: str, key_id: str, **policy) -> StaticKey:
    return StaticKey(KeyPolicy(key_id=key_id, **policy), key_hash=hash_key(key))


@pytest.fixture(scope="module")
def gateway():
    fake = FakeProvider(api_key=UPSTREAM_KEY)
    keys = StaticKeyStore(
        [
            _key(LIMITED, "limited", rate_limits=(RateLimit("1/minute"),)),
            _key(SPENT, "spent", budget=Budget(total=1e-9)),
            _key(DAILY, "daily", budget=Budget(daily=1e-9)),
        ]
    )
    with serve(fake) as upstream:
        app = Counting(
            build_stack(
                upstreams=[
                    Upstream("openai", f"{upstream.url}/v1", api_key=UPSTREAM_KEY, name="oa"),
                    Upstream("anthropic", upstream.url, api_key=UPSTREAM_KEY, name="an"),
                ],
                keys=keys,
                usage={"budgets": MemoryBudgetStore()},
            )
        )
        with serve(app) as server:
            yield server, app


def test_a_wrong_key_fails_at_once_with_the_sdks_default_retries(gateway):
    server, app = gateway
    before = app.requests
    started = time.monotonic()
    with pytest.raises(openai.AuthenticationError) as caught:
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="sk-wrong").chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES
        )
    assert caught.value.response.headers["x-should-retry"] == "false"
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=server.url, api_key="sk-wrong").messages.create(
            model="claude-haiku-4-5", max_tokens=5, messages=MESSAGES
        )
    assert app.requests - before == 2  # one each: neither SDK retried
    assert time.monotonic() - started < 2


def test_a_rate_limited_request_may_be_retried_after_the_wait(gateway):
    server, _ = gateway
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=LIMITED, max_retries=0)
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    headers = caught.value.response.headers
    assert headers["x-should-retry"] == "true"
    assert int(headers["retry-after"]) >= 1


def test_an_exhausted_total_budget_is_not_retried(gateway):
    server, app = gateway
    before = app.requests
    with pytest.raises(anthropic.RateLimitError) as caught:
        anthropic.Anthropic(base_url=server.url, api_key=SPENT).messages.create(
            model="claude-haiku-4-5", max_tokens=5, messages=MESSAGES
        )
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert "retry-after" not in caught.value.response.headers
    assert app.requests - before == 1


def test_a_daily_budget_says_when_it_resets_and_not_to_wait_hours(gateway):
    server, app = gateway
    before = app.requests
    with pytest.raises(openai.RateLimitError) as caught:
        openai.OpenAI(base_url=f"{server.url}/v1", api_key=DAILY).chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES
        )
    headers = caught.value.response.headers
    now = time.time()
    to_midnight = 86400 - now % 86400
    assert abs(int(headers["retry-after"]) - to_midnight) <= 5
    # A reset within the minute is worth a wait; hours away is not.
    assert headers["x-should-retry"] == ("true" if int(headers["retry-after"]) <= 60 else "false")
    if headers["x-should-retry"] == "false":
        assert app.requests - before == 1


@contextlib.contextmanager
def _two_credentials(api_key: str):
    """A served gateway with two OpenAI credentials (both ``api_key``) in front of the fake."""
    with serve(FakeProvider(api_key=UPSTREAM_KEY)) as upstream:
        app = Counting(
            build_stack(
                upstreams=[
                    Upstream("openai", f"{upstream.url}/v1", api_key=api_key, name=name)
                    for name in ("one", "two")
                ],
                keys=StaticKeyStore([_key(LIMITED, "any")]),
            )
        )
        with serve(app) as server:
            yield server, app


@pytest.fixture
def revoked_credential():
    with _two_credentials("sk-revoked-upstream-key") as served:
        yield served


@pytest.fixture
def rate_limited_credential():
    with _two_credentials(UPSTREAM_KEY) as served:
        yield served


def test_a_credential_cooling_for_an_hour_is_not_retried(revoked_credential):
    server, app = revoked_credential
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=LIMITED)
    for _ in range(2):  # the upstream refuses each credential in turn
        with pytest.raises(openai.AuthenticationError):
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    before = app.requests
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    headers = caught.value.response.headers
    assert caught.value.code == "upstream_cooling_down"
    assert int(headers["retry-after"]) > 3000  # a credential rests an hour after a 401
    assert headers["x-should-retry"] == "false"
    assert app.requests - before == 1  # the SDK's default retries did not sleep an hour


def test_a_credential_cooling_for_seconds_may_be_retried(rate_limited_credential):
    server, _ = rate_limited_credential
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=LIMITED, max_retries=0)
    with pytest.raises(openai.RateLimitError):  # the upstream's own 429 asks for 7 s
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            extra_headers={"x-fake-status": "429", "x-fake-retry-after": "7"},
        )
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    headers = caught.value.response.headers
    assert caught.value.code == "upstream_cooling_down"
    assert 1 <= int(headers["retry-after"]) <= 7
    assert headers["x-should-retry"] == "true"
