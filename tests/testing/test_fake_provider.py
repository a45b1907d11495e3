"""The fake provider, driven by the real ``openai`` and ``anthropic`` SDKs over real sockets.

The SDKs are the judges of the wire format: if the fake's JSON or SSE drifted from what they
parse, these tests fail. Raw httpx checks what the SDKs hide (end markers, cut connections).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest

from asgi_llmguard.testing import (
    FakeConnectionReset,
    FakeProvider,
    RunningServer,
    serve,
    serve_async,
    wait_for,
)

KEY = "sk-fake-test"
REPLY = "Hello from the fake provider."
REPLY_WORDS = 5
CHAT: Any = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": [{"type": "text", "text": "Say hello  to\nme"}]},
]
CHAT_WORDS = 3 + 4
RAW_CHAT = {"model": "gpt-4o-mini", "messages": CHAT, "stream": True}
OPENAI_AUTH = {"authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def fake() -> FakeProvider:
    return FakeProvider(api_key=KEY)


@pytest.fixture(scope="module")
def upstream(fake: FakeProvider) -> Iterator[RunningServer]:
    with serve(fake) as running:
        yield running


@pytest.fixture(autouse=True)
def _fresh(fake: FakeProvider) -> Iterator[None]:
    fake.reset()
    yield
    fake.wait_until(lambda: fake.active_streams == 0, timeout=1.0)


@pytest.fixture
def oai(upstream: RunningServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{upstream.url}/v1", api_key=KEY, max_retries=0) as client:
        yield client


@pytest.fixture
def claude(upstream: RunningServer) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=upstream.url, api_key=KEY, max_retries=0) as client:
        yield client


@pytest.fixture
def raw(upstream: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=upstream.url, headers=OPENAI_AUTH, timeout=5) as client:
        yield client


def sse_payloads(body: bytes) -> list[str]:
    return [line[6:] for line in body.decode().split("\n") if line.startswith("data: ")]


# -- the token rule -------------------------------------------------------------------------------


def test_token_rule_helpers() -> None:
    assert FakeProvider.count_tokens("  Say hello\n to\tme ") == 4
    assert FakeProvider.count_tokens("") == 0
    assert FakeProvider.reply_chunks(REPLY) == ["Hello", " from", " the", " fake", " provider."]
    seven = FakeProvider.reply_chunks(REPLY, chunks=7)
    assert "".join(seven) == REPLY + " Hello from"
    assert FakeProvider.count_tokens("".join(seven)) == 7
    assert FakeProvider.reply_chunks(REPLY, chunks=7, max_tokens=2) == ["Hello", " from"]
    assert "".join(FakeProvider.reply_chunks("a  b\n")) == "a  b\n"


def test_constructor_rejects_bad_knobs() -> None:
    with pytest.raises(ValueError, match="latency"):
        FakeProvider(latency=-1)
    with pytest.raises(ValueError, match="status"):
        FakeProvider(status=99)
    with pytest.raises(ValueError, match="chunks"):
        FakeProvider(chunks=-2)


# -- OpenAI ---------------------------------------------------------------------------------------


def test_chat_completion(fake: FakeProvider, oai: openai.OpenAI) -> None:
    completion = oai.chat.completions.create(model="gpt-4o-mini", messages=CHAT)

    assert completion.object == "chat.completion"
    assert completion.model == "gpt-4o-mini"
    choice = completion.choices[0]
    assert (choice.message.role, choice.message.content) == ("assistant", REPLY)
    assert choice.finish_reason == "stop"
    usage = completion.usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (CHAT_WORDS, REPLY_WORDS)
    assert usage.total_tokens == CHAT_WORDS + REPLY_WORDS
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 0
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 0

    [request] = fake.requests
    assert (request.method, request.path) == ("POST", "/v1/chat/completions")
    assert request.header("Authorization") == f"Bearer {KEY}"
    assert request.json()["messages"] == CHAT


def test_chat_stream_with_usage(oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(
        model="gpt-4o-mini",
        messages=CHAT,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)

    assert chunks[0].choices[0].delta.role == "assistant"
    content = [c.choices[0].delta.content for c in chunks[1:-2]]
    assert content == ["Hello", " from", " the", " fake", " provider."]
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == CHAT_WORDS
    assert chunks[-1].usage.completion_tokens == REPLY_WORDS


def test_chat_stream_helper_and_chunks_header(oai: openai.OpenAI) -> None:
    with oai.chat.completions.stream(
        model="gpt-4o-mini",
        messages=CHAT,
        stream_options={"include_usage": True},
        extra_headers={"x-fake-chunks": "12"},
    ) as stream:
        final = stream.get_final_completion()

    assert final.choices[0].message.content == "".join(FakeProvider.reply_chunks(REPLY, chunks=12))
    assert final.usage is not None
    assert final.usage.completion_tokens == 12


def test_chat_max_tokens_cuts_with_length(oai: openai.OpenAI) -> None:
    completion = oai.chat.completions.create(
        model="gpt-4o-mini",
        messages=CHAT,
        max_completion_tokens=2,
    )
    assert completion.choices[0].message.content == "Hello from"
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 2


def test_chat_stream_ends_with_done(raw: httpx.Client) -> None:
    response = raw.post("/v1/chat/completions", json=RAW_CHAT)

    assert response.headers["content-type"] == "text/event-stream"
    payloads = sse_payloads(response.content)
    assert payloads[-1] == "[DONE]"
    assert "usage" not in orjson.loads(payloads[0])  # only with stream_options.include_usage
    assert response.content.endswith(b"data: [DONE]\n\n")


def test_legacy_completions(oai: openai.OpenAI) -> None:
    completion = oai.completions.create(model="gpt-3.5-turbo-instruct", prompt="one two three")
    assert completion.object == "text_completion"
    assert completion.choices[0].text == REPLY
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (3, 5)

    stream = oai.completions.create(
        model="gpt-3.5-turbo-instruct",
        prompt=["one two", "three"],
        stream=True,
        stream_options={"include_usage": True},
        max_tokens=3,
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "Hello from the"
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (3, 3)


def test_responses(oai: openai.OpenAI) -> None:
    response = oai.responses.create(
        model="gpt-4.1-mini", input="one two three", instructions="be brief"
    )

    assert (response.object, response.status, response.model) == (
        "response",
        "completed",
        "gpt-4.1-mini",
    )
    assert response.id.startswith("resp_")
    assert response.output_text == REPLY
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (5, REPLY_WORDS)
    assert response.usage.total_tokens == 5 + REPLY_WORDS
    assert response.usage.input_tokens_details.cached_tokens == 0

    capped = oai.responses.create(
        model="gpt-4.1-mini",
        input=[{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
        max_output_tokens=1,
    )
    assert (capped.status, capped.output_text) == ("incomplete", "Hello")
    assert capped.incomplete_details is not None
    assert capped.incomplete_details.reason == "max_output_tokens"


def test_responses_stream(oai: openai.OpenAI) -> None:
    events = list(oai.responses.create(model="gpt-4.1-mini", input="one two", stream=True))

    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * REPLY_WORDS,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))

    with oai.responses.stream(model="gpt-4.1-mini", input="one two") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text == REPLY
    assert final.usage is not None
    assert (final.usage.input_tokens, final.usage.output_tokens) == (2, REPLY_WORDS)


def test_embeddings_base64_by_default(fake: FakeProvider, oai: openai.OpenAI) -> None:
    result = oai.embeddings.create(model="text-embedding-3-small", input=["one two", "three"])

    assert fake.requests[-1].json()["encoding_format"] == "base64"  # the SDK's default
    assert [e.embedding for e in result.data] == [
        FakeProvider.embed("one two"),
        FakeProvider.embed("three"),
    ]
    assert len(result.data[0].embedding) == 8
    assert result.data[0].embedding != result.data[1].embedding
    assert (result.usage.prompt_tokens, result.usage.total_tokens) == (3, 3)

    wide = oai.embeddings.create(
        model="text-embedding-3-small", input=[1, 2, 3], dimensions=40, encoding_format="float"
    )
    assert wide.data[0].embedding == FakeProvider.embed([1, 2, 3], 40)
    assert wide.usage.prompt_tokens == 3


def test_models(oai: openai.OpenAI, claude: anthropic.Anthropic) -> None:
    ids = [m.id for m in oai.models.list()]
    assert "gpt-4o-mini" in ids
    assert oai.models.retrieve("my-model").id == "my-model"
    assert [m.type for m in claude.models.list()] == ["model"] * 3


# -- Azure OpenAI ---------------------------------------------------------------------------------


def test_azure_chat(fake: FakeProvider, upstream: RunningServer) -> None:
    client = openai.AzureOpenAI(
        azure_endpoint=upstream.url,
        api_version="2024-10-21",
        azure_deployment="prod-gpt",
        api_key=KEY,
        max_retries=0,
    )
    completion = client.chat.completions.create(model="ignored", messages=CHAT)

    assert completion.model == "prod-gpt"
    assert completion.choices[0].message.content == REPLY
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == CHAT_WORDS
    [request] = fake.requests
    assert request.path == "/openai/deployments/prod-gpt/chat/completions"
    assert request.query_string == "api-version=2024-10-21"
    assert request.header("api-key") == KEY

    bad_key = openai.AzureOpenAI(
        azure_endpoint=upstream.url,
        api_version="2024-10-21",
        azure_deployment="prod-gpt",
        api_key="wrong",
        max_retries=0,
    )
    with pytest.raises(openai.AuthenticationError):
        bad_key.chat.completions.create(model="x", messages=CHAT)


def test_azure_requires_api_version(upstream: RunningServer) -> None:
    response = httpx.post(
        f"{upstream.url}/openai/deployments/prod-gpt/chat/completions",
        json=RAW_CHAT,
        headers={"api-key": KEY},
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "MissingApiVersionParameter"


# -- Anthropic ------------------------------------------------------------------------------------

MESSAGES: Any = [{"role": "user", "content": [{"type": "text", "text": "Say hello to me"}]}]


def test_anthropic_message(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model="claude-haiku-4-5", max_tokens=100, system="Be terse.", messages=MESSAGES
    )

    assert (message.type, message.role, message.model) == (
        "message",
        "assistant",
        "claude-haiku-4-5",
    )
    assert message.id.startswith("msg_")
    assert [(b.type, getattr(b, "text", None)) for b in message.content] == [("text", REPLY)]
    assert (message.stop_reason, message.stop_sequence) == ("end_turn", None)
    assert (message.usage.input_tokens, message.usage.output_tokens) == (2 + 4, REPLY_WORDS)
    assert message.usage.cache_read_input_tokens == 0

    capped = claude.messages.create(model="claude-haiku-4-5", max_tokens=3, messages=MESSAGES)
    assert capped.stop_reason == "max_tokens"
    assert capped.usage.output_tokens == 3


def test_anthropic_stream(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(
        model="claude-haiku-4-5", max_tokens=100, system="Be terse.", messages=MESSAGES
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()

    assert text == REPLY
    assert final.content[0].type == "text"
    assert final.content[0].text == REPLY
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (6, REPLY_WORDS)


def test_anthropic_stream_events(upstream: RunningServer) -> None:
    body = {"model": "claude-haiku-4-5", "max_tokens": 9, "messages": MESSAGES, "stream": True}
    response = httpx.post(f"{upstream.url}/v1/messages", json=body, headers={"x-api-key": KEY})

    blocks = response.content.decode().split("\n\n")[:-1]
    names = [b.split("\n")[0].removeprefix("event: ") for b in blocks]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * REPLY_WORDS,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    datas = [orjson.loads(b.split("\n")[1].removeprefix("data: ")) for b in blocks]
    assert [d["type"] for d in datas] == names
    assert datas[0]["message"]["usage"]["output_tokens"] == 1
    assert datas[-2]["usage"] == {"output_tokens": REPLY_WORDS}


def test_anthropic_count_tokens(claude: anthropic.Anthropic) -> None:
    count = claude.messages.count_tokens(
        model="claude-haiku-4-5", system="Be terse.", messages=MESSAGES
    )
    assert count.input_tokens == 6


# -- errors ---------------------------------------------------------------------------------------


def test_rate_limit_with_retry_after(oai: openai.OpenAI, claude: anthropic.Anthropic) -> None:
    knobs = {"x-fake-status": "429", "x-fake-retry-after": "3"}
    with pytest.raises(openai.RateLimitError) as openai_error:
        oai.chat.completions.create(model="m", messages=CHAT, extra_headers=knobs)
    assert openai_error.value.response.headers["retry-after"] == "3"
    assert openai_error.value.code == "rate_limit_exceeded"

    with pytest.raises(anthropic.RateLimitError) as anthropic_error:
        claude.messages.create(model="c", max_tokens=5, messages=MESSAGES, extra_headers=knobs)
    assert anthropic_error.value.response.headers["retry-after"] == "3"
    assert anthropic_error.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]


def test_server_errors(oai: openai.OpenAI, claude: anthropic.Anthropic) -> None:
    with pytest.raises(openai.InternalServerError) as error:
        oai.chat.completions.create(
            model="m",
            messages=CHAT,
            extra_headers={"x-fake-status": "500"},
        )
    assert error.value.status_code == 500
    with pytest.raises(anthropic.OverloadedError):
        claude.messages.create(
            model="c", max_tokens=5, messages=MESSAGES, extra_headers={"x-fake-status": "529"}
        )


def test_bad_api_key(upstream: RunningServer) -> None:
    bad_openai = openai.OpenAI(base_url=f"{upstream.url}/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad_openai.chat.completions.create(model="m", messages=CHAT)
    bad_anthropic = anthropic.Anthropic(base_url=upstream.url, api_key="nope", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        bad_anthropic.messages.create(model="c", max_tokens=5, messages=MESSAGES)
    response = httpx.post(f"{upstream.url}/v1/messages", json={}, headers={"x-api-key": "nope"})
    assert response.json()["error"]["type"] == "authentication_error"


def test_error_shapes(raw: httpx.Client) -> None:
    not_found = raw.post("/v1/nothing", json={})
    assert not_found.status_code == 404
    assert set(not_found.json()["error"]) == {"message", "type", "param", "code"}

    wrong_method = raw.get("/v1/chat/completions")
    assert (wrong_method.status_code, wrong_method.headers["allow"]) == (405, "POST")

    bad_json = raw.post("/v1/chat/completions", content=b"{not json")
    assert bad_json.status_code == 400
    assert bad_json.json()["error"]["type"] == "invalid_request_error"

    anthropic_bad = raw.post("/v1/messages", content=b"[]", headers={"x-api-key": KEY})
    assert anthropic_bad.status_code == 400
    assert anthropic_bad.json()["type"] == "error"
    assert anthropic_bad.json()["error"]["type"] == "invalid_request_error"


def test_bad_knob_headers(raw: httpx.Client) -> None:
    for header in (
        {"x-fake-latency": "soon"},
        {"x-fake-status": "42"},
        {"x-fake-chunks": "-1"},
        {"x-fake-typo": "1"},
    ):
        response = raw.post("/v1/chat/completions", json=RAW_CHAT, headers=header)
        assert response.status_code == 400, header


def test_reply_and_latency_headers(raw: httpx.Client) -> None:
    started = time.monotonic()
    response = raw.post(
        "/v1/chat/completions",
        json={**RAW_CHAT, "stream": False},
        headers={"x-fake-latency": "0.3", "x-fake-reply": "Bonjour tout le monde"},
    )
    assert time.monotonic() - started >= 0.3
    body = response.json()
    assert body["choices"][0]["message"]["content"] == "Bonjour tout le monde"
    assert body["usage"]["completion_tokens"] == 4


# -- broken streams -------------------------------------------------------------------------------


def test_truncated_stream_has_no_end(fake: FakeProvider, raw: httpx.Client) -> None:
    body = {**RAW_CHAT, "stream_options": {"include_usage": True}}
    response = raw.post(
        "/v1/chat/completions", json=body, headers={"x-fake-truncate-after-chunks": "2"}
    )

    assert response.status_code == 200
    events = [orjson.loads(p) for p in sse_payloads(response.content)]  # no "[DONE]" to choke on
    assert [e["choices"][0]["delta"].get("content") for e in events] == ["", "Hello", " from"]
    assert all(e["choices"][0]["finish_reason"] is None for e in events)
    assert fake.completed == 1

    anthropic_body = {"model": "c", "max_tokens": 9, "messages": MESSAGES, "stream": True}
    cut = raw.post(
        "/v1/messages",
        json=anthropic_body,
        headers={"x-api-key": KEY, "x-fake-truncate-after-chunks": "1"},
    )
    assert b"content_block_delta" in cut.content
    assert b"message_delta" not in cut.content
    assert b"message_stop" not in cut.content


def test_reset_stream_breaks_the_connection(fake: FakeProvider, raw: httpx.Client) -> None:
    received: list[bytes] = []
    with (
        pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)),
        raw.stream(
            "POST",
            "/v1/chat/completions",
            json=RAW_CHAT,
            headers={"x-fake-reset-after-chunks": "2"},
        ) as response,
    ):
        received.extend(response.iter_raw())

    assert b'"content":" from"' in b"".join(received)
    assert b"[DONE]" not in b"".join(received)
    fake.wait_until(lambda: fake.resets == 1)
    assert fake.completed == 0


def test_reset_in_process_raises() -> None:
    async def scenario() -> None:
        transport = httpx.ASGITransport(app=FakeProvider(reset_after_chunks=0))
        async with httpx.AsyncClient(transport=transport, base_url="http://fake") as client:
            await client.post("/v1/chat/completions", json=RAW_CHAT)

    with pytest.raises(FakeConnectionReset):
        asyncio.run(scenario())


def test_client_disconnect_is_counted_promptly(fake: FakeProvider, raw: httpx.Client) -> None:
    slow = {"x-fake-chunk-delay": "0.5", "x-fake-chunks": "100"}
    with raw.stream("POST", "/v1/chat/completions", json=RAW_CHAT, headers=slow) as response:
        body = response.iter_raw()  # keep a reference: dropping it closes the connection
        assert b'"role":"assistant"' in next(body)
        assert fake.active_streams == 1
        closed_at = time.monotonic()
    fake.wait_until(lambda: fake.disconnects == 1, timeout=1.0)
    assert time.monotonic() - closed_at < 0.4  # well inside the 0.5 s pause
    fake.wait_until(lambda: fake.active_streams == 0)
    assert fake.completed == 0


def test_disconnect_during_latency(fake: FakeProvider, raw: httpx.Client) -> None:
    with pytest.raises(httpx.ReadTimeout):
        raw.post(
            "/v1/chat/completions", json=RAW_CHAT, headers={"x-fake-latency": "5"}, timeout=0.2
        )
    fake.wait_until(lambda: fake.disconnects == 1, timeout=1.0)


# -- observation and serving ----------------------------------------------------------------------


def test_requests_are_recorded_in_order() -> None:
    async def scenario() -> FakeProvider:
        fake = FakeProvider(status=503, max_requests_kept=2)
        transport = httpx.ASGITransport(app=fake)
        async with httpx.AsyncClient(transport=transport, base_url="http://fake") as client:
            for n in range(3):
                response = await client.post(
                    f"/v1/embeddings?n={n}",
                    content=orjson.dumps({"model": "e", "input": f"text {n}"}),
                    headers=[("X-Trace", "a"), ("x-trace", "b"), ("x-fake-status", "200")],
                )
                assert response.status_code == 200
            assert (await client.get("/v1/models")).status_code == 503
        return fake

    fake = asyncio.run(scenario())
    assert [r.query_string for r in fake.requests] == ["n=2", ""]
    request = fake.requests[0]
    assert request.body == b'{"model":"e","input":"text 2"}'
    assert [v for k, v in request.headers if k == "x-trace"] == ["a", "b"]
    assert request.header("X-TRACE") == "a"
    assert request.header("missing") is None
    assert fake.completed == 4
    fake.reset()
    assert (len(fake.requests), fake.completed) == (0, 0)


async def test_serve_async_in_the_current_loop() -> None:
    fake = FakeProvider(chunk_delay=0.2, chunks=50)
    async with serve_async(fake) as running:
        assert running.url == f"http://127.0.0.1:{running.port}"
        client = openai.AsyncOpenAI(base_url=f"{running.url}/v1", api_key="k", max_retries=0)
        async with client:
            stream = await client.chat.completions.create(
                model="m",
                messages=CHAT,
                stream=True,
            )
            async for chunk in stream:
                if chunk.choices[0].delta.content:
                    break
            await stream.close()
        await wait_for(lambda: fake.disconnects == 1, timeout=1.0)
        assert fake.active_streams == 0


def test_configure_changes_later_requests_and_mounting_is_transparent() -> None:
    fake = FakeProvider(reply="one two")

    async def scenario() -> list[httpx.Response]:
        # as when mounted under a prefix: the scope's path keeps it, root_path names it
        transport = httpx.ASGITransport(app=fake, root_path="/upstream")
        async with httpx.AsyncClient(transport=transport, base_url="http://fake") as client:
            body = {**RAW_CHAT, "stream": False}
            first = await client.post("/upstream/v1/chat/completions", json=body)
            fake.configure(reply="three four five", status=None)
            second = await client.post("/upstream/v1/chat/completions", json=body)
            fake.configure(status=503, retry_after=1.5)
            third = await client.post("/upstream/v1/chat/completions", json=body)
            return [first, second, third]

    first, second, third = asyncio.run(scenario())
    assert first.json()["choices"][0]["message"]["content"] == "one two"
    assert second.json()["usage"]["completion_tokens"] == 3
    assert (third.status_code, third.headers["retry-after"]) == (503, "1.5")
    assert [r.path for r in fake.requests] == ["/upstream/v1/chat/completions"] * 3
    with pytest.raises(TypeError, match="colour"):
        fake.configure(colour="red")
    with pytest.raises(ValueError, match="chunk_delay"):
        fake.configure(chunk_delay=-1)


def test_serve_reports_a_failed_startup() -> None:
    async def refuses_to_start(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no database"})

    with pytest.raises(RuntimeError, match="failed to start"), serve(refuses_to_start):
        pass
