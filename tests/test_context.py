import os

import pytest

from asgi_llmguard.context import (
    SCOPE_KEY,
    ClientDisconnected,
    InvalidBody,
    RequestContext,
    get_context,
    read_body,
    replay_receive,
    route_path,
)


def _scope(path="/v1/chat/completions", root_path="", method="POST"):
    return {"type": "http", "method": method, "path": path, "root_path": root_path, "headers": []}


def _receiver(*messages):
    queue = list(messages)

    async def receive():
        return queue.pop(0)

    return receive


def test_route_path_strips_the_mount_prefix():
    assert route_path(_scope("/llm/v1/chat/completions", "/llm")) == "/v1/chat/completions"
    assert route_path(_scope("/v1/chat/completions", "")) == "/v1/chat/completions"
    # A root_path the path does not start with is left alone (some servers set it differently).
    assert route_path(_scope("/v1/models", "/other")) == "/v1/models"


def test_get_context_creates_once_and_stores_in_scope():
    scope = _scope("/llm/v1/chat/completions", "/llm")
    ctx = get_context(scope)
    assert scope[SCOPE_KEY] is ctx
    assert get_context(scope) is ctx
    assert ctx.route is not None
    assert ctx.route.endpoint.operation == "chat.completions"
    assert ctx.request_id.startswith("req_")
    assert get_context(_scope()).request_id != ctx.request_id


def test_unknown_route_is_recorded_not_raised():
    ctx = RequestContext("POST", "/v1/nope")
    assert ctx.route is None
    assert ctx.route_error is not None


async def test_read_body_joins_chunks_once_and_replays():
    ctx = RequestContext("POST", "/v1/chat/completions")
    receive = _receiver(
        {"type": "http.request", "body": b'{"model": "gpt', "more_body": True},
        {"type": "http.request", "body": b'-4o", "stream": true}', "more_body": False},
    )
    body = await read_body(ctx, receive)
    assert body == b'{"model": "gpt-4o", "stream": true}'
    assert await read_body(ctx, receive) is body  # not read twice
    fields = ctx.fields()
    assert (fields.model, fields.stream) == ("gpt-4o", True)
    assert ctx.fields() is fields  # decoded once
    replay = replay_receive(ctx, _receiver({"type": "http.disconnect"}))
    assert (await replay())["body"] == body
    assert (await replay())["type"] == "http.disconnect"


async def test_disconnect_while_reading_body():
    ctx = RequestContext("POST", "/v1/chat/completions")
    receive = _receiver(
        {"type": "http.request", "body": b"{", "more_body": True}, {"type": "http.disconnect"}
    )
    with pytest.raises(ClientDisconnected):
        await read_body(ctx, receive)
    assert ctx.body is None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "could not parse the JSON body"),
        (b'{"model": "x"', "could not parse the JSON body"),
        (b'{"model": "\xff\xfe"}', "could not parse the JSON body"),
        (b'{"stream": "yes"}', "$.stream"),
        (b'{"max_tokens": "10"}', "$.max_tokens"),
        (b"[1, 2]", "Expected `object`"),
        (b'{"tools": [{"type": 1}]}', "$.tools[0].type"),
    ],
)
def test_invalid_bodies_give_a_clear_message(body, message):
    ctx = RequestContext("POST", "/v1/chat/completions")
    ctx.body = body
    with pytest.raises(InvalidBody) as info:
        ctx.fields()
    assert message in str(info.value)


def test_deeply_nested_json_is_rejected_not_crashing():
    ctx = RequestContext("POST", "/v1/chat/completions")
    ctx.body = b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b', "model": "m"}'
    with pytest.raises(InvalidBody, match="nested too deeply"):
        ctx.fields()


def test_fields_cover_each_providers_names():
    ctx = RequestContext("POST", "/v1/responses")
    ctx.body = (
        b'{"model": "gpt-5", "max_output_tokens": 99, "background": true,'
        b' "tools": [{"type": "web_search"}, {"type": "function", "name": "f"}],'
        b' "stream_options": {"include_usage": true}, "input": [{"deep": [1, 2, {"x": 3}]}]}'
    )
    f = ctx.fields()
    assert f.model == "gpt-5"
    assert f.max_output == 99
    assert f.background is True
    assert [t.type for t in f.tools or []] == ["web_search", "function"]
    assert f.stream_options is not None
    assert f.stream_options.include_usage is True


def test_endpoints_without_json_bodies_get_empty_fields():
    ctx = RequestContext("POST", "/v1/files")
    ctx.body = b"--multipart-boundary\r\n..."
    assert ctx.fields().model is None


def test_uploads_take_their_fields_from_the_form():
    ctx = RequestContext("POST", "/v1/images/edits")
    ctx.content_type = b"multipart/form-data; boundary=b"
    ctx.body = (
        b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
        b"\x89PNG\r\n--b\r\n"
        b'Content-Disposition: form-data; name="model"\r\n\r\ndall-e-2\r\n--b\r\n'
        b'Content-Disposition: form-data; name="n"\r\n\r\n3\r\n--b--\r\n'
    )
    assert (ctx.model, ctx.fields().n, ctx.fields().stream) == ("dall-e-2", 3, None)


@pytest.mark.parametrize("n", [b"two", b"-1", b""])
def test_an_upload_with_a_bad_n_is_invalid(n):
    ctx = RequestContext("POST", "/v1/images/variations")
    ctx.content_type = b"multipart/form-data; boundary=b"
    ctx.body = b'--b\r\nContent-Disposition: form-data; name="n"\r\n\r\n' + n + b"\r\n--b--"
    with pytest.raises(InvalidBody):
        ctx.fields()


def test_azure_model_is_the_deployment():
    ctx = RequestContext("POST", "/openai/deployments/prod-4o/chat/completions")
    ctx.body = b'{"model": "ignored"}'
    assert ctx.model == "prod-4o"


def test_a_forked_worker_hands_out_request_ids_of_its_own() -> None:
    from asgi_llmguard.context import new_request_id

    parent = [new_request_id() for _ in range(3)]
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # a worker forked after the parent served requests (gunicorn --preload)
        try:
            os.write(write, ",".join(new_request_id() for _ in range(3)).encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 1000).decode().split(",")
    os.close(read)
    assert len(child) == 3
    assert all(i.startswith("req_") for i in child)
    # The ledger stores one record per id: ids shared by two workers would drop records.
    assert not set(child) & set(parent + [new_request_id() for _ in range(3)])
    assert child[0][:20] != parent[0][:20]
