"""The admin API end to end: a real gateway behind uvicorn, the admin key, real LLM traffic."""

from __future__ import annotations

import logging
import statistics
import time

import openai
import pytest

from asgi_llmguard.admin import AdminApp
from tests.admin.conftest import ADMIN_KEY, Cooldown, Running

# Every API route with a concrete path; checked against the app's own table below, so a route
# added without being listed here fails the suite.
ROUTES = [
    ("GET", "/keys"),
    ("POST", "/keys"),
    ("DELETE", "/keys/team-a"),
    ("GET", "/budgets/team-a"),
    ("POST", "/budgets/team-a/reset"),
    ("GET", "/ratelimits/team-a"),
    ("POST", "/ratelimits/team-a/reset"),
    ("GET", "/cooldowns"),
    ("POST", "/cooldowns/reset"),
    ("GET", "/usage"),
    ("GET", "/usage/top-keys"),
    ("POST", "/reload"),
]


def test_the_route_list_covers_every_route():
    import re

    app = AdminApp(key=ADMIN_KEY)
    for method, pattern in app.routes:
        assert any(m == method and re.fullmatch(pattern, p) for m, p in ROUTES), (method, pattern)
    assert len(app.routes) == len(ROUTES)


def _chat(running: Running, key: str, model: str = "gpt-4o-mini", max_tokens: int = 16) -> str:
    client = openai.OpenAI(base_url=f"{running.url}/v1", api_key=key, max_retries=0)
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hello"}], max_tokens=max_tokens
    )
    return reply.choices[0].message.content or ""


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-admin-key-0123456789abcdef", f"Basic {ADMIN_KEY}", "Bearer"],
    ids=["missing", "wrong", "not-bearer", "empty"],
)
def test_every_route_needs_the_admin_key(shared_gateway: Running, method, path, authorization):
    gateway = shared_gateway
    headers = {"authorization": authorization} if authorization else {}
    with gateway.client(None) as client:
        response = client.request(method, path, headers=headers, json={})
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    error = response.json()["error"]
    assert error["type"] == "authentication_error"
    assert error["message"]
    # Nothing was done: the key still works, and nothing was reloaded.
    assert gateway.reloads == []


def test_admin_routes_are_outside_the_guarded_stack(gateway: Running):
    # No virtual key needed, and a virtual key is not an admin key.
    with gateway.client(gateway.keys["team-a"]) as client:
        assert client.get("/keys").status_code == 401
    with gateway.client() as client:
        assert client.get("/keys").status_code == 200
        assert client.get("/nope").status_code == 404
        assert client.put("/keys").status_code == 405


def test_keys_create_list_revoke(gateway: Running):
    with gateway.client() as admin:
        created = admin.post("/keys", json={"name": "team-c", "models": ["gpt-4o*"]})
        assert created.status_code == 201
        body = created.json()
        assert body["key_id"] == "team-c"
        assert body["key"].startswith("sk-llmg-")
        assert body["policy"]["models"] == ["gpt-4o*"]
        new_key = body["key"]
        assert _chat(gateway, new_key)

        listing = admin.get("/keys").json()["keys"]
        assert {k["key_id"] for k in listing} == {"team-a", "team-b", "team-c"}
        assert new_key not in str(listing)

        assert admin.post("/keys", json={"name": "team-c"}).status_code == 409
        bad = admin.post("/keys", json={"name": "x", "max_concurrency": "lots"})
        assert bad.status_code == 400
        assert bad.json()["error"]["code"] == "invalid_policy"

        assert admin.delete("/keys/team-c").json() == {"key_id": "team-c", "revoked": True}
        assert admin.delete("/keys/team-c").status_code == 404
        active = admin.get("/keys", params={"active": "1"}).json()["keys"]
        assert "team-c" not in {k["key_id"] for k in active}
    # Revocation takes effect for the LLM routes at once (the cache is invalidated).
    with pytest.raises(openai.AuthenticationError):
        _chat(gateway, new_key)


def test_budget_show_and_reset_lets_a_refused_key_through(gateway: Running):
    key = gateway.keys["team-a"]
    # The budget ($0.00004) admits a few small requests, then refuses.
    refused = None
    for _ in range(30):
        try:
            _chat(gateway, key, max_tokens=4)
        except openai.RateLimitError as exc:
            refused = exc.code
            break
        with gateway.client() as admin:
            admin.post("/ratelimits/team-a/reset")  # keep the 3/minute limit out of the way
    assert refused == "insufficient_quota", "the budget never refused"
    with gateway.client() as admin:
        shown = admin.get("/budgets/team-a").json()
        total = shown["periods"]["total"]
        assert shown["subject"] == "key:team-a"
        assert total["limit_usd"] == pytest.approx(0.00004)
        assert total["spent_nanos"] > 0
        assert total["remaining_nanos"] < total["limit_nanos"]
        assert admin.post("/budgets/team-a/reset").json()["reset"] is True
        after = admin.get("/budgets/team-a").json()["periods"]["total"]
        assert after["spent_nanos"] == 0
        assert admin.get("/budgets/nobody").status_code == 404
    assert _chat(gateway, key, max_tokens=4)


def test_ratelimit_show_and_reset_lets_a_limited_key_through(gateway: Running):
    key = gateway.keys["team-a"]
    with gateway.client() as admin:
        fresh = admin.get("/ratelimits/team-a").json()
        assert [b["remaining"] for b in fresh["buckets"]] == [3]
        for _ in range(3):
            _chat(gateway, key)
            admin.post("/budgets/team-a/reset")  # keep the budget out of the way
        with pytest.raises(openai.RateLimitError) as refused:
            _chat(gateway, key)
        assert refused.value.code == "rate_limit_exceeded"
        shown = admin.get("/ratelimits/team-a").json()["buckets"][0]
        assert shown["remaining"] == 0
        assert shown["allowed"] is False
        assert shown["limit"] == "3/minute"
        assert shown["per"] == "key"
        reset = admin.post("/ratelimits/team-a/reset").json()
        assert reset["reset"] == 1
        assert admin.get("/ratelimits/team-a").json()["buckets"][0]["remaining"] == 3
    assert _chat(gateway, key)


def test_ratelimit_show_and_reset_name_per_model_buckets_as_requests_do(gateway: Running):
    limits = [{"limit": "2/minute", "per": "key_model"}]
    with gateway.client() as admin:
        key = admin.post("/keys", json={"name": "team-m", "rate_limits": limits}).json()["key"]
        models = {"model": ["gpt-4o-mini", "gpt-4o"]}
        assert _chat(gateway, key, model="gpt-4o-mini")
        shown = admin.get("/ratelimits/team-m", params=models).json()["buckets"]
        assert {b["model"]: b["remaining"] for b in shown} == {"gpt-4o-mini": 1, "gpt-4o": 2}
        assert _chat(gateway, key, model="gpt-4o-mini")
        with pytest.raises(openai.RateLimitError):
            _chat(gateway, key, model="gpt-4o-mini")
        assert _chat(gateway, key, model="gpt-4o")  # another model, another bucket
        shown = admin.get("/ratelimits/team-m", params=models).json()["buckets"]
        assert {b["model"]: b["remaining"] for b in shown} == {"gpt-4o-mini": 0, "gpt-4o": 1}
        reset = admin.post("/ratelimits/team-m/reset", json={"models": ["gpt-4o-mini"]}).json()
        assert reset["reset"] == 1
    assert _chat(gateway, key, model="gpt-4o-mini")


def test_cooldowns_list_and_reset(gateway: Running):
    until = time.time() + 60
    gateway.forwarder.cooldowns.items = [
        Cooldown("oa", "gpt-4o", until, "rate_limited", 2),
        Cooldown("oa", "gpt-4o-mini", until, "server_error", 1),
        Cooldown("az", None, until, "auth", 5),
    ]
    gateway.forwarder.breaker.states = {"oa": "open", "az": "closed"}
    with gateway.client() as admin:
        listed = admin.get("/cooldowns").json()
        assert [(c["credential_id"], c["model"]) for c in listed["cooldowns"]] == [
            ("oa", "gpt-4o"),
            ("oa", "gpt-4o-mini"),
            ("az", None),
        ]
        assert 0 < listed["cooldowns"][0]["remaining"] <= 60
        assert listed["breakers"] == {"oa": "open", "az": "closed"}
        one = admin.post("/cooldowns/reset", json={"credential_id": "oa", "model": "gpt-4o"})
        assert one.json() == {"cooldowns_reset": 1, "breakers_reset": 0}
        rest = admin.post("/cooldowns/reset", json={}).json()
        assert rest == {"cooldowns_reset": 2, "breakers_reset": 2}
        after = admin.get("/cooldowns").json()
        assert after["cooldowns"] == []
        assert after["breakers"] == {"oa": "closed", "az": "closed"}
        assert admin.post("/cooldowns/reset", json={"model": 5}).status_code == 400


def test_usage_query_matches_the_ledger(gateway: Running):
    a, b = gateway.keys["team-a"], gateway.keys["team-b"]
    _chat(gateway, a, "gpt-4o-mini")
    for model in ("gpt-4o-mini", "gpt-4o", "gpt-4o"):
        _chat(gateway, b, model)
    gateway.wait_for_ledger(4)
    with gateway.client() as admin:
        data = admin.get("/usage", params={"since": "1h", "by": "key", "bucket": "hour"}).json()
        by_key = {r["key"]: r for r in data["rows"]}
        for key_id in ("team-a", "team-b"):
            want = gateway.ledger_rows(
                "SELECT count(DISTINCT request_id), sum(input_tokens + output_tokens),"
                " sum(cost_nanos) FROM usage_events WHERE key_id = ?",
                key_id,
            )[0]
            got = by_key[key_id]
            assert (got["requests"], got["total_tokens"], got["cost_nanos"]) == want
            assert got["bucket"] == int(time.time() // 3600 * 3600) or got["bucket"] == int(
                (time.time() - 5) // 3600 * 3600
            )
        latencies = sorted(r[0] for r in gateway.ledger_rows("SELECT latency FROM usage_events"))
        p50, p95, p99 = (data["total"]["latency"][p] for p in ("p50", "p95", "p99"))
        cuts = statistics.quantiles(latencies, n=100, method="inclusive")
        assert p50 == pytest.approx(cuts[49])
        assert p95 == pytest.approx(cuts[94])
        assert p99 == pytest.approx(cuts[98])
        assert data["total"]["requests"] == 4
        assert data["total"]["rejections"] == 0

        one = admin.get("/usage", params={"key": "team-b", "model": "gpt-4o"}).json()
        assert one["total"]["requests"] == 2
        top = admin.get("/usage/top-keys", params={"since": "1h"}).json()["keys"]
        costs = [k["cost_nanos"] for k in top]
        assert costs == sorted(costs, reverse=True)
        assert {k["key"] for k in top} == {
            "team-a",
            "team-b",
        }
        assert admin.get("/usage", params={"bucket": "week"}).status_code == 400
        assert admin.get("/usage", params={"since": "soon"}).status_code == 400
        assert (
            admin.get("/usage", params={"start": "2030-01-01", "end": "2029-01-01"}).status_code
            == 400
        )


def test_reload_calls_the_given_function(gateway: Running):
    with gateway.client() as admin:
        reply = admin.post("/reload")
    assert reply.status_code == 200
    assert reply.json() == {"reloaded": True, "result": {"status": "reloaded"}}
    assert len(gateway.reloads) == 1


def test_dashboard_page_is_static_and_locked_down(gateway: Running):
    with gateway.client(None) as anonymous:
        page = anonymous.get("/dashboard")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'sha256-" in csp
    assert "connect-src 'self'" in csp
    # Nothing loaded from elsewhere (the SVG namespace is a name, not a request).
    text = page.text.replace("http://www.w3.org/2000/svg", "")
    assert "http://" not in text
    assert "https://" not in text
    assert "src=" not in text


def test_no_admin_key_or_issued_key_in_logs(gateway: Running, caplog):
    caplog.set_level(logging.DEBUG)
    with gateway.client() as admin:
        issued = admin.post("/keys", json={"name": "logged"}).json()["key"]
        admin.delete("/keys/logged")
    with gateway.client("Bearer-wrong-but-secret-value-123456") as wrong:
        assert wrong.get("/keys").status_code == 401
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "admin API: created key logged" in text  # the log was captured at all
    assert "refused GET /keys" in text
    for secret in (ADMIN_KEY, issued, "Bearer-wrong-but-secret-value-123456"):
        assert secret not in text
