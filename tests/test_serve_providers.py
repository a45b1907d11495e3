"""Gemini, Vertex AI and Amazon Bedrock through ``asgi-llmguard serve`` with a config file.

One served process (the console script, as a user runs it) fronts three fakes on real sockets:
`FakeProvider` as the Gemini API (its key from the environment), `FakeVertex` with its token
endpoint and a service-account file (``credentials_file``, ``project``, ``location``), and
`FakeBedrock` checking SigV4 signatures made with access keys from the environment. Keys are made
with ``asgi-llmguard keys create`` (model allow-lists, a rate limit, a budget, capture); the
ledger is SQLite, metrics and the admin API are on.

The callers are the providers' own SDKs: google-genai (the virtual key as its API key), the
anthropic SDK's ``AnthropicVertex`` (the virtual key as its access token) and boto3's
``bedrock-runtime`` (the virtual key in ``AWS_BEARER_TOKEN_BEDROCK``). boto3 sends a bearer token
over HTTPS only, so it calls a second served process with ``[server] ssl_certfile``; the main
process speaks plain HTTP, where Bedrock is driven with httpx (``Authorization: Bearer``), its
event stream read by botocore's own parser. Token numbers are the fakes' (a token is a word).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anthropic
import httpx
import orjson
import pytest
from botocore.eventstream import EventStreamBuffer
from google import genai
from google.genai import errors, types

from asgi_llmguard.testing import FakeBedrock, FakeProvider, FakeVertex, serve
from tests.test_cli import SCRIPT, _free_port, _wait_for_port

GEMINI_UPSTREAM_KEY = "gemini-upstream-secret-0123456789"
AKID, AWS_SECRET = "AKIDEXAMPLESERVE0001", "serve-test-secret-access-key-abcdef"
ADMIN_KEY = "admin-serve-test-key-0123456789abcdefghijkl"
PROJECT, LOCATION = "fake-project", "us-east5"
GEMINI = "gemini-2.5-flash"
CLAUDE = "claude-sonnet-4-5@20250929"
BEDROCK = "anthropic.claude-sonnet-4-5-20250929-v1:0"
ALLOWED = f"{GEMINI},claude-sonnet-4-5@*,anthropic.claude-sonnet-4-5-*"
REPLY = "Hello from the fake provider."
WORDS = FakeProvider.count_tokens(REPLY)
NO_RETRY = types.HttpRetryOptions(attempts=1)


@dataclass
class Served:
    url: str
    port: int
    proc: subprocess.Popen[bytes]
    tmp: Path
    config: Path
    ledger: Path
    capture: Path
    out: Path
    err: Path
    keys: dict[str, str]
    gemini: FakeProvider
    gemini_url: str
    vertex: FakeVertex
    bedrock: FakeBedrock
    secrets: list[str] = field(default_factory=list)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(timeout=30)

    def logs(self) -> str:
        return self.out.read_text(errors="replace") + self.err.read_text(errors="replace")


def _config(s: dict[str, object]) -> str:
    return f"""
[server]
port = {s["port"]}
shutdown_grace = 2

[auth]
store = "sqlite:///{s["tmp"]}/keys.db"

[usage]
sinks = ["sqlite:///{s["ledger"]}"]
spill_path = "{s["tmp"]}/usage.spill"
flush_interval = 0.05

[budgets]
store = "memory://"

[capture]
sink = "jsonl:///{s["capture"]}"

[metrics]
refresh_interval = 0.2

[admin]
enabled = true
key_env = "SERVE_TEST_ADMIN_KEY"

[[upstreams]]
provider = "gemini"
base_url = "{s["gemini_url"]}"
api_key_env = "SERVE_TEST_GEMINI_KEY"
name = "{s["gemini_name"]}"

[[upstreams]]
provider = "vertex"
base_url = "{s["vertex_url"]}"
credentials_file = "{s["sa"]}"
project = "{PROJECT}"
location = "{LOCATION}"
name = "vx"

[[upstreams]]
provider = "bedrock"
base_url = "{s["bedrock_url"]}"
region = "us-east-1"
name = "br"
"""


def _env(tmp: Path) -> dict[str, str]:
    drop = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("AWS_")}
    env.update(
        SERVE_TEST_GEMINI_KEY=GEMINI_UPSTREAM_KEY,
        SERVE_TEST_ADMIN_KEY=ADMIN_KEY,
        AWS_ACCESS_KEY_ID=AKID,
        AWS_SECRET_ACCESS_KEY=AWS_SECRET,
        AWS_CONFIG_FILE=str(tmp / "no-aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp / "no-aws-credentials"),
    )
    return env


def _create_key(tmp: Path, *args: str) -> str:
    created = subprocess.run(
        [SCRIPT, "keys", "create", "--db", f"sqlite:///{tmp}/keys.db", "--json", *args],
        cwd=tmp,
        env=_env(tmp),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    key: str = json.loads(created.stdout)["key"]
    return key


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("serve-providers")
    gemini = FakeProvider(api_key=GEMINI_UPSTREAM_KEY)
    vertex = FakeVertex(project=PROJECT)
    bedrock = FakeBedrock(access_keys={AKID: AWS_SECRET})
    keys = {
        "main": _create_key(tmp, "--name", "main", "--model", ALLOWED, "--capture"),
        "limited": _create_key(tmp, "--name", "limited", "--model", ALLOWED, "--rpm", "1"),
        "budget": _create_key(
            tmp, "--name", "budget", "--model", ALLOWED, "--budget-total", "0.0004"
        ),
    }
    with serve(gemini) as g, serve(vertex) as v, serve(bedrock) as b:
        sa = vertex.write_service_account_file(tmp / "sa.json", v.url)
        port = _free_port()
        settings: dict[str, object] = {
            "port": port,
            "tmp": tmp,
            "ledger": tmp / "ledger.sqlite3",
            "capture": tmp / "capture.jsonl",
            "gemini_url": g.url,
            "gemini_name": "gm",
            "vertex_url": v.url,
            "bedrock_url": b.url,
            "sa": sa,
        }
        config = tmp / "llmguard.toml"
        config.write_text(_config(settings))
        out, err = tmp / "stdout.log", tmp / "stderr.log"
        with out.open("wb") as stdout, err.open("wb") as stderr:
            proc = subprocess.Popen(
                [SCRIPT, "serve", "--config", str(config)],
                cwd=tmp,
                env=_env(tmp),
                stdout=stdout,
                stderr=stderr,
            )
        private_key = json.loads(sa.read_text())["private_key"]
        s = Served(
            url=f"http://127.0.0.1:{port}",
            port=port,
            proc=proc,
            tmp=tmp,
            config=config,
            ledger=settings["ledger"],  # type: ignore[arg-type]
            capture=settings["capture"],  # type: ignore[arg-type]
            out=out,
            err=err,
            keys=keys,
            gemini=gemini,
            gemini_url=g.url,
            vertex=vertex,
            bedrock=bedrock,
            secrets=[
                *keys.values(),
                GEMINI_UPSTREAM_KEY,
                AWS_SECRET,
                ADMIN_KEY,
                # a line from the middle of the service account's private key
                private_key.splitlines()[5],
            ],
        )
        try:
            _wait_for_port(port, proc)  # type: ignore[arg-type]
            yield s
        finally:
            s.stop()


# -- helpers ----------------------------------------------------------------------------------


def gemini_client(s: Served, key: str) -> genai.Client:
    return genai.Client(
        api_key=key, http_options=types.HttpOptions(base_url=s.url, retry_options=NO_RETRY)
    )


def vertex_client(s: Served, key: str) -> anthropic.AnthropicVertex:
    # The caller's own project and region: the upstream's `project` / `location` replace them.
    return anthropic.AnthropicVertex(
        region="europe-west1",
        project_id="callers-project",
        base_url=f"{s.url}/v1",
        access_token=key,
        max_retries=0,
    )


def bedrock_post(
    s: Served, key: str, model: str, *, stream: bool = False, text: str = "one two three"
) -> httpx.Response:
    body = {
        "messages": [{"role": "user", "content": [{"text": text}]}],
        "inferenceConfig": {"maxTokens": 8},
    }
    op = "converse-stream" if stream else "converse"
    return httpx.post(
        f"{s.url}/model/{model}/{op}",
        content=orjson.dumps(body),
        headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
        timeout=10,
    )


def frames(raw: bytes) -> list[tuple[dict, dict]]:
    buffer = EventStreamBuffer()
    buffer.add_data(raw)
    return [(dict(m.headers), orjson.loads(m.payload) if m.payload else {}) for m in buffer]


def ledger_rows(s: Served, where: str, count: int) -> list[dict]:
    """The ledger's rows matching ``where``, once there are ``count`` of them."""
    deadline = time.monotonic() + 5
    while True:
        found: list[dict] = []
        if s.ledger.exists():
            with sqlite3.connect(s.ledger) as db:
                db.row_factory = sqlite3.Row
                if db.execute("SELECT 1 FROM sqlite_master WHERE name='usage_events'").fetchone():
                    query = f"SELECT * FROM usage_events WHERE {where} ORDER BY rowid"
                    found = [dict(r) for r in db.execute(query)]
        if len(found) >= count or time.monotonic() > deadline:
            assert len(found) == count, found
            return found
        time.sleep(0.05)


def admin(s: Served, method: str, path: str) -> httpx.Response:
    return httpx.request(
        method,
        f"{s.url}/admin{path}",
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
        timeout=10,
    )


# -- each provider: answer, ledger row, price, allow-list -------------------------------------


def test_gemini_generate_content_and_stream(served):
    client = gemini_client(served, served.keys["main"])
    answer = client.models.generate_content(model=GEMINI, contents="one two three")
    assert answer.text == REPLY
    streamed = "".join(
        chunk.text or ""
        for chunk in client.models.generate_content_stream(model=GEMINI, contents="four five")
    )
    assert streamed == REPLY
    assert served.gemini.requests[-1].header("x-goog-api-key") == GEMINI_UPSTREAM_KEY
    plain, stream = ledger_rows(served, f"key_id = 'main' AND model = '{GEMINI}'", 2)
    assert (plain["provider"], plain["endpoint"], plain["stream"]) == (
        "gemini",
        "generateContent",
        0,
    )
    assert (plain["input_tokens"], plain["output_tokens"]) == (3, WORDS)
    assert (stream["input_tokens"], stream["output_tokens"], stream["stream"]) == (2, WORDS, 1)
    assert plain["credential_id"] == "gm"
    # gemini-2.5-flash: $0.30 / $2.50 per million tokens
    assert plain["cost_nanos"] == 3 * 300 + WORDS * 2500 > 0
    with pytest.raises(errors.ClientError) as refused:
        client.models.generate_content(model="gemini-2.5-pro", contents="x")
    assert refused.value.code == 403
    error = refused.value.details["error"]
    assert (error["code"], error["status"]) == (403, "PERMISSION_DENIED")
    assert "gemini-2.5-pro" in error["message"]


def test_vertex_claude_messages_plain_and_streamed(served):
    client = vertex_client(served, served.keys["main"])
    message = client.messages.create(
        model=CLAUDE, max_tokens=50, messages=[{"role": "user", "content": "one two three"}]
    )
    assert message.content[0].text == REPLY
    with client.messages.stream(
        model=CLAUDE, max_tokens=50, messages=[{"role": "user", "content": "four five"}]
    ) as stream:
        assert "".join(stream.text_stream) == REPLY
    plain_call, stream_call = served.vertex.calls("anthropic")[-2:]
    prefix = f"/v1/projects/{PROJECT}/locations/{LOCATION}/publishers/anthropic/models/{CLAUDE}"
    assert plain_call.path == prefix + ":rawPredict"
    assert stream_call.path == prefix + ":streamRawPredict"
    assert plain_call.header("authorization").startswith("Bearer ya29.")
    plain, streamed = ledger_rows(served, f"key_id = 'main' AND model = '{CLAUDE}'", 2)
    assert (plain["provider"], plain["endpoint"], plain["credential_id"]) == (
        "vertex_anthropic",
        "rawPredict",
        "vx",
    )
    assert (plain["input_tokens"], plain["output_tokens"]) == (3, WORDS)
    assert (streamed["endpoint"], streamed["input_tokens"], streamed["output_tokens"]) == (
        "streamRawPredict",
        2,
        WORDS,
    )
    # claude-sonnet-4-5: $3 / $15 per million tokens
    assert plain["cost_nanos"] == 3 * 3000 + WORDS * 15000 > 0
    with pytest.raises(anthropic.PermissionDeniedError) as refused:
        client.messages.create(
            model="claude-opus-4-1@20250805",
            max_tokens=5,
            messages=[{"role": "user", "content": "x"}],
        )
    assert refused.value.status_code == 403
    body = refused.value.body
    assert body["type"] == "error"
    assert body["error"]["type"] == "permission_error"


def test_vertex_gemini_with_google_genai(served):
    """google-genai in Vertex AI mode, the virtual key as its access token; the upstream's
    ``project`` and ``location`` replace the caller's."""
    from google.oauth2.credentials import Credentials

    client = genai.Client(
        vertexai=True,
        project="callers-project",
        location="europe-west1",
        credentials=Credentials(token=served.keys["main"]),
        http_options=types.HttpOptions(base_url=served.url, retry_options=NO_RETRY),
    )
    answer = client.models.generate_content(model=GEMINI, contents="one two three four")
    assert answer.text == REPLY
    call = served.vertex.calls("google")[-1]
    assert call.path == (
        f"/v1beta1/projects/{PROJECT}/locations/{LOCATION}/publishers/google/models/"
        f"{GEMINI}:generateContent"
    )
    (row,) = ledger_rows(served, f"provider = 'vertex' AND model = '{GEMINI}'", 1)
    assert (row["input_tokens"], row["output_tokens"], row["credential_id"]) == (4, WORDS, "vx")
    assert row["cost_nanos"] == 4 * 300 + WORDS * 2500
    with pytest.raises(errors.ClientError) as refused:
        client.models.generate_content(model="gemini-2.5-pro", contents="x")
    assert refused.value.code == 403
    assert refused.value.details["error"]["status"] == "PERMISSION_DENIED"


def test_bedrock_converse_and_converse_stream(served):
    key = served.keys["main"]
    resp = bedrock_post(served, key, BEDROCK)
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    assert answer["output"]["message"]["content"][0]["text"] == REPLY
    assert answer["usage"]["inputTokens"] == 3
    streamed = bedrock_post(served, key, BEDROCK, stream=True, text="four five")
    assert streamed.status_code == 200, streamed.text
    assert streamed.headers["content-type"] == "application/vnd.amazon.eventstream"
    parsed = frames(streamed.content)
    text = "".join(
        p["delta"].get("text", "") for h, p in parsed if h[":event-type"] == "contentBlockDelta"
    )
    assert text == REPLY
    assert parsed[-1][0][":event-type"] == "metadata"
    assert set(served.bedrock.signers) == {AKID}
    plain, stream = ledger_rows(served, f"key_id = 'main' AND model = '{BEDROCK}'", 2)
    assert (plain["provider"], plain["endpoint"], plain["credential_id"]) == (
        "bedrock",
        "converse",
        "br",
    )
    out_tokens = answer["usage"]["outputTokens"]
    assert (plain["input_tokens"], plain["output_tokens"]) == (3, out_tokens)
    assert (stream["endpoint"], stream["input_tokens"]) == ("converse-stream", 2)
    assert stream["output_tokens"] == parsed[-1][1]["usage"]["outputTokens"]
    assert plain["cost_nanos"] == 3 * 3000 + out_tokens * 15000 > 0
    refused = bedrock_post(served, key, "anthropic.claude-opus-4-1-20250805-v1:0")
    assert refused.status_code == 403
    assert refused.headers["x-amzn-errortype"].startswith("AccessDeniedException")
    assert "claude-opus-4-1" in refused.json()["message"]


def test_boto3_with_a_bearer_token_over_tls(served, tmp_path, monkeypatch):
    """The real boto3 ``bedrock-runtime`` client, the virtual key in ``AWS_BEARER_TOKEN_BEDROCK``.
    boto3 sends a bearer token over HTTPS only: a second served process, with ``[server]
    ssl_certfile`` / ``ssl_keyfile``, the same key database and the same fake Bedrock."""
    import boto3
    from botocore.config import Config

    from tests.test_redis_tls import make_certs

    certs = make_certs(tmp_path)
    port = _free_port()
    ledger = tmp_path / "ledger.sqlite3"
    config = tmp_path / "tls.toml"
    bedrock_url = _config_value(served.config, "bedrock")
    config.write_text(
        f"""
[server]
port = {port}
shutdown_grace = 1
ssl_certfile = "{certs["server_cert"]}"
ssl_keyfile = "{certs["server_key"]}"

[auth]
store = "sqlite:///{served.tmp}/keys.db"

[usage]
sinks = ["sqlite:///{ledger}"]
spill_path = "{tmp_path}/usage.spill"
flush_interval = 0.05

[[upstreams]]
provider = "bedrock"
base_url = "{bedrock_url}"
region = "us-east-1"
name = "br-tls"
"""
    )
    err = tmp_path / "stderr.log"
    with err.open("wb") as stderr:
        proc = subprocess.Popen(
            [SCRIPT, "serve", "--config", str(config)],
            cwd=tmp_path,
            env=_env(tmp_path),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        _wait_for_port(port, proc)  # type: ignore[arg-type]
        monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", served.keys["main"])
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
        client = boto3.client(
            "bedrock-runtime",
            region_name="us-east-1",
            endpoint_url=f"https://127.0.0.1:{port}",
            verify=str(certs["ca_cert"]),
            config=Config(retries={"max_attempts": 1}),
        )
        messages = [{"role": "user", "content": [{"text": "one two three"}]}]
        out = client.converse(modelId=BEDROCK, messages=messages)
        assert out["output"]["message"]["content"][0]["text"] == REPLY
        assert out["usage"]["inputTokens"] == 3
        events = list(client.converse_stream(modelId=BEDROCK, messages=messages)["stream"])
        text = "".join(
            e["contentBlockDelta"]["delta"].get("text", "")
            for e in events
            if "contentBlockDelta" in e
        )
        assert text == REPLY
        assert events[-1]["metadata"]["usage"]["inputTokens"] == 3
        with pytest.raises(client.exceptions.AccessDeniedException):
            client.converse(modelId="anthropic.claude-opus-4-1-20250805-v1:0", messages=messages)
        client.close()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    logs = err.read_text(errors="replace")
    assert f"listening on https://127.0.0.1:{port}" in logs
    for secret in served.secrets:
        assert secret not in logs
    s2 = Served(**{**served.__dict__, "ledger": ledger})
    plain, stream = ledger_rows(s2, "status = 200", 2)
    assert (plain["endpoint"], plain["credential_id"], plain["key_id"]) == (
        "converse",
        "br-tls",
        "main",
    )
    assert (stream["endpoint"], stream["input_tokens"]) == ("converse-stream", 3)
    assert plain["cost_nanos"] > 0


def _config_value(config: Path, provider: str) -> str:
    """The base URL of the config file's upstream of ``provider``."""
    section = config.read_text().split(f'provider = "{provider}"', 1)[1]
    return section.split('base_url = "', 1)[1].split('"', 1)[0]


# -- limits, budgets ---------------------------------------------------------------------------


def test_the_admin_usage_api_groups_the_ledger_by_provider_and_credential(served):
    one_call_each(served, "group these seven words in the ledger")
    ledger_rows(served, "input_tokens = 7 AND key_id = 'main' AND status = 200", 4)
    usage = admin(served, "GET", "/usage?since=1h&key=main&by=provider,credential")
    assert usage.status_code == 200, usage.text
    rows = {(r["provider"], r["credential"]): r for r in usage.json()["rows"]}
    assert set(rows) >= {
        ("gemini", "gm"),
        ("vertex", "vx"),
        ("vertex_anthropic", "vx"),
        ("bedrock", "br"),
    }
    for row in rows.values():
        assert row["requests"] >= 1
        assert row["input_tokens"] > 0
        assert row["cost_nanos"] > 0


def test_the_rate_limit_answers_429_in_each_providers_shape(served):
    key = served.keys["limited"]
    gemini = gemini_client(served, key)
    assert gemini.models.generate_content(model=GEMINI, contents="x").text == REPLY
    with pytest.raises(errors.ClientError) as limited:
        gemini.models.generate_content(model=GEMINI, contents="x")
    assert limited.value.code == 429
    assert limited.value.details["error"]["status"] == "RESOURCE_EXHAUSTED"
    with pytest.raises(anthropic.RateLimitError) as claude_limited:
        vertex_client(served, key).messages.create(
            model=CLAUDE, max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert claude_limited.value.body["error"]["type"] == "rate_limit_error"
    bedrock = bedrock_post(served, key, BEDROCK)
    assert bedrock.status_code == 429
    assert bedrock.headers["x-amzn-errortype"].startswith("ThrottlingException")
    assert bedrock.json()["message"]
    assert served.bedrock.requests == [] or all(
        key not in repr(r.headers) for r in served.bedrock.requests
    )


def test_the_budget_refuses_once_spent(served):
    """A budget of $0.0004. A Claude call capped at 8 output tokens is reserved at its worst
    case (about $0.0003: its body's size in prompt tokens at the dearest prompt price, 8 output
    tokens) and spends about $0.0001: the same call is admitted until the spend leaves too little
    for that reservation, then refused in each provider's shape."""
    key = served.keys["budget"]
    claude = vertex_client(served, key)
    admitted = 0
    refused: anthropic.RateLimitError | None = None
    for _ in range(5):
        try:
            claude.messages.create(
                model=CLAUDE, max_tokens=8, messages=[{"role": "user", "content": "one two"}]
            )
        except anthropic.RateLimitError as exc:
            refused = exc
            break
        admitted += 1
    assert refused is not None
    assert admitted >= 1
    assert refused.body["type"] == "error"
    assert "budget" in refused.body["error"]["message"]
    # Bedrock's reservation is smaller (a smaller body): admitted while it fits, then refused.
    for _ in range(5):
        bedrock = bedrock_post(served, key, BEDROCK, text="one two")
        if bedrock.status_code != 200:
            break
        admitted += 1
    assert bedrock.status_code == 429, bedrock.text
    assert bedrock.headers["x-amzn-errortype"].split(":")[0] in (
        "ThrottlingException",
        "ServiceQuotaExceededException",
    )
    assert "budget" in bedrock.json()["message"]
    gemini = gemini_client(served, key)  # referenced: the SDK closes a client once collected
    with pytest.raises(errors.ClientError) as gemini_refused:
        gemini.models.generate_content(model=GEMINI, contents="one two")
    assert gemini_refused.value.code == 429
    assert gemini_refused.value.details["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert "budget" in gemini_refused.value.details["error"]["message"]
    # Only the admitted calls reached an upstream and were charged; the refusals are recorded
    # at no cost, and the admin API's spend is the ledger's.
    rows = ledger_rows(served, "key_id = 'budget' AND status = 200", admitted)
    assert all(row["cost_nanos"] > 0 for row in rows)
    refusals = ledger_rows(served, "key_id = 'budget' AND status = 429", 3)
    assert {r["provider"] for r in refusals} == {"vertex_anthropic", "bedrock", "gemini"}
    assert all(r["cost_nanos"] == 0 for r in refusals)
    status = admin(served, "GET", "/budgets/budget")
    assert status.status_code == 200, status.text
    total = status.json()["periods"]["total"]
    assert total["spent_nanos"] == sum(row["cost_nanos"] for row in rows)
    assert total["reserved_nanos"] == 0
    assert total["spent_nanos"] <= total["limit_nanos"] == 400_000


# -- capture, metrics, reload, secrets ----------------------------------------------------------


def one_call_each(s: Served, text: str) -> None:
    """One call per provider with the main key: Gemini, Gemini and Claude on Vertex AI,
    Bedrock."""
    from google.oauth2.credentials import Credentials

    key = s.keys["main"]
    assert gemini_client(s, key).models.generate_content(model=GEMINI, contents=text).text
    vertex_gemini = genai.Client(
        vertexai=True,
        project=PROJECT,
        location=LOCATION,
        credentials=Credentials(token=key),
        http_options=types.HttpOptions(base_url=s.url, retry_options=NO_RETRY),
    )
    assert vertex_gemini.models.generate_content(model=GEMINI, contents=text).text
    assert (
        vertex_client(s, key)
        .messages.create(model=CLAUDE, max_tokens=20, messages=[{"role": "user", "content": text}])
        .content
    )
    assert bedrock_post(s, key, BEDROCK, text=text).status_code == 200


def test_capture_holds_the_requests_without_the_keys(served):
    one_call_each(served, "capture these words")
    deadline = time.monotonic() + 5
    mine: list[dict] = []
    while time.monotonic() < deadline:
        if served.capture.exists():
            text = served.capture.read_text()
            records = [json.loads(line) for line in text.splitlines()]
            mine = [r for r in records if "capture these words" in (r["request_body"] or "")]
            if len(mine) == 4:
                break
        time.sleep(0.1)
    # Each provider's call as the caller sent it.
    assert sorted((r["api"], r["endpoint"], r["credential_id"], r["key_id"]) for r in mine) == [
        ("bedrock", "converse", "br", "main"),
        ("gemini", "generateContent", "gm", "main"),
        ("vertex", "generateContent", "vx", "main"),
        ("vertex_anthropic", "rawPredict", "vx", "main"),
    ]
    assert all(REPLY in (r["response_body"] or "") for r in mine)
    # The caller's keys are replaced, wherever the SDK sent them.
    sent = {name for r in mine for name, value in r["request_headers"] if value == "[REDACTED]"}
    assert {"x-goog-api-key", "authorization"} <= sent
    for secret in served.secrets:
        assert secret not in text
    assert "ya29." not in text  # nor the gateway's own Vertex AI access tokens


def _requests_by_provider(s: Served) -> dict[str, float]:
    scrape = httpx.get(f"{s.url}/metrics", timeout=10).text
    counts: dict[str, float] = {}
    for line in scrape.splitlines():
        if line.startswith("llmguard_requests_total{"):
            labels, value = line.rsplit(" ", 1)
            provider = labels.split('provider="', 1)[1].split('"', 1)[0]
            counts[provider] = counts.get(provider, 0) + float(value)
    return counts


def test_metrics_count_the_requests_by_provider(served):
    before = _requests_by_provider(served)
    one_call_each(served, "count me")
    after = _requests_by_provider(served)
    grown = {p: after[p] - before.get(p, 0) for p in after if after[p] != before.get(p, 0)}
    assert grown == {"gemini": 1, "vertex": 1, "vertex_anthropic": 1, "bedrock": 1}
    scrape = httpx.get(f"{served.url}/metrics", timeout=10).text
    assert 'llmguard_cost_usd_total{key_id="main"' in scrape
    for secret in served.secrets:
        assert secret not in scrape


def test_a_reload_that_changes_an_upstream_keeps_serving(served, tmp_path):
    spare = FakeProvider(api_key=GEMINI_UPSTREAM_KEY)
    with serve(spare) as other:
        text = served.config.read_text()
        served.config.write_text(
            text.replace(served.gemini_url, other.url).replace('name = "gm"', 'name = "gm2"')
        )
        reloaded = admin(served, "POST", "/reload")
        assert reloaded.status_code == 200, reloaded.text
        assert reloaded.json()["result"]["ok"] is True
        client = gemini_client(served, served.keys["main"])
        assert client.models.generate_content(model=GEMINI, contents="after reload").text == REPLY
        assert len(spare.requests) == 1
        # The other providers keep serving on the reloaded configuration.
        assert bedrock_post(served, served.keys["main"], BEDROCK).status_code == 200
        message = vertex_client(served, served.keys["main"]).messages.create(
            model=CLAUDE, max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
        assert message.content[0].text
        # And on SIGHUP, back to the first upstream.
        served.config.write_text(text)
        served.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        before = len(served.gemini.requests)
        while len(served.gemini.requests) == before and time.monotonic() < deadline:
            client.models.generate_content(model=GEMINI, contents="after sighup")
            time.sleep(0.1)
        assert len(served.gemini.requests) > before
    rows = ledger_rows(served, "credential_id = 'gm2'", len(spare.requests))
    assert {row["model"] for row in rows} == {GEMINI}


def test_no_secret_reaches_the_served_process_output(served):
    served.stop()
    assert served.proc.returncode == 0
    logs = served.logs()
    assert "listening on" in logs
    assert "upstream vx: vertex" in logs
    # The banner says how each provider's SDK reaches the gateway.
    assert f"genai.Client(api_key=..., http_options={{'base_url': '{served.url}'}})" in logs
    assert f"AnthropicVertex(base_url='{served.url}/v1', access_token=...)" in logs
    assert f"boto3.client('bedrock-runtime', endpoint_url='{served.url}')" in logs
    for secret in served.secrets:
        assert secret not in logs
    assert "ya29." not in logs


def test_a_tls_key_without_its_certificate_is_refused(tmp_path):
    path = tmp_path / "llmguard.toml"
    path.write_text('[server]\nssl_keyfile = "server.key"\n')
    proc = subprocess.run(
        [SCRIPT, "serve", "--config", str(path), "--port", str(_free_port())],
        cwd=tmp_path,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "ssl_keyfile needs ssl_certfile - at `$.server`" in proc.stderr
