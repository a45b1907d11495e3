"""Paths both providers serve (model lists, files) go to the upstream of the caller's dialect;
the newer Responses and Message Batches routes are forwarded, not refused."""

from __future__ import annotations

import anthropic
import httpx
import openai
import pytest

from asgi_llmguard import Upstream
from asgi_llmguard.testing import FakeProvider, serve

from .conftest import forwarding_stack

OPENAI_KEY = "sk-openai-upstream-1111"
ANTHROPIC_KEY = "sk-ant-upstream-2222"


@pytest.fixture
def two_fakes():
    oa, an = FakeProvider(api_key=OPENAI_KEY), FakeProvider(api_key=ANTHROPIC_KEY)
    with serve(oa) as oa_server, serve(an) as an_server:
        yield oa, oa_server, an, an_server


def _client(url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key="client-key", max_retries=0)


def test_anthropic_model_listing_on_an_anthropic_only_gateway(two_fakes):
    _, _, an, an_server = two_fakes
    gateway = forwarding_stack(
        upstreams=[Upstream("anthropic", an_server.url, api_key=ANTHROPIC_KEY)]
    )
    with serve(gateway) as server:
        client = _client(server.url)
        page = client.models.list()
        one = client.models.retrieve(page.data[0].id)
    assert page.data
    assert page.data[0].type == "model"
    assert one.id == page.data[0].id
    assert [r.path for r in an.requests] == ["/v1/models", f"/v1/models/{one.id}"]
    assert all(r.header("x-api-key") == ANTHROPIC_KEY for r in an.requests)


def test_mixed_gateway_sends_each_dialects_listing_to_its_upstream(two_fakes):
    oa, oa_server, an, an_server = two_fakes
    gateway = forwarding_stack(
        upstreams=[
            Upstream("openai", f"{oa_server.url}/v1", api_key=OPENAI_KEY),
            Upstream("anthropic", an_server.url, api_key=ANTHROPIC_KEY),
        ]
    )
    with serve(gateway) as server:
        ant = _client(server.url).models.list()
        oai = openai.OpenAI(
            base_url=f"{server.url}/v1", api_key="client-key", max_retries=0
        ).models.list()
    assert ant.first_id is not None
    assert ant.data[0].display_name
    assert oai.data
    assert oai.data[0].object == "model"
    assert [r.path for r in an.requests] == ["/v1/models"]
    assert an.requests[0].header("x-api-key") == ANTHROPIC_KEY
    assert [r.path for r in oa.requests] == ["/v1/models"]
    assert oa.requests[0].header("authorization") == f"Bearer {OPENAI_KEY}"


def test_responses_compact_is_forwarded(two_fakes):
    oa, oa_server, _, _ = two_fakes
    gateway = forwarding_stack(
        upstreams=[Upstream("openai", f"{oa_server.url}/v1", api_key=OPENAI_KEY)]
    )
    with serve(gateway) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="client-key", max_retries=0)
        out = client.responses.compact(model="gpt-5", input="one two three")
    assert out.usage.input_tokens == 3
    assert oa.requests[-1].path == "/v1/responses/compact"


def test_message_batches_create_and_retrieve(two_fakes):
    _, _, an, an_server = two_fakes
    gateway = forwarding_stack(
        upstreams=[Upstream("anthropic", an_server.url, api_key=ANTHROPIC_KEY)]
    )
    with serve(gateway) as server:
        client = _client(server.url)
        batch = client.messages.batches.create(
            requests=[
                {
                    "custom_id": "a",
                    "params": {
                        "model": "claude-haiku-4-5",
                        "max_tokens": 10,
                        "messages": [{"role": "user", "content": "hi"}],
                    },
                }
            ]
        )
        again = client.messages.batches.retrieve(batch.id)
    assert again.id == batch.id
    assert batch.type == "message_batch"
    assert [r.path for r in an.requests] == [
        "/v1/messages/batches",
        f"/v1/messages/batches/{batch.id}",
    ]


def test_a_files_request_with_only_the_anthropic_beta_header_goes_to_anthropic(two_fakes):
    oa, oa_server, an, an_server = two_fakes
    gateway = forwarding_stack(
        upstreams=[
            Upstream("openai", f"{oa_server.url}/v1", api_key=OPENAI_KEY),
            Upstream("anthropic", an_server.url, api_key=ANTHROPIC_KEY),
        ]
    )
    with serve(gateway) as server:
        httpx.get(
            f"{server.url}/v1/files",
            headers={
                "authorization": "Bearer client-key",
                "anthropic-beta": "files-api-2025-04-14",
            },
        )
    # (the fake serves no files: what matters is which upstream was asked, with which key)
    assert [q.path for q in an.requests] == ["/v1/files"]
    assert an.requests[0].header("x-api-key") == ANTHROPIC_KEY
    assert an.requests[0].header("anthropic-beta") == "files-api-2025-04-14"
    assert not oa.requests
