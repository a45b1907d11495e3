"""The fake's scripted tool loops and structured output, driven by the real SDKs (openai,
anthropic, google-genai) over real sockets, plain and streamed, with no gateway in between.

Turn one: the request offers tools, so the fake calls one (or two); turn two: the SDK sends the
tool results back in its own format, and the fake answers text quoting them. A conversation whose
results do not match its calls is refused as the real provider refuses it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from asgi_llmguard.testing import FakeProvider, RunningServer, serve
from asgi_llmguard.testing._tools import ARGUMENT_PIECE, example

KEY = "sk-fake-tools"
AUTO = {"x-fake-tool-call": "auto"}
PARALLEL = {**AUTO, "x-fake-parallel-tool-calls": "true"}
WEATHER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "description": "where"},
        "days": {"type": "integer", "minimum": 2},
        "units": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "verbose": {"type": "boolean"},
    },
    "required": ["city", "days", "units"],
}
WEATHER_ARGS = {"city": "city", "days": 2, "units": "celsius"}
TIME_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"zone": {"type": "string"}},
    "required": ["zone"],
}
TIME_ARGS = {"zone": "zone"}
CALLS: list[tuple[str, dict[str, Any]]] = [("get_weather", WEATHER_ARGS), ("get_time", TIME_ARGS)]


def pieces(arguments: dict[str, Any]) -> int:
    """Output tokens of a call: its compact JSON arguments in pieces of ARGUMENT_PIECE chars."""
    text = json.dumps(arguments, separators=(",", ":"))
    return -(-len(text) // ARGUMENT_PIECE)


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
def gemini(upstream: RunningServer) -> genai.Client:
    return genai.Client(
        api_key=KEY,
        http_options=types.HttpOptions(
            base_url=upstream.url, retry_options=types.HttpRetryOptions(attempts=1)
        ),
    )


# -- schemas --------------------------------------------------------------------------------------


def test_arguments_are_built_from_the_schema() -> None:
    assert example(WEATHER_SCHEMA) == WEATHER_ARGS
    nested = {
        "type": "object",
        "properties": {
            "where": {"$ref": "#/$defs/place"},
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
            "score": {"anyOf": [{"type": "null"}, {"type": "number"}]},
            "kind": {"const": "fixed"},
        },
        "required": ["where", "tags", "score", "kind"],
        "$defs": {"place": {"type": "OBJECT", "properties": {"lat": {"type": "NUMBER"}}}},
    }
    assert example(nested) == {"where": {}, "tags": ["tags", "tags"], "score": 1, "kind": "fixed"}
    assert example(nested, every=True)["where"] == {"lat": 1}


# -- OpenAI chat ----------------------------------------------------------------------------------

CHAT_TOOLS: Any = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_SCHEMA}},
    {"type": "function", "function": {"name": "get_time", "parameters": TIME_SCHEMA}},
]
ASK: Any = [{"role": "user", "content": "weather in Paris?"}]


def _chat_turn(oai: openai.OpenAI, messages: Any, streamed: bool, headers: dict[str, str]) -> Any:
    if not streamed:
        return oai.chat.completions.create(
            model="gpt-4o-mini", messages=messages, tools=CHAT_TOOLS, extra_headers=headers
        )
    with oai.chat.completions.stream(
        model="gpt-4o-mini",
        messages=messages,
        tools=CHAT_TOOLS,
        stream_options={"include_usage": True},
        extra_headers=headers,
    ) as stream:
        argument_deltas = [e for e in stream if e.type == "tool_calls.function.arguments.delta"]
        final = stream.get_final_completion()
    if final.choices[0].message.tool_calls:
        assert len(argument_deltas) > 1, "arguments came in one piece"
    return final


@pytest.mark.parametrize("streamed", [False, True], ids=["plain", "stream"])
def test_chat_tool_loop(oai: openai.OpenAI, fake: FakeProvider, streamed: bool) -> None:
    first = _chat_turn(oai, ASK, streamed, AUTO)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == WEATHER_ARGS
    assert call.id.startswith("call_")
    assert first.usage.completion_tokens == pieces(WEATHER_ARGS)

    history = [
        *ASK,
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "22 degrees and sunny"},
    ]
    second = _chat_turn(oai, history, streamed, AUTO)
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == "Tool result: 22 degrees and sunny"
    assert second.usage.completion_tokens == 6
    sent = fake.requests[-1].json()
    assert sent["messages"][2]["tool_call_id"] == call.id
    # The same conversation gets the same call id: the script is deterministic.
    again = _chat_turn(oai, ASK, streamed, AUTO)
    assert again.choices[0].message.tool_calls[0].id == call.id


@pytest.mark.parametrize("streamed", [False, True], ids=["plain", "stream"])
def test_chat_parallel_calls(oai: openai.OpenAI, streamed: bool) -> None:
    first = _chat_turn(oai, ASK, streamed, PARALLEL)
    calls = first.choices[0].message.tool_calls
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]
    assert [json.loads(c.function.arguments) for c in calls] == [WEATHER_ARGS, TIME_ARGS]
    assert len({c.id for c in calls}) == 2
    assert first.usage.completion_tokens == pieces(WEATHER_ARGS) + pieces(TIME_ARGS)
    history = [
        *ASK,
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": calls[0].id, "content": "sunny"},
        {"role": "tool", "tool_call_id": calls[1].id, "content": "noon"},
    ]
    second = _chat_turn(oai, history, streamed, PARALLEL)
    assert second.choices[0].message.content == "Tool result: sunny | noon"


def test_chat_named_tool_twice_with_given_arguments(oai: openai.OpenAI) -> None:
    headers = {
        "x-fake-tool-call": "get_time",
        "x-fake-parallel-tool-calls": "true",
        "x-fake-tool-arguments": '{"zone": "UTC"}',
    }
    out = _chat_turn(oai, ASK, False, headers)
    calls = out.choices[0].message.tool_calls
    assert [(c.function.name, c.function.arguments) for c in calls] == [
        ("get_time", '{"zone":"UTC"}')
    ] * 2
    assert calls[0].id != calls[1].id


def test_a_request_that_turns_parallel_calls_off_gets_one_call(
    oai: openai.OpenAI, claude: anthropic.Anthropic
) -> None:
    chat = oai.chat.completions.create(
        model="gpt-4o-mini",
        messages=ASK,
        tools=CHAT_TOOLS,
        parallel_tool_calls=False,
        extra_headers=PARALLEL,
    )
    assert len(chat.choices[0].message.tool_calls or []) == 1
    responses = oai.responses.create(
        model="gpt-4o-mini",
        input="weather?",
        tools=RESPONSES_TOOLS,
        parallel_tool_calls=False,
        extra_headers=PARALLEL,
    )
    assert len(responses.output) == 1
    message = claude.messages.create(
        model="claude-haiku-4-5",
        max_tokens=100,
        messages=CLAUDE_ASK,
        tools=CLAUDE_TOOLS,
        tool_choice={"type": "auto", "disable_parallel_tool_use": True},
        extra_headers=PARALLEL,
    )
    assert [b.type for b in message.content] == ["tool_use"]


def test_chat_without_the_knob_or_with_tool_choice_none_answers_text(oai: openai.OpenAI) -> None:
    plain = _chat_turn(oai, ASK, False, {})
    assert plain.choices[0].message.content == "Hello from the fake provider."
    none = oai.chat.completions.create(
        model="gpt-4o-mini", messages=ASK, tools=CHAT_TOOLS, tool_choice="none", extra_headers=AUTO
    )
    assert none.choices[0].finish_reason == "stop"


def test_chat_refuses_unmatched_tool_messages(oai: openai.OpenAI) -> None:
    first = _chat_turn(oai, ASK, False, AUTO)
    assistant = first.choices[0].message.model_dump(exclude_none=True)
    wrong_id = [*ASK, assistant, {"role": "tool", "tool_call_id": "call_nope", "content": "x"}]
    with pytest.raises(openai.BadRequestError) as wrong:
        _chat_turn(oai, wrong_id, False, AUTO)
    assert "call_nope" in wrong.value.message
    assert wrong.value.body["param"] == "messages.[2].tool_call_id"  # type: ignore[index]
    unanswered = [*ASK, assistant, {"role": "user", "content": "and?"}]
    with pytest.raises(openai.BadRequestError, match="did not have response messages"):
        _chat_turn(oai, unanswered, False, AUTO)
    orphan = [*ASK, {"role": "tool", "tool_call_id": "call_x", "content": "x"}]
    with pytest.raises(openai.BadRequestError, match="must be a response to a preceeding"):
        _chat_turn(oai, orphan, False, AUTO)


# -- OpenAI Responses -----------------------------------------------------------------------------

RESPONSES_TOOLS: Any = [
    {"type": "function", "name": "get_weather", "parameters": WEATHER_SCHEMA, "strict": False},
    {"type": "function", "name": "get_time", "parameters": TIME_SCHEMA, "strict": False},
]


def _responses_turn(oai: openai.OpenAI, items: Any, streamed: bool, headers: Any) -> Any:
    if not streamed:
        return oai.responses.create(
            model="gpt-4o-mini", input=items, tools=RESPONSES_TOOLS, extra_headers=headers
        )
    with oai.responses.stream(
        model="gpt-4o-mini", input=items, tools=RESPONSES_TOOLS, extra_headers=headers
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    if any(item.type == "function_call" for item in final.output):
        assert kinds.count("response.function_call_arguments.delta") > 1
        assert "response.function_call_arguments.done" in kinds
    return final


@pytest.mark.parametrize("streamed", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("parallel", [False, True], ids=["one", "parallel"])
def test_responses_tool_loop(oai: openai.OpenAI, streamed: bool, parallel: bool) -> None:
    ask = [{"role": "user", "content": "weather in Paris?"}]
    first = _responses_turn(oai, ask, streamed, PARALLEL if parallel else AUTO)
    calls = [item for item in first.output if item.type == "function_call"]
    expected = CALLS[: 2 if parallel else 1]
    assert [(c.name, json.loads(c.arguments)) for c in calls] == expected
    assert all(c.call_id.startswith("call_") and c.status == "completed" for c in calls)
    assert first.usage.output_tokens == sum(pieces(args) for _, args in expected)
    outputs = [
        {"type": "function_call_output", "call_id": c.call_id, "output": f"out{n}"}
        for n, c in enumerate(calls)
    ]
    items = [*ask, *(c.model_dump(exclude_none=True) for c in calls), *outputs]
    second = _responses_turn(oai, items, streamed, AUTO)
    assert second.output_text == "Tool result: " + " | ".join(f"out{n}" for n in range(len(calls)))


def test_responses_refuses_an_output_without_its_call(oai: openai.OpenAI) -> None:
    items = [
        {"role": "user", "content": "hi"},
        {"type": "function_call_output", "call_id": "call_missing", "output": "x"},
    ]
    with pytest.raises(openai.BadRequestError, match=r"No tool call found .* call_missing"):
        _responses_turn(oai, items, False, AUTO)
    dangling = [
        {"role": "user", "content": "hi"},
        {"type": "function_call", "call_id": "call_a", "name": "get_time", "arguments": "{}"},
    ]
    with pytest.raises(openai.BadRequestError, match="No tool output found for function call"):
        _responses_turn(oai, dangling, False, AUTO)


# -- Anthropic ------------------------------------------------------------------------------------

CLAUDE_TOOLS: Any = [
    {"name": "get_weather", "description": "weather", "input_schema": WEATHER_SCHEMA},
    {"name": "get_time", "description": "time", "input_schema": TIME_SCHEMA},
]
CLAUDE_ASK: Any = [{"role": "user", "content": "weather in Paris?"}]


def _claude_turn(
    claude: anthropic.Anthropic, messages: Any, streamed: bool, headers: dict[str, str]
) -> Any:
    options: Any = {
        "model": "claude-haiku-4-5",
        "max_tokens": 200,
        "messages": messages,
        "tools": CLAUDE_TOOLS,
        "extra_headers": headers,
    }
    if not streamed:
        return claude.messages.create(**options)
    with claude.messages.stream(**options) as stream:
        kinds = [(e.type, getattr(getattr(e, "delta", None), "type", None)) for e in stream]
        final = stream.get_final_message()
    if final.stop_reason == "tool_use":
        assert kinds.count(("content_block_delta", "input_json_delta")) > 1
    return final


@pytest.mark.parametrize("streamed", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("parallel", [False, True], ids=["one", "parallel"])
def test_anthropic_tool_loop(
    claude: anthropic.Anthropic, fake: FakeProvider, streamed: bool, parallel: bool
) -> None:
    first = _claude_turn(claude, CLAUDE_ASK, streamed, PARALLEL if parallel else AUTO)
    assert first.stop_reason == "tool_use"
    expected = CALLS[: 2 if parallel else 1]
    assert [(b.type, b.name, b.input) for b in first.content] == [
        ("tool_use", name, args) for name, args in expected
    ]
    assert all(b.id.startswith("toolu_") for b in first.content)
    assert first.usage.output_tokens == sum(pieces(args) for _, args in expected)
    results = [
        {"type": "tool_result", "tool_use_id": b.id, "content": [{"type": "text", "text": f"r{n}"}]}
        for n, b in enumerate(first.content)
    ]
    history = [
        *CLAUDE_ASK,
        {"role": "assistant", "content": [b.model_dump() for b in first.content]},
        {"role": "user", "content": results},
    ]
    second = _claude_turn(claude, history, streamed, AUTO)
    assert second.stop_reason == "end_turn"
    quoted = " | ".join(f"r{n}" for n in range(len(expected)))
    assert second.content[0].text == f"Tool result: {quoted}"
    assert (
        fake.requests[-1].json()["messages"][2]["content"][0]["tool_use_id"] == first.content[0].id
    )


def test_anthropic_refuses_mismatched_tool_results(claude: anthropic.Anthropic) -> None:
    first = _claude_turn(claude, CLAUDE_ASK, False, AUTO)
    assistant = {"role": "assistant", "content": [b.model_dump() for b in first.content]}
    wrong = [
        *CLAUDE_ASK,
        assistant,
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_x"}]},
    ]
    with pytest.raises(anthropic.BadRequestError) as refused:
        _claude_turn(claude, wrong, False, AUTO)
    assert refused.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert "unexpected `tool_use_id`" in str(refused.value)
    missing = [*CLAUDE_ASK, assistant, {"role": "user", "content": "go on"}]
    with pytest.raises(anthropic.BadRequestError, match="without `tool_result` blocks"):
        _claude_turn(claude, missing, False, AUTO)


# -- Gemini ---------------------------------------------------------------------------------------

GEMINI_TOOLS = [
    types.Tool(
        function_declarations=[
            types.FunctionDeclaration(name="get_weather", parameters_json_schema=WEATHER_SCHEMA),
            types.FunctionDeclaration(
                name="get_time",
                parameters=types.Schema(
                    type=types.Type.OBJECT,
                    properties={"zone": types.Schema(type=types.Type.STRING)},
                    required=["zone"],
                ),
            ),
        ]
    )
]


def _gemini_turn(
    client: genai.Client,
    contents: Any,
    streamed: bool,
    headers: dict[str, str],
    model: str = "gemini-2.5-flash",
) -> types.GenerateContentResponse:
    config = types.GenerateContentConfig(
        tools=GEMINI_TOOLS,  # type: ignore[arg-type]
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
        http_options=types.HttpOptions(headers=headers),
    )
    if not streamed:
        return client.models.generate_content(model=model, contents=contents, config=config)
    chunks = list(
        client.models.generate_content_stream(model=model, contents=contents, config=config)
    )
    parts = [p for c in chunks for p in (c.candidates[0].content.parts or [])]  # type: ignore[index,union-attr]
    last = chunks[-1]
    last.candidates[0].content.parts = parts  # type: ignore[index,union-attr]
    return last


@pytest.mark.parametrize("streamed", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("parallel", [False, True], ids=["one", "parallel"])
def test_gemini_tool_loop(gemini: genai.Client, streamed: bool, parallel: bool) -> None:
    ask = [types.Content(role="user", parts=[types.Part(text="weather in Paris?")])]
    first = _gemini_turn(gemini, ask, streamed, PARALLEL if parallel else AUTO)
    calls = first.function_calls or []
    expected = CALLS[: 2 if parallel else 1]
    assert [(c.name, c.args) for c in calls] == expected
    assert first.usage_metadata is not None
    assert first.usage_metadata.candidates_token_count == sum(pieces(a) for _, a in expected)
    history = [
        *ask,
        first.candidates[0].content,  # type: ignore[index]
        types.Content(
            role="user",
            parts=[
                types.Part.from_function_response(name=c.name or "", response={"result": f"g{n}"})
                for n, c in enumerate(calls)
            ],
        ),
    ]
    second = _gemini_turn(gemini, history, streamed, AUTO)
    quoted = " | ".join(f"g{n}" for n in range(len(expected)))
    assert second.text == f"Tool result: {quoted}"


@pytest.mark.parametrize("streamed", [False, True], ids=["plain", "stream"])
def test_gemini_3_signs_its_calls_and_wants_the_signature_back(
    gemini: genai.Client, streamed: bool
) -> None:
    model = "gemini-3-flash-preview"
    ask = [types.Content(role="user", parts=[types.Part(text="weather?")])]
    first = _gemini_turn(gemini, ask, streamed, PARALLEL, model)
    parts = first.candidates[0].content.parts  # type: ignore[index,union-attr]
    assert parts is not None
    assert [bool(p.thought_signature) for p in parts] == [True, False]  # the first call only

    def history(model_turn: types.Content) -> list[types.Content]:
        answers = [
            types.Part.from_function_response(name=p.function_call.name or "", response={"r": "x"})  # type: ignore[union-attr]
            for p in parts
        ]
        return [*ask, model_turn, types.Content(role="user", parts=answers)]

    replayed = _gemini_turn(gemini, history(first.candidates[0].content), streamed, AUTO, model)  # type: ignore[index,arg-type]
    assert replayed.text == "Tool result: x | x"
    stripped = types.Content(
        role="model", parts=[types.Part(function_call=p.function_call) for p in parts]
    )
    with pytest.raises(genai_errors.ClientError) as refused:
        _gemini_turn(gemini, history(stripped), streamed, AUTO, model)
    assert refused.value.code == 400
    assert "missing a thought_signature" in str(refused.value)
    # Gemini 2.5 neither signs nor asks.
    assert _gemini_turn(gemini, history(stripped), streamed, AUTO).text == "Tool result: x | x"


def test_gemini_refuses_a_response_turn_without_its_calls(gemini: genai.Client) -> None:
    first = _gemini_turn(gemini, "weather?", False, PARALLEL)
    one_answer = [
        types.Content(role="user", parts=[types.Part(text="weather?")]),
        first.candidates[0].content,  # type: ignore[index]
        types.Content(
            role="user",
            parts=[types.Part.from_function_response(name="get_weather", response={"r": "x"})],
        ),
    ]
    with pytest.raises(genai_errors.ClientError) as refused:
        _gemini_turn(gemini, one_answer, False, AUTO)
    assert refused.value.code == 400
    assert "number of function response parts" in str(refused.value)


# -- structured output ----------------------------------------------------------------------------

ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "temperature": {"type": "number"},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["city", "temperature", "tags"],
    "additionalProperties": False,
}
ANSWER = {"city": "city", "temperature": 1, "tags": ["tags"]}
STRUCTURED = {"x-fake-structured-output": "true"}


@pytest.mark.parametrize("streamed", [False, True], ids=["plain", "stream"])
def test_structured_output_in_every_format(
    oai: openai.OpenAI,
    gemini: genai.Client,
    upstream: RunningServer,
    streamed: bool,
) -> None:
    fmt: Any = {"type": "json_schema", "json_schema": {"name": "answer", "schema": ANSWER_SCHEMA}}
    if streamed:
        with oai.chat.completions.stream(
            model="gpt-4o-mini", messages=ASK, response_format=fmt, extra_headers=STRUCTURED
        ) as stream:
            chat_text = stream.get_final_completion().choices[0].message.content
    else:
        chat_text = (
            oai.chat.completions.create(
                model="gpt-4o-mini", messages=ASK, response_format=fmt, extra_headers=STRUCTURED
            )
            .choices[0]
            .message.content
        )
    assert json.loads(chat_text or "") == ANSWER

    text: Any = {"format": {"type": "json_schema", "name": "answer", "schema": ANSWER_SCHEMA}}
    out = oai.responses.create(
        model="gpt-4o-mini", input="weather?", text=text, extra_headers=STRUCTURED
    )
    assert json.loads(out.output_text) == ANSWER

    body = {
        "model": "claude-haiku-4-5",
        "max_tokens": 100,
        "messages": CLAUDE_ASK,
        "output_format": {"type": "json_schema", "schema": ANSWER_SCHEMA},
    }
    answer = httpx.post(
        f"{upstream.url}/v1/messages", json=body, headers={"x-api-key": KEY, **STRUCTURED}
    ).json()
    assert json.loads(answer["content"][0]["text"]) == ANSWER

    config = types.GenerateContentConfig(
        response_mime_type="application/json",
        response_schema=types.Schema(
            type=types.Type.OBJECT,
            properties={
                "city": types.Schema(type=types.Type.STRING),
                "temperature": types.Schema(type=types.Type.NUMBER),
                "tags": types.Schema(
                    type=types.Type.ARRAY, items=types.Schema(type=types.Type.STRING)
                ),
            },
            required=["city", "temperature", "tags"],
        ),
        http_options=types.HttpOptions(headers=STRUCTURED),
    )
    if streamed:
        gemini_text = "".join(
            c.text or ""
            for c in gemini.models.generate_content_stream(
                model="gemini-2.5-flash", contents="weather?", config=config
            )
        )
    else:
        gemini_text = (
            gemini.models.generate_content(
                model="gemini-2.5-flash", contents="weather?", config=config
            ).text
            or ""
        )
    assert json.loads(gemini_text) == ANSWER


def test_bad_tool_knobs(upstream: RunningServer) -> None:
    with pytest.raises(ValueError, match="tool_arguments"):
        FakeProvider(tool_arguments="[1]")
    with pytest.raises(ValueError, match="tool_call"):
        FakeProvider(tool_call="")
    answer = httpx.post(
        f"{upstream.url}/v1/chat/completions",
        json={"model": "m", "messages": ASK},
        headers={"authorization": f"Bearer {KEY}", "x-fake-tool-arguments": "not json"},
    )
    assert answer.status_code == 400
    assert "tool_arguments" in answer.json()["error"]["message"]
