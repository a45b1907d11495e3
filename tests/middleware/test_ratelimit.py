"""RateLimitMiddleware in-process: scopes, token settlement, headers, errors, identity."""

from __future__ import annotations

import asyncio

import anyio
import httpx
import orjson
import pytest
from fastapi import FastAPI
from starlette.middleware import Middleware

from asgi_llmguard.errors import ConfigurationError
from asgi_llmguard.middleware.classify import ClassifyMiddleware
from asgi_llmguard.middleware.ratelimit import RateLimitMiddleware
from asgi_llmguard.policy import KeyPolicy, RateLimit
from asgi_llmguard.ratelimit import (
    Decision,
    Limiter,
    MemoryGcra,
    ParsedLimit,
    StoreUnavailable,
    parse_limit,
)
from asgi_llmguard.testing import wait_for
from tests.ratelimit._apps import KeyLayer, UsageStub, ok_app

pytestmark = pytest.mark.anyio

CHAT = "/v1/chat/completions"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def build(*, limits=(), keys=None, inner=ok_app, **kwargs):
    # A clock that stands still unless a test moves it: resets and waits are exact.
    kwargs.setdefault("limiter", MemoryGcra(clock=FakeClock()))
    rl = RateLimitMiddleware(UsageStub(inner), limits=limits, **kwargs)
    return ClassifyMiddleware(KeyLayer(rl, keys or {})), rl


def client(app, peer=("10.0.0.1", 5000)) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=peer), base_url="http://gw"
    )


def chat(model="gpt-4o-mini", **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


async def test_requests_per_key_headers_and_openai_429():
    keys = {
        "a": KeyPolicy("key-a", rate_limits=(RateLimit("3/minute"),)),
        "b": KeyPolicy("key-b", rate_limits=(RateLimit("3/minute"),)),
    }
    app, rl = build(keys=keys)
    async with client(app) as c:
        seen = []
        for _ in range(3):
            r = await c.post(CHAT, json=chat(), headers={"x-test-key": "a"})
            assert r.status_code == 200
            # ours replace the upstream's own (ok_app sends x-ratelimit-limit-requests: 9999)
            assert r.headers.get_list("x-ratelimit-limit-requests") == ["3"]
            seen.append(r.headers["x-ratelimit-remaining-requests"])
        assert seen == ["2", "1", "0"]
        assert r.headers["x-ratelimit-reset-requests"] == "1m0s"
        r = await c.post(CHAT, json=chat(), headers={"x-test-key": "a"})
        assert r.status_code == 429
        assert r.headers["retry-after"] == "20"
        assert r.headers["x-ratelimit-remaining-requests"] == "0"
        assert "x-ratelimit-limit-tokens" not in r.headers
        error = r.json()["error"]
        assert error["type"] == "requests"
        assert error["code"] == "rate_limit_exceeded"
        assert "20s" in error["message"]
        # another key has its own bucket
        r = await c.post(CHAT, json=chat(), headers={"x-test-key": "b"})
        assert r.status_code == 200
    assert rl.stats.rejected == 1


async def test_anthropic_routes_get_anthropic_errors():
    app, _ = build(limits=[RateLimit("1/minute", per="global")])
    async with client(app) as c:
        body = {"model": "claude-sonnet-4-6", "max_tokens": 10, "messages": []}
        assert (await c.post("/v1/messages", json=body)).status_code == 200
        r = await c.post("/v1/messages", json=body)
    assert r.status_code == 429
    assert r.json() == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": r.json()["error"]["message"]},
    }
    assert r.headers["retry-after"] == "60"


async def test_no_limit_no_headers_and_body_untouched():
    app, _ = build(limits=[RateLimit("5/minute", per="model", models=("gpt-5",))])
    async with client(app) as c:
        r = await c.post(CHAT, json=chat("gpt-4o"))
        assert r.status_code == 200
        assert r.headers["x-ratelimit-limit-requests"] == "9999"  # the upstream's, untouched
        r = await c.get("/v1/models")
        assert r.status_code == 200


async def test_token_limit_admits_while_tokens_remain_then_waits_out_the_debt():
    clock = FakeClock()
    keys = {"a": KeyPolicy("key-a", rate_limits=(RateLimit("1000/minute", kind="tokens"),))}
    app, rl = build(keys=keys, limiter=MemoryGcra(clock=clock))
    headers = {"x-test-key": "a", "x-test-usage": "1500"}
    async with client(app) as c:
        r = await c.post(CHAT, json=chat(), headers=headers)
        assert r.status_code == 200
        assert r.headers["x-ratelimit-limit-tokens"] == "1000"
        assert r.headers["x-ratelimit-remaining-tokens"] == "1000"
        assert "x-ratelimit-limit-requests" not in r.headers
        # 1500 tokens charged against 1000/minute: 500 in debt, 30 s to pay back, + 1 token
        r = await c.post(CHAT, json=chat(), headers=headers)
        assert r.status_code == 429
        assert r.json()["error"]["type"] == "tokens"
        assert r.headers["retry-after"] == "31"
        assert r.headers["x-ratelimit-reset-tokens"] == "1m30s"
        clock.now += 30.1
        r = await c.post(CHAT, json=chat(), headers={"x-test-key": "a", "x-test-usage": "10"})
        assert r.status_code == 200
        assert r.headers["x-ratelimit-remaining-tokens"] == "1"
    # token limits do not apply where nothing is metered
    async with client(app) as c:
        assert (await c.get("/v1/models", headers={"x-test-key": "a"})).status_code == 200
    assert rl.stats.rejected == 1


async def test_unknown_usage_settles_with_the_estimate_and_errors_with_nothing():
    spec = RateLimit("100000/minute", kind="tokens", per="global")
    app, rl = build(limits=[spec], default_max_output_tokens=1000)
    limit = parse_limit(spec)
    bucket = f"g|{limit.ident}"
    body = orjson.dumps(chat(max_tokens=200))
    async with client(app) as c:
        r = await c.post(CHAT, content=body, headers={"content-type": "application/json"})
        assert r.status_code == 200
        assert orjson.loads(r.content) == {"received": len(body)}  # the body was replayed
        left = (await rl.limiter.peek(bucket, limit)).remaining
        assert 100_000 - left == len(body) // 4 + 1 + 200
        r = await c.post(CHAT, json=chat(), headers={"x-test-status": "502"})
        assert r.status_code == 502
        assert (await rl.limiter.peek(bucket, limit)).remaining == left  # nothing charged
        r = await c.post(CHAT, json=chat(), headers={"x-test-usage": "7"})
        assert (await rl.limiter.peek(bucket, limit)).remaining == left - 7


async def test_reserve_tokens_needs_room_for_the_estimate():
    spec = RateLimit("1000/minute", kind="tokens", per="global")
    app, rl = build(limits=[spec], reserve_tokens=True)
    limit = parse_limit(spec)
    async with client(app) as c:
        r = await c.post(CHAT, json=chat(max_tokens=700), headers={"x-test-usage": "650"})
        assert r.status_code == 200
        # the reservation (~720) was replaced by the actual 650
        assert (await rl.limiter.peek(f"g|{limit.ident}", limit)).remaining == 350
        r = await c.post(CHAT, json=chat(max_tokens=700))
        assert r.status_code == 429  # 350 left is not room for ~720, though not empty
        r = await c.post(CHAT, json=chat(max_tokens=300), headers={"x-test-usage": "5"})
        assert r.status_code == 200
        # a request larger than a full bucket reserves the full bucket, not forever refused
        r = await c.post(CHAT, json=chat(max_tokens=5000))
        assert r.status_code == 429


async def test_model_scopes_and_globs():
    limits = [
        RateLimit("2/minute", per="model", models=("gpt-4o*",)),
        RateLimit("1/minute", per="key_model", models=("claude-*",)),
    ]
    keys = {"a": KeyPolicy("key-a"), "b": KeyPolicy("key-b")}
    app, _ = build(limits=limits, keys=keys)
    async with client(app) as c:

        async def post(model, key="a"):
            return (await c.post(CHAT, json=chat(model), headers={"x-test-key": key})).status_code

        assert [await post("gpt-4o"), await post("gpt-4o"), await post("gpt-4o")] == [200, 200, 429]
        assert await post("gpt-4o-mini") == 200  # its own model bucket
        assert await post("gpt-4o-mini", "b") == 200  # per model: keys share it
        assert await post("gpt-4o-mini", "b") == 429
        assert [await post("gpt-5") for _ in range(5)] == [200] * 5  # not matched
        assert [await post("claude-x"), await post("claude-x")] == [200, 429]
        assert await post("claude-x", "b") == 200  # per key and model
        # Azure deployment paths name the model without a body
        path = "/openai/deployments/gpt-4o-prod/chat/completions"
        assert (await c.post(path, json={"messages": []})).status_code == 200


async def test_invalid_json_is_a_400_only_when_the_body_is_needed():
    app, _ = build(limits=[RateLimit("9/minute", per="model")])
    async with client(app) as c:
        r = await c.post(CHAT, content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 400
        assert r.json()["error"]["type"] == "invalid_request_error"
    app, _ = build(limits=[RateLimit("9/minute", per="global")])
    async with client(app) as c:
        r = await c.post(CHAT, content=b"{not json")
        assert r.status_code == 200  # nothing here needed the body: a later layer decides


async def test_a_refusal_gives_back_what_earlier_limits_took():
    own = RateLimit("5/minute")
    keys = {"a": KeyPolicy("key-a", rate_limits=(own,))}
    app, rl = build(limits=[RateLimit("2/minute", per="global")], keys=keys)
    async with client(app) as c:
        codes = [
            (await c.post(CHAT, json=chat(), headers={"x-test-key": "a"})).status_code
            for _ in range(4)
        ]
    assert codes == [200, 200, 429, 429]
    limit = parse_limit(own)
    assert (await rl.limiter.peek(f"k=key-a|{limit.ident}", limit)).remaining == 3


async def test_same_limit_from_key_and_gateway_counts_once():
    keys = {"a": KeyPolicy("key-a", rate_limits=(RateLimit("3/minute"),))}
    app, _ = build(limits=[RateLimit("3/minute")], keys=keys)
    async with client(app) as c:
        codes = [
            (await c.post(CHAT, json=chat(), headers={"x-test-key": "a"})).status_code
            for _ in range(4)
        ]
    assert codes == [200, 200, 200, 429]


class BrokenLimiter(Limiter):
    algorithm = "broken"

    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    async def acquire(self, key: str, limit: ParsedLimit, cost: float) -> Decision:
        raise StoreUnavailable("down")

    async def charge(self, key: str, limit: ParsedLimit, cost: float) -> None:
        raise StoreUnavailable("down")

    async def peek(self, key: str, limit: ParsedLimit) -> Decision:
        raise StoreUnavailable("down")

    async def aclose(self) -> None:
        self.closed = True


async def test_store_failure_follows_each_limits_policy():
    keys = {
        "open": KeyPolicy("k-open", rate_limits=(RateLimit("1/minute", on_error="open"),)),
        "closed": KeyPolicy("k-closed", rate_limits=(RateLimit("1/minute"),)),
    }
    limiter = BrokenLimiter()
    app, rl = build(keys=keys, limiter=limiter)
    async with client(app) as c:
        r = await c.post(CHAT, json=chat(), headers={"x-test-key": "open"})
        assert r.status_code == 200
        assert r.headers["x-ratelimit-limit-requests"] == "9999"  # no limit answered: none added
        r = await c.post(CHAT, json=chat(), headers={"x-test-key": "closed"})
        assert r.status_code == 503
        assert r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "rate_limit_unavailable"
    assert (rl.stats.fail_open, rl.stats.fail_closed) == (1, 1)


async def test_fallback_identity_is_the_peer_unless_a_trusted_proxy_says_otherwise():
    limits = [RateLimit("1/minute", per="key")]
    app, _ = build(limits=limits)
    async with client(app, peer=("203.0.113.7", 1)) as c:
        assert (await c.post(CHAT, json=chat())).status_code == 200
        spoofed = {"x-forwarded-for": "198.51.100.1"}
        assert (await c.post(CHAT, json=chat(), headers=spoofed)).status_code == 429
    async with client(app, peer=("203.0.113.8", 1)) as c:
        assert (await c.post(CHAT, json=chat())).status_code == 200

    app, _ = build(limits=limits, trusted_proxies=["10.0.0.0/8"])
    async with client(app, peer=("10.1.2.3", 1)) as c:
        for client_ip in ("198.51.100.1", "198.51.100.2"):
            # a spoofed left-most entry is ignored: the proxy appended the real peer
            xff = {"x-forwarded-for": f"1.1.1.1, {client_ip}, 10.9.9.9"}
            assert (await c.post(CHAT, json=chat(), headers=xff)).status_code == 200
            assert (await c.post(CHAT, json=chat(), headers=xff)).status_code == 429


async def test_lifespan_and_other_scopes_pass_through_and_shutdown_closes_the_limiter():
    limiter = BrokenLimiter()
    events = []

    async def inner(scope, receive, send):
        events.append(scope["type"])
        if scope["type"] == "lifespan":
            await receive()
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await send({"type": "lifespan.shutdown.complete"})

    rl = RateLimitMiddleware(inner, limits=[RateLimit("1/minute", per="global")], limiter=limiter)
    messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    sent = []

    async def receive():
        return next(messages)

    async def send(message):
        sent.append(message["type"])

    await rl({"type": "lifespan"}, receive, send)
    await rl({"type": "websocket", "path": "/v1/responses", "headers": []}, receive, send)
    assert events == ["lifespan", "websocket"]
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert limiter.closed


async def test_per_key_specs_are_parsed_once_into_a_bounded_cache():
    keys = {
        str(i): KeyPolicy(f"k{i}", rate_limits=(RateLimit(f"{i + 1}/minute"),)) for i in range(10)
    }
    keys["bad"] = KeyPolicy("k-bad", rate_limits=(RateLimit("lots"),))
    app, rl = build(keys=keys, max_key_specs=4)
    async with client(app) as c:
        for name in [*keys][:10]:
            r = await c.post(CHAT, json=chat(), headers={"x-test-key": name})
            assert r.status_code == 200
            assert r.headers["x-ratelimit-limit-requests"] == str(int(name) + 1)
        r = await c.post(CHAT, json=chat(), headers={"x-test-key": "bad"})
        assert r.status_code == 500
        assert "lots" not in r.text
    assert len(rl._specs) <= 4


def test_bad_gateway_limits_fail_at_construction():
    with pytest.raises(ConfigurationError, match="amount per period"):
        RateLimitMiddleware(ok_app, limits=[RateLimit("often")])
    with pytest.raises(ConfigurationError, match="trusted_proxies"):
        RateLimitMiddleware(ok_app, trusted_proxies=["proxy.local"])
    with pytest.raises(ConfigurationError, match="storage"):
        RateLimitMiddleware(ok_app, storage="postgres://x")


async def test_alone_in_a_fastapi_app():
    api = FastAPI(
        middleware=[
            Middleware(
                RateLimitMiddleware,
                limits=[RateLimit("2/minute", per="key")],
                storage="memory://",
            )
        ]
    )

    @api.post("/ask")
    async def ask(payload: dict) -> dict:
        return {"echo": payload}

    async with client(api) as c:
        got = [await c.post("/ask", json={"q": i}) for i in range(3)]
    assert [r.status_code for r in got] == [200, 200, 429]
    assert got[0].json() == {"echo": {"q": 0}}
    assert got[1].headers["x-ratelimit-remaining-requests"] == "0"
    assert got[2].json()["error"]["code"] == "rate_limit_exceeded"


class SlowCharges(MemoryGcra):
    """Charges that suspend, as a Redis round trip does."""

    async def charge(self, key: str, limit: ParsedLimit, cost: float) -> None:
        await asyncio.sleep(0.01)
        await super().charge(key, limit, cost)


async def test_tokens_are_charged_even_when_the_request_is_cancelled():
    spec = RateLimit("100000/minute", kind="tokens", per="global")
    limit = parse_limit(spec)
    started = asyncio.Event()

    async def streaming_forever(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        started.set()
        await asyncio.sleep(3600)

    rl = RateLimitMiddleware(
        streaming_forever, limits=[spec], limiter=SlowCharges(clock=FakeClock())
    )
    body = orjson.dumps(chat(max_tokens=100))
    scope = {
        "type": "http",
        "method": "POST",
        "path": CHAT,
        "headers": [(b"content-type", b"application/json")],
        "query_string": b"",
        "client": ("10.0.0.1", 1),
    }
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        if messages:
            return messages.pop()
        await asyncio.sleep(3600)

    async def send(message):
        pass

    # anyio's cancel scope cancels every await inside it again: a charge awaited in the
    # middleware's `finally` would be cancelled too and lost.
    with anyio.move_on_after(5) as scope_:

        async def cancel_when_started():
            await started.wait()
            scope_.cancel()

        async with anyio.create_task_group() as tg:
            tg.start_soon(cancel_when_started)
            await rl(scope, receive, send)
    await wait_for(lambda: not rl._background, timeout=2)
    used = 100_000 - (await rl.limiter.peek(f"g|{limit.ident}", limit)).remaining
    assert used == len(body) // 4 + 1 + 100
