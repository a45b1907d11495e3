"""Vertex AI upstreams that name their own project and location, and their warm-up requests.

Real SDKs (google-genai in Vertex mode, anthropic's AnthropicVertex) -> gateway (uvicorn) -> the
fake Vertex AI, which records the path each request reached it on.
"""

from __future__ import annotations

import time

import anthropic
import pytest
from google import genai
from google.genai import types
from google.oauth2.credentials import Credentials

from asgi_llmguard import (
    ConfigurationError,
    KeyPolicy,
    StaticKey,
    StaticKeyStore,
    Upstream,
    build_stack,
    hash_key,
)
from asgi_llmguard.config import load_config, resolve_upstreams
from asgi_llmguard.context import RequestContext
from asgi_llmguard.forward.router import Routing, WarmupPolicy
from asgi_llmguard.providers.vertex import PROVIDER as VERTEX
from asgi_llmguard.testing import FakeProvider, FakeVertex, serve
from tests.forward.test_routing import Recorder

CALLER_KEY = "sk-llmg-vertex-places-0123456789abcdefghijklmnop"
MODEL = "gemini-2.5-flash"
CLAUDE = "claude-sonnet-4-5@20250929"
REPLY = "Hello from the fake provider."
WORDS = FakeProvider.count_tokens(REPLY)
# What the caller puts in its path (Claude Code: its own ANTHROPIC_VERTEX_PROJECT_ID).
CALLER_PROJECT, CALLER_LOCATION = "callers-own-project", "europe-west1"


def _gemini(url: str) -> genai.Client:
    return genai.Client(
        vertexai=True,
        project=CALLER_PROJECT,
        location=CALLER_LOCATION,
        credentials=Credentials(token=CALLER_KEY),
        http_options=types.HttpOptions(
            base_url=url, retry_options=types.HttpRetryOptions(attempts=1)
        ),
    )


def _claude(url: str) -> anthropic.AnthropicVertex:
    return anthropic.AnthropicVertex(
        region=CALLER_LOCATION,
        project_id=CALLER_PROJECT,
        base_url=f"{url}/v1",
        access_token=CALLER_KEY,
        max_retries=0,
    )


def _keys() -> StaticKeyStore:
    return StaticKeyStore([StaticKey(KeyPolicy(key_id="vtx"), key_hash=hash_key(CALLER_KEY))])


def test_each_upstream_of_a_pool_gets_its_own_project_and_location(tmp_path):
    fake = FakeVertex()
    with serve(fake) as upstream:
        sa = fake.write_service_account_file(tmp_path / "sa.json", upstream.url)
        app = build_stack(
            upstreams=[
                Upstream(
                    "vertex",
                    upstream.url,
                    name="vx-east",
                    credentials_file=str(sa),
                    project="proj-east",
                    location="us-east5",
                ),
                Upstream(
                    "vertex",
                    upstream.url,
                    name="vx-global",
                    credentials_file=str(sa),
                    project="proj-global",
                    location="global",
                ),
            ],
            keys=_keys(),
            routing=Routing(selector="round-robin"),
        )
        with serve(app) as server:
            gemini, claude = _gemini(server.url), _claude(server.url)
            for _ in range(2):
                assert gemini.models.generate_content(model=MODEL, contents="hi").text == REPLY
                message = claude.messages.create(
                    model=CLAUDE, max_tokens=20, messages=[{"role": "user", "content": "hi"}]
                )
                assert message.content[0].text == REPLY
    google = sorted(call.path for call in fake.calls("google"))
    assert google == [
        f"/v1beta1/projects/proj-east/locations/us-east5/publishers/google/models/"
        f"{MODEL}:generateContent",
        f"/v1beta1/projects/proj-global/locations/global/publishers/google/models/"
        f"{MODEL}:generateContent",
    ]
    claude_paths = sorted(call.path for call in fake.calls("anthropic"))
    assert claude_paths == [
        f"/v1/projects/proj-east/locations/us-east5/publishers/anthropic/models/"
        f"{CLAUDE}:rawPredict",
        f"/v1/projects/proj-global/locations/global/publishers/anthropic/models/"
        f"{CLAUDE}:rawPredict",
    ]
    assert all(CALLER_PROJECT not in call.path for call in fake.calls())


def test_an_upstream_without_a_project_keeps_the_callers_path(tmp_path):
    fake = FakeVertex()
    with serve(fake) as upstream:
        sa = fake.write_service_account_file(tmp_path / "sa.json", upstream.url)
        app = build_stack(
            upstreams=[Upstream("vertex", upstream.url, name="vx", credentials_file=str(sa))],
            keys=_keys(),
        )
        with serve(app) as server:
            gemini = _gemini(server.url)
            assert gemini.models.generate_content(model=MODEL, contents="hi").text == REPLY
    (call,) = fake.calls("google")
    assert f"/projects/{CALLER_PROJECT}/locations/{CALLER_LOCATION}/" in call.path


def _url(tmp_path, base_url: str, **place: str) -> str:
    """The URL the provider sends a caller's Gemini path to for an upstream at ``base_url``."""
    fake = FakeVertex()
    sa = fake.write_service_account_file(tmp_path / "sa.json", "http://127.0.0.1:9")
    upstream = Upstream("vertex", base_url, name="vx", credentials_file=str(sa), **place)
    owned = VERTEX.token_source(upstream)
    path = (
        f"/v1/projects/{CALLER_PROJECT}/locations/{CALLER_LOCATION}/publishers/google/models/"
        f"{MODEL}:generateContent"
    )
    try:
        return VERTEX.target(upstream, RequestContext("POST", path), b"")
    finally:
        import asyncio

        asyncio.run(owned.aclose())


def test_a_project_alone_takes_the_location_of_the_endpoint(tmp_path):
    regional = _url(tmp_path, "https://us-east5-aiplatform.googleapis.com", project="p1")
    assert regional == (
        "https://us-east5-aiplatform.googleapis.com/v1/projects/p1/locations/us-east5/"
        f"publishers/google/models/{MODEL}:generateContent"
    )
    world = _url(tmp_path, "https://aiplatform.googleapis.com", project="p2")
    assert world.startswith("https://aiplatform.googleapis.com/v1/projects/p2/locations/global/")


def test_a_location_another_region_serves_is_a_configuration_error(tmp_path):
    sa = FakeVertex().write_service_account_file(tmp_path / "sa.json", "http://127.0.0.1:9")
    with pytest.raises(ConfigurationError, match="us-east5-aiplatform"):
        build_stack(
            upstreams=[
                Upstream(
                    "vertex",
                    "https://europe-west4-aiplatform.googleapis.com",
                    credentials_file=str(sa),
                    project="p",
                    location="us-east5",
                )
            ],
            keys=_keys(),
        )
    with pytest.raises(ConfigurationError, match="Vertex AI options"):
        Upstream("openai", "https://api.openai.com/v1", api_key="sk-x", project="p")
    with pytest.raises(ConfigurationError, match="not a Google Cloud project id"):
        build_stack(
            upstreams=[
                Upstream("vertex", "http://127.0.0.1:9", credentials_file=str(sa), project="a/../b")
            ],
            keys=_keys(),
        )


def test_the_config_file_names_project_and_location(tmp_path):
    config = tmp_path / "llmguard.toml"
    config.write_text(
        "[[upstreams]]\n"
        'provider = "vertex"\n'
        'name = "vertex-eu"\n'
        'base_url = "https://europe-west4-aiplatform.googleapis.com"\n'
        'credentials_file = "/etc/llmguard/vertex-eu.json"\n'
        'project = "team-eu"\n'
        'location = "europe-west4"\n'
    )
    (upstream,) = resolve_upstreams(load_config(config), {})
    assert (upstream.project, upstream.location) == ("team-eu", "europe-west4")


@pytest.mark.parametrize(
    ("model", "family", "method"),
    [(MODEL, "google", "generateContent"), (CLAUDE, "anthropic", "rawPredict")],
)
def test_warm_up_of_a_vertex_secondary_hits_its_project_and_location(
    tmp_path, model, family, method
):
    fake = FakeVertex()
    recorder = Recorder()
    with serve(fake) as upstream:
        sa = fake.write_service_account_file(tmp_path / "sa.json", upstream.url)
        app = build_stack(
            upstreams=[
                Upstream("vertex", upstream.url, name="primary", credentials_file=str(sa)),
                Upstream(
                    "vertex",
                    upstream.url,
                    name="secondary",
                    credentials_file=str(sa),
                    project="proj-b",
                    location="us-east5",
                ),
                # no project of its own: the key file's (fake-project), location global
                Upstream("vertex", upstream.url, name="third", credentials_file=str(sa)),
            ],
            keys=_keys(),
            routing=Routing(selector="fill-first", warmup=WarmupPolicy(ttl=60)),
            pipeline=recorder,  # type: ignore[arg-type]
        )
        with serve(app) as server:
            gemini, claude = _gemini(server.url), _claude(server.url)
            warmer = app.forwarder.warmer
            assert warmer is not None
            sent = 0
            deadline = time.monotonic() + 5
            # one warm-up in flight per upstream host: the next request warms the next secondary
            while warmer.succeeded + warmer.failed < 2 and time.monotonic() < deadline:
                if family == "google":
                    gemini.models.generate_content(model=model, contents="hi")
                else:
                    claude.messages.create(
                        model=model, max_tokens=20, messages=[{"role": "user", "content": "hi"}]
                    )
                sent += 1
                time.sleep(0.05)
            assert (warmer.started, warmer.succeeded, warmer.failed) == (2, 2, 0)
            events = recorder.wait_for(sent + 2)
    warm = [c for c in fake.calls(family) if (c.header("x-request-id") or "").startswith("warmup_")]
    assert sorted(c.path for c in warm) == [
        f"/v1/projects/fake-project/locations/global/publishers/{family}/models/{model}:{method}",
        f"/v1/projects/proj-b/locations/us-east5/publishers/{family}/models/{model}:{method}",
    ]
    assert all((c.header("authorization") or "").startswith("Bearer ya29.") for c in warm)
    if family == "anthropic":
        assert all(c.json()["anthropic_version"] == "vertex-2023-10-16" for c in warm)
        assert all(c.json()["max_tokens"] == 1 for c in warm)
    else:
        assert all(c.json()["generationConfig"]["maxOutputTokens"] == 1 for c in warm)
    recorded = [e for e in events if e.outcome == "warmup"]
    assert sorted(e.credential_id or "" for e in recorded) == ["secondary", "third"]
    assert all(e.status == 200 and e.input_tokens == 1 and e.key_id is None for e in recorded)


def test_a_secondary_with_no_known_project_is_not_warmed_on_every_request(tmp_path):
    import json

    fake = FakeVertex()
    with serve(fake) as upstream:
        sa = fake.write_service_account_file(tmp_path / "sa.json", upstream.url)
        info = json.loads(sa.read_text())
        del info["project_id"]
        anonymous = tmp_path / "no-project.json"
        anonymous.write_text(json.dumps(info))
        app = build_stack(
            upstreams=[
                Upstream("vertex", upstream.url, name="primary", credentials_file=str(sa)),
                Upstream("vertex", upstream.url, name="second", credentials_file=str(anonymous)),
            ],
            keys=_keys(),
            routing=Routing(selector="fill-first", warmup=WarmupPolicy(ttl=60)),
        )
        with serve(app) as server:
            gemini = _gemini(server.url)
            for _ in range(5):
                assert gemini.models.generate_content(model=MODEL, contents="hi").text == REPLY
            warmer = app.forwarder.warmer
            assert warmer is not None
            assert warmer.started == 1
    assert not any((c.header("x-request-id") or "").startswith("warmup_") for c in fake.calls())
