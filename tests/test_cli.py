"""The standalone server, run as a user would: the console script in a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

SCRIPT = shutil.which("asgi-llmguard") or str(Path(sys.executable).with_name("asgi-llmguard"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY")}
    env.update(extra)
    return env


def _wait_for_port(port: int, proc: subprocess.Popen[str], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.communicate()[1]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("server did not start")


def test_serve_with_no_key_runs_on_the_fake_upstream_and_says_so(tmp_path):
    port = _free_port()
    proc = subprocess.Popen(
        [SCRIPT, "serve", "--port", str(port)],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_port(port, proc)
        out = openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="anything", max_retries=0
        ).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        msg = anthropic.Anthropic(
            base_url=f"http://127.0.0.1:{port}", api_key="anything", max_retries=0
        ).messages.create(
            model="claude-sonnet-4-6", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    assert out.choices[0].message.content
    assert msg.content[0].type == "text"
    assert "FAKE" in err
    assert f"listening on http://127.0.0.1:{port}" in err
    assert proc.returncode == 0
    # The embedded ledger recorded both calls, and the usage command reports them.
    report = subprocess.run(
        [SCRIPT, "usage", "--since", "1h", "--by", "model", "--format", "json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    rows = {row["model"]: row for row in json.loads(report.stdout)}
    assert set(rows) == {"gpt-4o", "claude-sonnet-4-6"}
    assert rows["gpt-4o"]["requests"] == 1
    assert rows["gpt-4o"]["input_tokens"] == 1
    assert int(rows["gpt-4o"]["cost_nanos"]) > 0


def test_serve_binds_loopback_by_default(tmp_path):
    port = _free_port()
    proc = subprocess.Popen(
        [SCRIPT, "serve", "--port", str(port)],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_port(port, proc)
        listening = subprocess.run(
            ["ss", "-Htln", f"sport = :{port}"], capture_output=True, text=True, check=False
        ).stdout
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=20)
    local = [line.split()[3] for line in listening.splitlines() if line.strip()]
    if local:  # ss is there: every listening address on this port is loopback
        assert local == [f"127.0.0.1:{port}"]


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[server]\nport = 'eighty'\n", "Expected `int`, got `str` - at `$.server.port`"),
        ("[server]\nprot = 1\n", "unknown field `prot` - at `$.server`"),
        ("[[upstreams]]\nprovider = 'opnai'\nbase_url = 'http://x'\n", "$.upstreams[0].provider"),
        (
            "[[upstreams]]\nprovider = 'openai'\nbase_url = 'http://x'\napi_key_env = 'NOPE_KEY'\n",
            "environment variable NOPE_KEY is not set",
        ),
        (
            "[[upstreams]]\nprovider = 'openai'\nbase_url = 'ftp://x'\n",
            "absolute http(s) URL",
        ),
        (
            "[[upstreams]]\nprovider = 'openai'\nbase_url = 'http://x'\n"
            "api_key = 'sk-REPLACE-ME'\n",
            "placeholder",
        ),
        ("[server\n", "not valid TOML"),
    ],
)
def test_config_errors_name_the_bad_field(tmp_path, toml, message):
    path = tmp_path / "llmguard.toml"
    path.write_text(toml)
    proc = subprocess.run(
        [SCRIPT, "serve", "--config", str(path), "--port", str(_free_port())],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_config_file_upstreams_and_key_from_env(tmp_path):
    from asgi_llmguard.testing import FakeProvider, serve

    fake = FakeProvider(api_key="sk-from-env-123")
    with serve(fake) as upstream:
        port = _free_port()
        path = tmp_path / "llmguard.toml"
        path.write_text(
            f"""
[server]
port = {port}

[forward.timeouts]
first_byte = 30

[[upstreams]]
provider = "openai"
base_url = "{upstream.url}/v1"
api_key_env = "MY_UPSTREAM_KEY"
name = "primary"
"""
        )
        proc = subprocess.Popen(
            [SCRIPT, "serve", "--config", str(path)],
            cwd=tmp_path,
            env=_env(MY_UPSTREAM_KEY="sk-from-env-123"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            _wait_for_port(port, proc)
            out = openai.OpenAI(
                base_url=f"http://127.0.0.1:{port}/v1", api_key="c", max_retries=0
            ).chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
            )
        finally:
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=20)
    assert out.choices[0].message.content
    assert fake.requests[-1].header("authorization") == "Bearer sk-from-env-123"
    assert "FAKE" not in err
    assert "upstream primary: openai" in err
    assert "sk-from-env-123" not in err


def test_serving_beyond_loopback_without_keys_is_refused(tmp_path):
    proc = subprocess.run(
        [SCRIPT, "serve", "--host", "0.0.0.0", "--port", str(_free_port())],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "without virtual keys" in proc.stderr


def test_keys_created_with_the_cli_guard_the_served_gateway(tmp_path):
    created = subprocess.run(
        [SCRIPT, "keys", "create", "--name", "team-a", "--db", "sqlite:///keys.db"],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    key = next(w for w in created.stdout.split() if w.startswith("sk-llmg-"))
    listed = subprocess.run(
        [SCRIPT, "keys", "list", "--db", "sqlite:///keys.db"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert "team-a" in listed
    assert key not in listed
    port = _free_port()
    (tmp_path / "llmguard.toml").write_text(
        f'[server]\nport = {port}\n\n[auth]\nstore = "sqlite:///keys.db"\n'
    )
    proc = subprocess.Popen(
        [SCRIPT, "serve", "--config", "llmguard.toml"],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_port(port, proc)
        base = f"http://127.0.0.1:{port}/v1"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=base, api_key="sk-wrong", max_retries=0).models.list()
        out = openai.OpenAI(base_url=base, api_key=key, max_retries=0).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    assert out.choices[0].message.content
    assert key not in err
    report = subprocess.run(
        [SCRIPT, "usage", "--since", "1h", "--by", "key", "--format", "json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert [row["key"] for row in json.loads(report.stdout)] == ["team-a"]


def test_config_repr_never_shows_keys_or_passwords(tmp_path, monkeypatch):
    from asgi_llmguard.config import load_config, resolve_upstreams

    path = tmp_path / "llmguard.toml"
    path.write_text(
        """
[[upstreams]]
provider = "openai"
base_url = "https://api.openai.com/v1"
api_key = "sk-inline-secret-value-123"

[auth]
store = "postgresql://gw:db-password-42@db.internal:5432/llm"

[usage]
sinks = ["postgresql://ledger:ledger-password-7@db.internal/llm"]

[rate_limit]
storage = "redis://:redis-password-9@cache.internal:6379/0"
"""
    )
    config = load_config(path)
    shown = repr(config) + repr(resolve_upstreams(config, {}))
    for secret in (
        "sk-inline-secret-value-123",
        "db-password-42",
        "ledger-password-7",
        "redis-password-9",
    ):
        assert secret not in shown
    assert "db.internal" in shown  # the rest is still there to debug with


def test_health_endpoints_answer_on_the_standalone_server(tmp_path):
    port = _free_port()
    (tmp_path / "llmguard.toml").write_text(
        f'[server]\nport = {port}\n\n[health]\nredis = "redis://127.0.0.1:1/0"\n'
        "\n[overload]\nmax_in_flight = 64\n"
    )
    proc = subprocess.Popen(
        [SCRIPT, "serve", "--config", "llmguard.toml"],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_port(port, proc)
        live = httpx.get(f"http://127.0.0.1:{port}/healthz")
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=20)
    assert live.status_code == 200
    # Nothing listens on port 1: the Redis readiness check fails, and says which.
    assert ready.status_code == 503
    assert ready.json()["checks"]["redis"] in ("fail", "timeout")


def test_serve_writes_one_access_line_per_request_to_stdout(tmp_path):
    """The documented default: one JSON line per request in the served process's output, naming
    the gateway's request id and the caller's."""
    port = _free_port()
    proc = subprocess.Popen(
        [SCRIPT, "serve", "--port", str(port)],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_port(port, proc)
        raw = openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="anything", max_retries=0
        ).chat.completions.with_raw_response.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-request-id": "caller-trace-1"},
        )
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
    ours = raw.headers["x-llmguard-request-id"]
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    mine = [line for line in lines if line.get("request_id") == ours]
    assert len(mine) == 1, out
    assert mine[0]["client_request_id"] == "caller-trace-1"
    assert (mine[0]["status"], mine[0]["path"]) == (200, "/v1/chat/completions")
