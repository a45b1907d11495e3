"""Bedrock's upstream credentials: botocore's signatures checked by the fake's own SigV4 checker.

Two implementations that share no code -- botocore's signer and the fake Bedrock's checker, itself
held to AWS's published test vectors (tests/testing/test_sigv4.py) -- must agree, over a socket.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import httpx
import pytest
import yarl
from botocore.credentials import Credentials, RefreshableCredentials

from asgi_llmguard.errors import ConfigurationError
from asgi_llmguard.providers.aws_auth import BedrockApiKey, SigV4Signer
from asgi_llmguard.testing import FakeBedrock, RunningServer, serve

KEYS = {"AKIDSTATIC": "static-secret", "AKIDRENEWED": "renewed-secret"}
API_KEY = "ABSKQmVkcm9ja0FQSUtleS1leGFtcGxl"
PATH = "/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/converse"
BODY = b'{"messages":[{"role":"user","content":[{"text":"hello"}]}]}'
JSON = [("content-type", "application/json")]


@pytest.fixture(scope="module")
def fake() -> FakeBedrock:
    return FakeBedrock(access_keys=KEYS, api_key=API_KEY, region="eu-west-3")


@pytest.fixture(scope="module")
def upstream(fake: FakeBedrock) -> Iterator[RunningServer]:
    with serve(fake) as running:
        yield running


@pytest.fixture(autouse=True)
def _fresh(fake: FakeBedrock) -> None:
    fake.reset()


async def _post(url: str, headers: list[tuple[str, str]]) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.post(url, content=BODY, headers=headers)


async def test_a_botocore_signature_is_accepted_by_the_fakes_checker(
    upstream: RunningServer, fake: FakeBedrock
) -> None:
    signer = SigV4Signer(region="eu-west-3", credentials=Credentials("AKIDSTATIC", "static-secret"))
    await signer.start()
    url = upstream.url + PATH
    added = await signer.authorize("POST", url, JSON, BODY)
    assert [name for name, _ in added] == ["x-amz-date", "authorization"]
    response = await _post(url, JSON + added)
    assert response.status_code == 200, response.text
    assert list(fake.signers) == ["AKIDSTATIC"]
    assert response.json()["usage"]["inputTokens"] == 1


async def test_a_wrong_secret_a_wrong_region_or_a_changed_body_is_refused(
    upstream: RunningServer,
) -> None:
    url = upstream.url + PATH
    wrong_secret = SigV4Signer(region="eu-west-3", credentials=Credentials("AKIDSTATIC", "nope"))
    wrong_region = SigV4Signer(
        region="us-east-1", credentials=Credentials("AKIDSTATIC", "static-secret")
    )
    for signer, message in (
        (wrong_secret, "The request signature we calculated does not match"),
        (wrong_region, "Credential should be scoped to a valid region"),
    ):
        await signer.start()
        response = await _post(url, JSON + await signer.authorize("POST", url, JSON, BODY))
        assert response.status_code == 403
        assert response.headers["x-amzn-errortype"] == "InvalidSignatureException"
        assert response.json()["message"].startswith(message)
    right = SigV4Signer(region="eu-west-3", credentials=Credentials("AKIDSTATIC", "static-secret"))
    await right.start()
    added = await right.authorize("POST", url, JSON, b"{}")  # signed another body
    response = await _post(url, JSON + added)
    assert response.status_code == 403
    unknown = SigV4Signer(region="eu-west-3", credentials=Credentials("AKIDUNKNOWN", "x"))
    await unknown.start()
    response = await _post(url, JSON + await unknown.authorize("POST", url, JSON, BODY))
    assert response.headers["x-amzn-errortype"] == "UnrecognizedClientException"


async def test_temporary_credentials_sign_their_session_token(upstream: RunningServer) -> None:
    signer = SigV4Signer(
        region="eu-west-3",
        credentials=Credentials("AKIDSTATIC", "static-secret", token="session-token-value"),
    )
    await signer.start()
    url = upstream.url + PATH
    added = dict(await signer.authorize("POST", url, JSON, BODY))
    assert added["x-amz-security-token"] == "session-token-value"
    assert "x-amz-security-token" in added["authorization"].split("SignedHeaders=")[1]
    assert (await _post(url, [*JSON, *added.items()])).status_code == 200


async def test_aiohttp_must_send_the_url_as_signed(upstream: RunningServer) -> None:
    """aiohttp decodes ``%3A`` in a plain string URL, so the path sent is not the one signed:
    the upstream's URL has to be given as ``yarl.URL(url, encoded=True)``."""
    signer = SigV4Signer(region="eu-west-3", credentials=Credentials("AKIDSTATIC", "static-secret"))
    await signer.start()
    url = upstream.url + PATH
    headers = dict(JSON + await signer.authorize("POST", url, JSON, BODY))
    async with aiohttp.ClientSession() as session:
        async with session.post(yarl.URL(url, encoded=True), data=BODY, headers=headers) as resp:
            assert resp.status == 200
        async with session.post(url, data=BODY, headers=headers) as resp:
            assert resp.status == 403


async def test_credentials_due_for_renewal_are_renewed_once_off_the_event_loop(
    upstream: RunningServer, fake: FakeBedrock
) -> None:
    loop_thread = threading.get_ident()
    calls: list[int] = []

    def renew() -> dict[str, str | None]:
        calls.append(threading.get_ident())
        expiry = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
        return {
            "access_key": "AKIDRENEWED",
            "secret_key": "renewed-secret",
            "token": None,
            "expiry_time": expiry.isoformat(),
        }

    soon = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30)  # inside botocore's window
    credentials = RefreshableCredentials.create_from_metadata(
        {
            "access_key": "AKIDSTATIC",
            "secret_key": "static-secret",
            "token": None,
            "expiry_time": soon.isoformat(),
        },
        refresh_using=renew,
        method="test",
    )
    signer = SigV4Signer(region="eu-west-3", credentials=credentials)
    url = upstream.url + PATH
    # Requests arriving while the renewal runs wait for it; none renews on the event loop.
    _, *results = await asyncio.gather(
        signer.start(), *(signer.authorize("POST", url, JSON, BODY) for _ in range(5))
    )
    assert len(calls) == 1
    assert calls[0] != loop_thread
    assert len(await signer.authorize("POST", url, JSON, BODY)) == 2
    assert len(calls) == 1  # renewed for an hour: no further renewal
    for added in results:
        assert (await _post(url, JSON + added)).status_code == 200
    assert set(fake.signers) == {"AKIDRENEWED"}


async def test_the_chain_reads_the_environment_and_profiles(
    upstream: RunningServer, fake: FakeBedrock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    url = upstream.url + PATH

    with pytest.raises(ConfigurationError, match="no AWS credentials found"):
        await SigV4Signer(region="eu-west-3").start()

    (tmp_path / "credentials").write_text(
        "[bedrock-test]\naws_access_key_id = AKIDRENEWED\naws_secret_access_key = renewed-secret\n"
    )
    from_profile = SigV4Signer(region="eu-west-3", profile="bedrock-test")
    await from_profile.start()
    assert (
        await _post(url, JSON + await from_profile.authorize("POST", url, JSON, BODY))
    ).is_success

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDSTATIC")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "static-secret")
    from_env = SigV4Signer(region="eu-west-3")
    await from_env.start()
    assert (await _post(url, JSON + await from_env.authorize("POST", url, JSON, BODY))).is_success
    assert list(fake.signers) == ["AKIDRENEWED", "AKIDSTATIC"]
    assert "secret" not in repr(from_env)


async def test_a_bedrock_api_key_is_a_bearer_token(
    upstream: RunningServer, fake: FakeBedrock
) -> None:
    url = upstream.url + PATH
    key = BedrockApiKey(API_KEY)
    assert API_KEY not in repr(key)
    await key.start()
    assert (await _post(url, JSON + await key.authorize("POST", url, JSON, BODY))).is_success
    wrong = BedrockApiKey("ABSK-not-the-key")
    response = await _post(url, JSON + await wrong.authorize("POST", url, JSON, BODY))
    assert response.status_code == 403
    assert list(fake.signers) == ["bearer"]
    with pytest.raises(ConfigurationError):
        BedrockApiKey("")
    with pytest.raises(ConfigurationError):
        SigV4Signer(region="")


async def test_the_background_renewal_runs_ahead_of_expiry_and_sign_never_waits(
    upstream: RunningServer, fake: FakeBedrock
) -> None:
    """Credentials due in 0.3 s (botocore's advisory window opens 15 minutes before expiry):
    the signer renews them in a thread while `sign` keeps signing with the cached ones, and the
    event loop keeps running; `aclose` stops the renewal."""
    loop_thread = threading.get_ident()
    calls: list[int] = []
    renewing = threading.Event()

    def renew() -> dict[str, str | None]:
        calls.append(threading.get_ident())
        renewing.set()
        time.sleep(0.5)  # a slow STS
        expiry = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
        return {
            "access_key": "AKIDRENEWED",
            "secret_key": "renewed-secret",
            "token": None,
            "expiry_time": expiry.isoformat(),
        }

    due = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=15, seconds=0.3)
    credentials = RefreshableCredentials.create_from_metadata(
        {
            "access_key": "AKIDSTATIC",
            "secret_key": "static-secret",
            "token": None,
            "expiry_time": due.isoformat(),
        },
        refresh_using=renew,
        method="test",
    )
    signer = SigV4Signer(region="eu-west-3", credentials=credentials)
    url = upstream.url + PATH
    async with signer:
        assert calls == []
        signed_during: list[dict[str, str]] = []
        lags: list[float] = []
        deadline = time.monotonic() + 5
        while not renewing.is_set():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        while len(calls) == 1 and signer.current().access_key == "AKIDSTATIC":
            began = time.perf_counter()
            signed_during.append(dict(signer.sign("POST", url, JSON, BODY)))
            await asyncio.sleep(0.01)
            lags.append(time.perf_counter() - began)
            assert time.monotonic() < deadline
        assert len(signed_during) > 10  # signed all along the 0.5 s renewal
        assert max(lags) < 0.1, max(lags)
        assert calls[0] != loop_thread
        assert all("AKIDSTATIC" in h["authorization"] for h in signed_during)
        response = await _post(url, JSON + signer.sign("POST", url, JSON, BODY))
        assert response.status_code == 200
        assert fake.signers[-1] == "AKIDRENEWED"
        task = signer._task
        assert task is not None
    assert task.done()
    assert len(calls) == 1
