"""The real OpenAI and Anthropic SDKs, through the gateway on a loopback port, to the fake.

Every test runs once on each upstream engine (aiohttp, httpx)."""

from __future__ import annotations

import anthropic
import openai
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from asgi_llmguard import Upstream
from asgi_llmguard.testing import FakeProvider, serve

from .conftest import UPSTREAM_KEY, forwarding_stack

REPLY = "Hello from the fake provider."


def _openai(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="client-key", max_retries=0)


def _anthropic(server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key="client-key", max_retries=0)


def _prompt_tokens(text: str) -> int:
    return FakeProvider.count_tokens(text)


def test_chat_completion(gateway_server, fake):
    out = _openai(gateway_server).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "say hello to me"}]
    )
    assert out.choices[0].message.content == REPLY
    assert out.model == "gpt-4o-mini"
    assert out.usage is not None
    assert out.usage.prompt_tokens == _prompt_tokens("say hello to me")
    assert out.usage.completion_tokens == _prompt_tokens(REPLY)
    seen = fake.requests[-1]
    assert seen.header("authorization") == f"Bearer {UPSTREAM_KEY}"
    assert seen.path == "/v1/chat/completions"


def test_chat_stream_with_usage_chunk(gateway_server):
    stream = _openai(gateway_server).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "stream please"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == REPLY
    usage = chunks[-1].usage
    assert chunks[-1].choices == []
    assert usage is not None
    assert usage.prompt_tokens == _prompt_tokens("stream please")
    assert usage.completion_tokens == _prompt_tokens(REPLY)


def test_responses_api_plain_and_streaming(gateway_server):
    client = _openai(gateway_server)
    resp = client.responses.create(model="gpt-5", input="one two three")
    assert resp.output_text == REPLY
    assert resp.usage is not None
    assert resp.usage.input_tokens == 3
    events = list(client.responses.create(model="gpt-5", input="one two", stream=True))
    assert events[-1].type == "response.completed"
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == REPLY
    assert events[-1].response.usage.output_tokens == _prompt_tokens(REPLY)


def test_embeddings_completions_and_models(gateway_server):
    client = _openai(gateway_server)
    emb = client.embeddings.create(model="text-embedding-3-small", input=["a b", "c"])
    assert len(emb.data) == 2
    assert all(len(d.embedding) > 0 for d in emb.data)
    assert emb.usage.prompt_tokens == 3
    comp = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="once upon")
    assert comp.choices[0].text == REPLY
    assert comp.usage is not None
    assert comp.usage.prompt_tokens == 2
    assert any(m.id for m in client.models.list())


def test_anthropic_messages_plain_and_streaming(gateway_server, fake):
    client = _anthropic(gateway_server)
    msg = client.messages.create(
        model="claude-sonnet-4-6",
        max_tokens=100,
        messages=[{"role": "user", "content": "hi there you"}],
    )
    assert msg.content[0].text == REPLY
    assert msg.usage.input_tokens == 3
    assert msg.usage.output_tokens == _prompt_tokens(REPLY)
    seen = fake.requests[-1]
    assert seen.header("x-api-key") == UPSTREAM_KEY
    assert seen.header("anthropic-version") is not None
    with client.messages.stream(
        model="claude-sonnet-4-6", max_tokens=100, messages=[{"role": "user", "content": "hey"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == REPLY
    assert final.usage.input_tokens == 1
    assert final.usage.output_tokens == _prompt_tokens(REPLY)
    count = client.messages.count_tokens(
        model="claude-sonnet-4-6", messages=[{"role": "user", "content": "a b c d"}]
    )
    assert count.input_tokens == 4


def test_openai_compatible_server_under_a_custom_base_path(fake):
    # vLLM, DeepInfra & co: an OpenAI API under some other base path ("/v1/openai").
    app = Starlette(routes=[Mount("/deepinfra", app=fake)])
    with serve(app) as upstream:
        gateway = forwarding_stack(
            upstreams=[Upstream("openai", f"{upstream.url}/deepinfra/v1", api_key=UPSTREAM_KEY)]
        )
        with serve(gateway) as gw:
            out = _openai(gw).chat.completions.create(
                model="meta-llama/Llama-3.3-70B", messages=[{"role": "user", "content": "x"}]
            )
    assert out.choices[0].message.content == REPLY
    assert fake.requests[-1].path == "/deepinfra/v1/chat/completions"


@pytest.mark.parametrize("client_kind", ["azure-sdk", "openai-sdk"])
def test_azure_openai(fake, fake_server, client_kind):
    gateway = forwarding_stack(
        upstreams=[
            Upstream(
                "azure",
                fake_server.url,
                api_key=UPSTREAM_KEY,
                api_version="2024-10-21",
                deployments={"gpt-4o": "prod-4o"},
            )
        ]
    )
    with serve(gateway) as gw:
        if client_kind == "azure-sdk":
            client: openai.OpenAI = openai.AzureOpenAI(
                azure_endpoint=gw.url,
                api_key="client-key",
                api_version="2024-06-01",
                azure_deployment="gpt-4o",
                max_retries=0,
            )
        else:
            client = _openai(gw)
        out = client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hello azure"}]
        )
        stream = client.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "hello azure"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
    assert out.choices[0].message.content == REPLY
    assert out.model == "prod-4o"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == 2
    seen = fake.requests[-1]
    assert seen.path == "/openai/deployments/prod-4o/chat/completions"
    assert "api-version=2024-10-21" in seen.query_string
    assert seen.header("api-key") == UPSTREAM_KEY
    assert seen.header("authorization") is None
