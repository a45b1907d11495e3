"""Amazon Bedrock's upstream credentials through a served gateway: temporary credentials from a
real botocore source (a ``credential_process`` of a named profile) renewed in the background
ahead of their expiry, never on a request's way; a credential that cannot be renewed answered 503
with ``Retry-After``; the upstream's ``region`` and ``profile`` options."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import httpx
import orjson
import pytest

from asgi_llmguard import KeyPolicy, StaticKey, StaticKeyStore, Upstream, build_stack, hash_key
from asgi_llmguard.config import load_config, resolve_upstreams
from asgi_llmguard.testing import FakeBedrock, serve

CALLER_KEY = "sk-llmg-bedrock-caller-0123456789abcdefghijklmnop"
MODEL = "anthropic.claude-sonnet-4-5-20250929-v1:0"
BODY = {"messages": [{"role": "user", "content": [{"text": "one two three"}]}]}
#: The n-th answer of the credential process: its key id and secret.
PROCESS_KEYS = {f"AKIDPROC{n}": f"process-secret-{n}" for n in range(1, 60)}

# A credential process (botocore runs it with the profile's command line): counts its calls in
# STATE; "slow" makes every renewal take 2 s (it marks STATE.started first), "fail" makes every
# renewal fail with a secret-looking line on stderr. Its credentials expire LIFETIME s after.
SCRIPT = """
import datetime as dt, json, pathlib, sys, time
state, mode, lifetime = pathlib.Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
n = int(state.read_text()) + 1 if state.exists() else 1
state.write_text(str(n))
if n > 1 and mode == "slow":
    pathlib.Path(str(state) + ".started").write_text(str(n))
    time.sleep(2)
if n > 1 and mode == "fail":
    print("refused: process-secret-leaked-in-stderr", file=sys.stderr)
    sys.exit(1)
expires = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=lifetime)
print(json.dumps({"Version": 1, "AccessKeyId": f"AKIDPROC{n}",
                  "SecretAccessKey": f"process-secret-{n}", "SessionToken": f"session-{n}",
                  "Expiration": expires.isoformat()}))
"""


@pytest.fixture
def aws_profile(tmp_path, monkeypatch):
    """A profile ``bedtest`` whose credential process is SCRIPT; no other credentials."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_REGION", "us-east-1")  # the upstream's region option wins over it
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    script = tmp_path / "credentials.py"
    script.write_text(SCRIPT)
    state = tmp_path / "calls"

    def write(mode: str, lifetime: float) -> Path:
        config = tmp_path / "aws-config"
        config.write_text(
            "[profile bedtest]\n"
            f"credential_process = {sys.executable} {script} {state} {mode} {lifetime}\n"
        )
        monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
        return state

    return write


def keys() -> StaticKeyStore:
    policy = KeyPolicy(key_id="br", models=("anthropic.*",))
    return StaticKeyStore([StaticKey(policy, key_hash=hash_key(CALLER_KEY))])


def post(url: str) -> httpx.Response:
    return httpx.post(
        f"{url}/model/{MODEL}/converse",
        content=orjson.dumps(BODY),
        headers={"authorization": f"Bearer {CALLER_KEY}", "content-type": "application/json"},
        timeout=10,
    )


def calls(state: Path) -> int:
    return int(state.read_text()) if state.exists() else 0


def test_temporary_credentials_are_renewed_ahead_of_expiry_off_the_requests_way(aws_profile):
    # 15 min 3 s: botocore deems them due 3 s after they are issued (15 min ahead of expiry).
    state = aws_profile("slow", 903)
    fake = FakeBedrock(access_keys=PROCESS_KEYS, region="eu-west-3")
    upstream_options = {"name": "br", "region": "eu-west-3", "profile": "bedtest"}
    with serve(fake) as upstream:
        app = build_stack(
            upstreams=[Upstream("bedrock", upstream.url, **upstream_options)], keys=keys()
        )
        with serve(app) as server:
            assert post(server.url).status_code == 200
            assert list(fake.signers) == ["AKIDPROC1"]
            # Requests keep coming while the credentials become due and are renewed (the
            # renewal takes 2 s): each is answered at once, signed with the current credentials
            # (valid for 15 more minutes); none waits for the renewal or runs it.
            started = Path(str(state) + ".started")
            latencies: list[float] = []
            deadline = time.monotonic() + 15
            while not started.exists() or len(latencies) < 4:
                assert time.monotonic() < deadline, "no renewal started"
                began = time.perf_counter()
                assert post(server.url).status_code == 200
                latencies.append(time.perf_counter() - began)
                if started.exists():  # the renewal is under way: these are the ones that count
                    assert fake.signers[-1] == "AKIDPROC1"
                else:
                    latencies.clear()
                time.sleep(0.05)
            assert max(latencies) < 0.4, latencies
            deadline = time.monotonic() + 10
            while True:
                assert post(server.url).status_code == 200
                if fake.signers[-1] != "AKIDPROC1" or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
    assert fake.signers[-1] in {f"AKIDPROC{n}" for n in range(2, 60)}
    assert calls(state) >= 2


def test_credentials_that_cannot_be_renewed_are_a_503_with_retry_after(aws_profile, caplog):
    # Issued for 1 s (due at once), and every renewal fails.
    caplog.set_level(logging.INFO, logger="asgi_llmguard")
    state = aws_profile("fail", 1)
    fake = FakeBedrock(access_keys=PROCESS_KEYS)
    with serve(fake) as upstream:
        upstreams = [Upstream("bedrock", upstream.url, name="br", profile="bedtest")]
        with serve(build_stack(upstreams=upstreams, keys=keys())) as server:
            time.sleep(1.1)
            resp = post(server.url)
    assert resp.status_code == 503, resp.text
    assert resp.headers["x-amzn-errortype"] == "ServiceUnavailableException"
    assert int(resp.headers["retry-after"]) >= 1
    assert "retry after" in resp.json()["message"]
    assert len(fake.requests) == 0
    assert calls(state) >= 2
    ours = [r for r in caplog.records if r.name.startswith("asgi_llmguard")]
    failures = [r for r in ours if "aws_credentials_refresh_failed" in r.getMessage()]
    assert failures
    text = "\n".join(r.getMessage() for r in ours) + resp.text
    assert "process-secret" not in text
    assert "session-" not in text


def test_region_and_profile_come_from_the_config_file(tmp_path):
    config = tmp_path / "llmguard.toml"
    config.write_text(
        "[[upstreams]]\n"
        'provider = "bedrock"\n'
        'base_url = "https://bedrock-runtime.us-east-1.amazonaws.com"\n'
        'name = "br-eu"\n'
        'region = "eu-central-1"\n'
        'profile = "bedrock-prod"\n'
    )
    (upstream,) = resolve_upstreams(load_config(config), {})
    assert (upstream.region, upstream.profile) == ("eu-central-1", "bedrock-prod")
    assert repr(upstream) == (
        "Upstream(provider='bedrock', base_url='https://bedrock-runtime.us-east-1.amazonaws.com',"
        " key=None)"
    )
