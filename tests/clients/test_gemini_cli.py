"""The real Gemini CLI (``gemini -p``, non-interactive) with ``GOOGLE_GEMINI_BASE_URL`` pointing at
the gateway and a gateway key as ``GEMINI_API_KEY``, the fake as the Gemini upstream."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from asgi_llmguard import (
    KeyPolicy,
    SQLiteSink,
    StaticKey,
    StaticKeyStore,
    Upstream,
    UsagePipeline,
    build_stack,
    hash_key,
)
from asgi_llmguard.testing import FakeProvider, serve
from tests.clients.conftest import (
    CALLER_KEY,
    NODE_DIR,
    UPSTREAM_KEY,
    Gateway,
    require_node_package,
)

REPLY = "Hello from the fake provider."
GEMINI = NODE_DIR / "node_modules" / ".bin" / "gemini"
MODEL = "gemini-2.5-flash"


@pytest.fixture
def gemini_gateway(tmp_path):
    fake = FakeProvider(api_key=UPSTREAM_KEY)
    policy = KeyPolicy(key_id="clients", models=("gemini-*",))
    keys = StaticKeyStore([StaticKey(policy, key_hash=hash_key(CALLER_KEY))])
    ledger = tmp_path / "ledger.sqlite3"
    pipeline = UsagePipeline(
        [SQLiteSink(str(ledger))], spill_path=str(tmp_path / "spill"), flush_interval=0.05
    )
    with serve(fake) as upstream:
        app = build_stack(
            upstreams=[Upstream("gemini", upstream.url, api_key=UPSTREAM_KEY, name="gm")],
            keys=keys,
            pipeline=pipeline,
        )
        with serve(app) as server:
            yield Gateway(server, fake, ledger)


def test_gemini_cli_answers_through_the_gateway_and_is_recorded(gemini_gateway, tmp_path):
    require_node_package("@google/gemini-cli")
    gateway = gemini_gateway
    settings = tmp_path / "home" / ".gemini" / "settings.json"
    settings.parent.mkdir(parents=True)
    # An API key, not a Google login; no usage statistics sent anywhere.
    settings.write_text(
        json.dumps(
            {
                "security": {"auth": {"selectedType": "gemini-api-key"}},
                "privacy": {"usageStatisticsEnabled": False},
                "telemetry": {"enabled": False},
            }
        )
    )
    workdir = tmp_path / "work"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GEMINI_", "GOOGLE_"))}
    env.update(
        HOME=str(tmp_path / "home"),
        GEMINI_API_KEY=CALLER_KEY,
        GOOGLE_GEMINI_BASE_URL=gateway.url,
        GEMINI_CLI_TRUST_WORKSPACE="true",  # headless: no folder-trust prompt
        GEMINI_CLI_NO_RELAUNCH="true",
    )
    done = subprocess.run(
        [str(GEMINI), "-p", "say hello", "-m", MODEL],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == REPLY

    sent = gateway.fake.requests
    assert [(r.path, r.query_string) for r in sent] == [
        (f"/v1beta/models/{MODEL}:streamGenerateContent", "alt=sse")
    ]
    assert sent[0].header("x-goog-api-key") == UPSTREAM_KEY  # the caller's key stayed behind
    (row,) = gateway.rows(1)
    assert (row["provider"], row["endpoint"], row["model"], row["served_model"]) == (
        "gemini",
        "streamGenerateContent",
        MODEL,
        MODEL,
    )
    assert (row["key_id"], row["credential_id"], row["outcome"], row["stream"]) == (
        "clients",
        "gm",
        "ok",
        1,
    )
    prompt = sent[0].json()
    assert row["input_tokens"] == FakeProvider.count_tokens(
        " ".join(
            part["text"]
            for content in [*prompt["contents"], prompt.get("systemInstruction") or {}]
            for part in content.get("parts", ())
            if "text" in part
        )
    )
    assert row["output_tokens"] == FakeProvider.count_tokens(REPLY)
    assert not row["estimated"]
    assert row["cost_nanos"] > 0
