"""Translation configured in the config file (what ``asgi-llmguard serve`` runs): an alias
member listed only by an upstream of another format, and fields allowed to be dropped."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import openai

from asgi_llmguard.reload import ReloadableGateway
from asgi_llmguard.testing import FakeProvider, serve

UPSTREAM_KEY = "sk-upstream-config"


def test_the_config_file_serves_an_alias_member_from_an_anthropic_upstream(tmp_path: Path):
    fake = FakeProvider(api_key=UPSTREAM_KEY)
    ledger = tmp_path / "ledger.sqlite3"
    with serve(fake) as upstream:
        config = tmp_path / "llmguard.toml"
        config.write_text(
            f"""
[[upstreams]]
provider = "openai"
base_url = "{upstream.url}/v1"
api_key = "{UPSTREAM_KEY}"
name = "oa"
models = ["gpt-*"]

[[upstreams]]
provider = "anthropic"
base_url = "{upstream.url}"
api_key = "{UPSTREAM_KEY}"
name = "an"
models = ["claude-*"]

[routing]
translate_drop = ["logprobs", "seed"]

[routing.aliases]
smart = ["claude-sonnet-4-5"]

[usage]
sinks = ["sqlite:///{ledger}"]
spill_path = "{tmp_path / "spill"}"
flush_interval = 0.05
"""
        )
        app = ReloadableGateway(str(config))
        with serve(app) as server:
            client = openai.OpenAI(api_key="sk-any", base_url=f"{server.url}/v1", max_retries=0)
            answer = client.chat.completions.create(
                model="smart",
                messages=[{"role": "user", "content": "hello"}],
                logprobs=True,
                seed=7,
            )
            assert answer.choices[0].message.content
            assert answer.model == "smart"
            (request,) = fake.requests
            assert request.path == "/v1/messages"
            sent = request.json()
            assert sent["model"] == "claude-sonnet-4-5"
            assert "logprobs" not in sent
            assert "seed" not in sent
            deadline = time.monotonic() + 5
            rows: list[sqlite3.Row] = []
            while not rows and time.monotonic() < deadline:
                time.sleep(0.05)
                if ledger.exists():
                    with sqlite3.connect(ledger) as db:
                        db.row_factory = sqlite3.Row
                        if db.execute(
                            "SELECT 1 FROM sqlite_master WHERE name='usage_events'"
                        ).fetchone():
                            rows = list(db.execute("SELECT * FROM usage_events"))
            (row,) = rows
            assert row["served_api"] == "anthropic"
            assert row["served_model"] == "claude-sonnet-4-5"
            assert row["model"] == "smart"
            dropped = json.loads(row["metadata"])["llmguard.translation_dropped"]
            assert sorted(dropped.split(",")) == ["logprobs", "seed"]
