"""The translation layer between the real SDKs and the gateway's fake providers over real
sockets: the fakes are written from the documented wire formats independently of this code.

The client side is the official SDK; its transport translates each request, sends it to the fake
upstream of the other format, and translates the upstream's answer or stream back chunk by chunk
as it arrives.
"""

from __future__ import annotations

import urllib.parse

import anthropic
import httpx
import httpx2
import openai
import pytest
from google import genai
from google.genai import types

from asgi_llmguard.providers.eventstream import FrameSplitter, decode_frame
from asgi_llmguard.providers.translate import anthropic_messages as an
from asgi_llmguard.providers.translate import bedrock_converse as bc
from asgi_llmguard.providers.translate import gemini_generate as gm
from asgi_llmguard.providers.translate import openai_chat as oa
from asgi_llmguard.providers.translate import openai_responses as rs
from asgi_llmguard.testing import FakeBedrock, FakeProvider, serve

REPLY = "Translated across formats, word by word."


@pytest.fixture(scope="module")
def fake():
    provider = FakeProvider(api_key="sk-up", reply=REPLY, cache_write_5m=30)
    with serve(provider) as upstream:
        yield provider, upstream.url


def _relay(url: str, headers: dict[str, str], body: dict, stream: bool, decoder, encoder) -> bytes:
    """Send ``body`` upstream; the answer translated, a stream one upstream chunk at a time."""
    with httpx.Client(timeout=10) as http:
        if not stream:
            answer = http.post(url, json=body, headers=headers)
            assert answer.status_code == 200, answer.text
            return decoder(answer.content)
        out = []
        with http.stream("POST", url, json=body, headers=headers) as answer:
            assert answer.status_code == 200
            for chunk in answer.iter_raw():
                out.append(encoder.encode_many(decoder.feed(chunk)))
        out.append(encoder.encode_many(decoder.close()))
        return b"".join(out)


def test_an_anthropic_client_on_a_chat_upstream(fake):
    provider, base = fake

    def transport(request: httpx2.Request) -> httpx2.Response:
        turn = an.read_request(request.content)
        body, dropped = oa.write_request(turn)
        assert dropped == []
        headers = {"authorization": "Bearer sk-up"}
        if turn.stream:
            data = _relay(
                f"{base}/v1/chat/completions",
                headers,
                body,
                True,
                oa.StreamDecoder(),
                an.StreamEncoder(),
            )
            return httpx2.Response(200, content=data, headers={"content-type": "text/event-stream"})
        data = _relay(
            f"{base}/v1/chat/completions",
            headers,
            body,
            False,
            lambda b: an.write_answer(oa.read_answer(b)),
            None,
        )
        return httpx2.Response(200, content=data, headers={"content-type": "application/json"})

    client = anthropic.Anthropic(
        api_key="k", base_url="http://gateway", max_retries=0,
        http_client=httpx2.Client(transport=httpx2.MockTransport(transport)),
    )  # fmt: skip
    question = {
        "model": "gpt-4o",
        "max_tokens": 200,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "Say it"}],
    }
    with client.messages.stream(**question) as stream:
        streamed = stream.get_final_message()
    whole = client.messages.create(**question)
    for message in (streamed, whole):
        assert "".join(b.text for b in message.content) == REPLY
        assert message.stop_reason == "end_turn"
        assert message.usage.output_tokens > 0
        assert message.usage.input_tokens > 0
    sent = provider.requests[-2].json()
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
    assert sent["max_completion_tokens"] == 200
    assert sent["stream_options"] == {"include_usage": True}


def test_an_openai_client_on_a_messages_upstream(fake):
    provider, base = fake

    def transport(request: httpx.Request) -> httpx.Response:
        turn = oa.read_request(request.content)
        body, dropped = an.write_request(turn)
        assert dropped == []
        headers = {"x-api-key": "sk-up", "anthropic-version": "2023-06-01"}
        if turn.stream:
            encoder = oa.StreamEncoder(include_usage=True)
            data = _relay(f"{base}/v1/messages", headers, body, True, an.StreamDecoder(), encoder)
            return httpx.Response(200, content=data, headers={"content-type": "text/event-stream"})
        data = _relay(
            f"{base}/v1/messages",
            headers,
            body,
            False,
            lambda b: oa.write_answer(an.read_answer(b)),
            None,
        )
        return httpx.Response(200, content=data, headers={"content-type": "application/json"})

    client = openai.OpenAI(
        api_key="k", base_url="http://gateway/v1", max_retries=0,
        http_client=httpx.Client(transport=httpx.MockTransport(transport)),
    )  # fmt: skip
    question = {
        "model": "claude-x",
        "messages": [
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": "Say it"},
        ],
    }
    with client.chat.completions.stream(
        **question, stream_options={"include_usage": True}
    ) as stream:
        streamed = stream.get_final_completion()
    whole = client.chat.completions.create(**question)
    for completion in (streamed, whole):
        assert completion.choices[0].message.content == REPLY
        assert completion.choices[0].finish_reason == "stop"
        # The fake wrote 30 tokens to the cache: part of OpenAI's prompt_tokens.
        assert completion.usage.prompt_tokens > 30
        assert completion.usage.prompt_tokens_details.cache_write_tokens == 30
        assert completion.usage.prompt_tokens_details.cached_tokens == 0
        assert completion.usage.completion_tokens > 0
    sent = provider.requests[-2].json()
    assert sent["system"] == "Be brief."
    assert sent["max_tokens"] == an.DEFAULT_MAX_TOKENS


def test_a_responses_client_on_a_gemini_upstream(fake):
    provider, base = fake

    def transport(request: httpx.Request) -> httpx.Response:
        turn = rs.read_request(request.content)
        body, dropped = gm.write_request(turn)
        assert dropped == []
        headers = {"x-goog-api-key": "sk-up"}
        url = f"{base}/v1beta/models/{turn.model}"
        if turn.stream:
            encoder = rs.StreamEncoder()
            url += ":streamGenerateContent?alt=sse"
            data = _relay(url, headers, body, True, gm.StreamDecoder(), encoder)
            return httpx.Response(200, content=data, headers={"content-type": "text/event-stream"})
        data = _relay(
            url + ":generateContent",
            headers,
            body,
            False,
            lambda b: rs.write_answer(gm.read_answer(b)),
            None,
        )
        return httpx.Response(200, content=data, headers={"content-type": "application/json"})

    client = openai.OpenAI(
        api_key="k", base_url="http://gateway/v1", max_retries=0,
        http_client=httpx.Client(transport=httpx.MockTransport(transport)),
    )  # fmt: skip
    question = {
        "model": "gemini-2.5-flash",
        "instructions": "Be brief.",
        "input": "Say it",
        "max_output_tokens": 300,
        "store": False,
    }
    with client.responses.stream(**question) as stream:
        streamed = stream.get_final_response()
    whole = client.responses.create(**question)
    for response in (streamed, whole):
        assert response.output_text == REPLY
        assert response.status == "completed"
        assert response.usage.input_tokens > 0
        assert response.usage.output_tokens > 0
    sent = provider.requests[-2].json()
    assert sent["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert sent["generationConfig"] == {"maxOutputTokens": 300}


def test_an_anthropic_client_tool_loop_on_a_gemini_3_upstream_keeps_signatures():
    # Gemini 3 refuses a function call sent back without the thought signature it came with, and
    # a function response without the function's name: the tool loop must carry both across.
    provider = FakeProvider(api_key="sk-up", reply=REPLY, tool_call="auto")

    def transport(request: httpx2.Request) -> httpx2.Response:
        turn = an.read_request(request.content)
        body, dropped = gm.write_request(turn)
        assert dropped == []
        url = f"{base}/v1beta/models/{turn.model}:streamGenerateContent?alt=sse"
        headers = {"x-goog-api-key": "sk-up"}
        data = _relay(url, headers, body, True, gm.StreamDecoder(), an.StreamEncoder())
        return httpx2.Response(200, content=data, headers={"content-type": "text/event-stream"})

    client = anthropic.Anthropic(
        api_key="k", base_url="http://gateway", max_retries=0,
        http_client=httpx2.Client(transport=httpx2.MockTransport(transport)),
    )  # fmt: skip
    tools = [
        {
            "name": "get_weather",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    ]
    messages: list = [{"role": "user", "content": "Weather in Paris?"}]
    with serve(provider) as upstream:
        base = upstream.url
        with client.messages.stream(
            model="gemini-3-pro-preview", max_tokens=500, messages=messages, tools=tools
        ) as stream:
            first = stream.get_final_message()
        assert first.stop_reason == "tool_use"
        kinds = [b.type for b in first.content]
        assert kinds == ["thinking", "tool_use"]
        assert first.content[0].signature
        call = first.content[1]
        said = [b.model_dump(exclude_none=True) for b in first.content]
        result = {"type": "tool_result", "tool_use_id": call.id, "content": "18C, sunny"}
        messages += [
            {"role": "assistant", "content": said},
            {"role": "user", "content": [result]},
        ]
        with client.messages.stream(
            model="gemini-3-pro-preview", max_tokens=500, messages=messages, tools=tools
        ) as stream:
            second = stream.get_final_message()
    assert second.stop_reason == "end_turn"
    assert "18C, sunny" in "".join(b.text for b in second.content if b.type == "text")
    sent = provider.requests[-1].json()["contents"]
    assert sent[1]["parts"][0]["thoughtSignature"] == first.content[0].signature
    assert sent[2]["parts"][0]["functionResponse"]["name"] == "get_weather"


def test_an_openai_client_on_a_converse_stream_upstream():
    # The gateway's event-stream framing splits the fake Bedrock's binary frames; the codec
    # takes each frame's event type and payload.
    bedrock = FakeBedrock(api_key="bedrock-key", reply=REPLY, cached_tokens=4)
    model = "anthropic.claude-3-5-haiku-20241022-v1:0"

    def transport(request: httpx.Request) -> httpx.Response:
        turn = oa.read_request(request.content)
        body, dropped = bc.write_request(turn)
        assert dropped == []
        path = urllib.parse.quote(turn.model, safe="")
        headers = {"authorization": "Bearer bedrock-key"}
        splitter, decoder = FrameSplitter(), bc.StreamDecoder(id="req-1", model=turn.model)
        encoder = oa.StreamEncoder(include_usage=True)
        out = []
        with (
            httpx.Client(timeout=10) as http,
            http.stream(
                "POST", f"{base}/model/{path}/converse-stream", json=body, headers=headers
            ) as answer,
        ):
            assert answer.status_code == 200
            for chunk in answer.iter_raw():
                for raw in splitter.feed(chunk):
                    frame = decode_frame(raw)
                    assert frame is not None
                    kind = frame.error_type if frame.is_error else frame.event_type
                    out.append(encoder.encode_many(decoder.feed_event(kind, frame.payload)))
        out.append(encoder.encode_many(decoder.close()))
        return httpx.Response(
            200, content=b"".join(out), headers={"content-type": "text/event-stream"}
        )

    client = openai.OpenAI(
        api_key="k", base_url="http://gateway/v1", max_retries=0,
        http_client=httpx.Client(transport=httpx.MockTransport(transport)),
    )  # fmt: skip
    with serve(bedrock) as upstream:
        base = upstream.url
        with client.chat.completions.stream(
            model=model,
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Say it"},
            ],
            max_completion_tokens=100,
            stream_options={"include_usage": True},
        ) as stream:
            completion = stream.get_final_completion()
    assert completion.id == "req-1"
    assert completion.choices[0].message.content == REPLY
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.prompt_tokens_details.cached_tokens == 4
    assert completion.usage.prompt_tokens > 4
    sent = bedrock.requests[-1].json()
    assert sent["system"] == [{"text": "Be brief."}]
    assert sent["inferenceConfig"] == {"maxTokens": 100}


def test_a_google_genai_client_on_a_chat_upstream(fake):
    # The Gemini codec in reverse: it reads what the google-genai SDK sends and writes the
    # answers and streams the SDK reads.
    provider, base = fake

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        model, _, method = scope["path"].rpartition("/")[2].partition(":")
        turn = gm.read_request(body, model=model, stream=method == "streamGenerateContent")
        chat, dropped = oa.write_request(turn)
        assert dropped == []
        headers = {"authorization": "Bearer sk-up"}
        if turn.stream:
            encoder = gm.StreamEncoder()
            url = f"{base}/v1/chat/completions"
            async with (
                httpx.AsyncClient(timeout=10) as http,
                http.stream("POST", url, json=chat, headers=headers) as answer,
            ):
                start = {"type": "http.response.start", "status": 200, "headers": []}
                await send(start | {"headers": [(b"content-type", b"text/event-stream")]})
                decoder = oa.StreamDecoder()
                async for chunk in answer.aiter_raw():
                    out = encoder.encode_many(decoder.feed(chunk))
                    await send({"type": "http.response.body", "body": out, "more_body": True})
            out = encoder.encode_many(decoder.close())
            await send({"type": "http.response.body", "body": out})
            return
        async with httpx.AsyncClient(timeout=10) as http:
            answer = await http.post(f"{base}/v1/chat/completions", json=chat, headers=headers)
        content = gm.write_answer(oa.read_answer(answer.content))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": content})

    with serve(app) as gateway:
        client = genai.Client(api_key="k", http_options=types.HttpOptions(base_url=gateway.url))
        config = types.GenerateContentConfig(system_instruction="Be brief.", max_output_tokens=90)
        pieces = list(
            client.models.generate_content_stream(model="gpt-4o", contents="Say it", config=config)
        )
        whole = client.models.generate_content(model="gpt-4o", contents="Say it", config=config)
    assert "".join(p.text or "" for p in pieces) == REPLY
    assert pieces[-1].candidates[0].finish_reason == types.FinishReason.STOP
    assert pieces[-1].usage_metadata.candidates_token_count > 0
    assert whole.text == REPLY
    assert whole.usage_metadata.prompt_token_count > 0
    sent = provider.requests[-1].json()
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
    assert sent["max_completion_tokens"] == 90
