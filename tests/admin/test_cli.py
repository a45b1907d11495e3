"""The admin CLI against a running gateway's admin API (and its config-file switch)."""

from __future__ import annotations

import json

import openai
import pytest

from asgi_llmguard.cli import main
from asgi_llmguard.config import GatewayConfig, stack_kwargs
from asgi_llmguard.errors import ConfigurationError
from tests.admin.conftest import ADMIN_KEY, Cooldown, Running


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_operations(gateway: Running, capsys, monkeypatch):
    monkeypatch.setenv("LLMGUARD_ADMIN_KEY", ADMIN_KEY)
    url = ("--url", gateway.admin)
    client = openai.OpenAI(
        base_url=f"{gateway.url}/v1", api_key=gateway.keys["team-a"], max_retries=0
    )
    client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    gateway.wait_for_ledger(1)

    code, out, _ = _run(capsys, "budgets", "show", "team-a", *url, "--json")
    assert code == 0
    assert json.loads(out)["periods"]["total"]["spent_nanos"] > 0
    code, out, _ = _run(capsys, "budgets", "reset", "team-a", *url)
    assert code == 0
    assert "reset" in out
    code, out, _ = _run(capsys, "budgets", "show", "team-a", *url)
    assert code == 0
    assert "total" in out
    assert "$0.000000" in out

    code, out, _ = _run(capsys, "ratelimit", "show", "team-a", *url)
    assert code == 0
    assert "3/minute" in out
    assert "2" in out.splitlines()[1]
    code, out, _ = _run(capsys, "ratelimit", "reset", "team-a", *url)
    assert code == 0
    assert "reset 1" in out
    code, out, _ = _run(capsys, "ratelimit", "show", "team-a", *url, "--json")
    assert json.loads(out)["buckets"][0]["remaining"] == 3

    gateway.forwarder.cooldowns.items = [Cooldown("oa", "gpt-4o", 9e9, "server_error", 3)]
    code, out, _ = _run(capsys, "cooldowns", "list", *url)
    assert code == 0
    assert "oa" in out
    assert "server_error" in out
    code, out, _ = _run(capsys, "cooldowns", "reset", "--credential", "oa", *url)
    assert code == 0
    assert "reset 1 cooldowns" in out

    code, out, _ = _run(capsys, "usage", "query", "--by", "key", "--since", "1h", *url, "--json")
    rows = json.loads(out)["rows"]
    want = gateway.ledger_rows("SELECT sum(cost_nanos) FROM usage_events WHERE key_id='team-a'")
    assert [(r["key"], r["cost_nanos"]) for r in rows] == [("team-a", want[0][0])]
    code, out, _ = _run(capsys, "usage", "query", "--top", "5", *url)
    assert code == 0
    assert "team-a" in out
    code, out, _ = _run(capsys, "usage", "query", "--bucket", "hour", *url)
    assert code == 0
    assert "TOTAL" in out

    monkeypatch.setenv("LLMGUARD_ADMIN_KEY", "wrong-key-0123456789abcdefghij")
    code, _, err = _run(capsys, "budgets", "show", "team-a", *url)
    assert code == 1
    assert "HTTP 401" in err
    assert "wrong-key" not in err
    monkeypatch.delenv("LLMGUARD_ADMIN_KEY")
    code, _, err = _run(capsys, "cooldowns", "list", *url)
    assert code == 2
    assert "LLMGUARD_ADMIN_KEY" in err


def _config(admin: dict) -> GatewayConfig:
    import msgspec

    return msgspec.convert({"admin": admin}, GatewayConfig)


def test_config_admin_section(monkeypatch):
    assert stack_kwargs(GatewayConfig(), [])["admin"] is None  # off unless configured
    monkeypatch.delenv("LLMGUARD_ADMIN_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="LLMGUARD_ADMIN_KEY"):
        stack_kwargs(_config({"enabled": True}), [])
    for bad in ("changeme-changeme-changeme-123", "short-key"):
        monkeypatch.setenv("LLMGUARD_ADMIN_KEY", bad)
        with pytest.raises(ConfigurationError, match="placeholder"):
            stack_kwargs(_config({"enabled": True}), [])
    monkeypatch.setenv("OPS_KEY", ADMIN_KEY)
    admin = stack_kwargs(_config({"enabled": True, "key_env": "OPS_KEY", "path": "/ops"}), [])[
        "admin"
    ]
    assert admin == {"key": ADMIN_KEY, "path": "/ops", "ledger": "sqlite:///llmguard.sqlite3"}
