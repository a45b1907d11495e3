import pytest

from asgi_llmguard.routes import MethodNotAllowed, RouteNotFound, classify


@pytest.mark.parametrize(
    ("method", "path", "api", "operation", "billable", "streamable", "read_only"),
    [
        ("POST", "/v1/chat/completions", "openai", "chat.completions", True, True, False),
        ("POST", "/v1/responses", "openai", "responses", True, True, False),
        ("GET", "/v1/responses/resp_123", "openai", "responses.retrieve", False, False, True),
        ("POST", "/v1/completions", "openai", "completions", True, True, False),
        ("POST", "/v1/embeddings", "openai", "embeddings", True, False, False),
        ("POST", "/v1/images/generations", "openai", "images.generations", True, False, False),
        ("POST", "/v1/audio/transcriptions", "openai", "audio.transcriptions", True, True, False),
        ("POST", "/v1/moderations", "openai", "moderations", False, False, False),
        ("GET", "/v1/models", "openai", "models.list", False, False, True),
        ("GET", "/v1/models/gpt-4o-mini", "openai", "models.retrieve", False, False, True),
        ("GET", "/v1/files", "openai", "files.list", False, False, True),
        ("POST", "/v1/files", "openai", "files.create", False, False, False),
        ("GET", "/v1/files/file-abc/content", "openai", "files.content", False, False, True),
        ("POST", "/v1/batches", "openai", "batches.create", False, False, False),
        ("POST", "/v1/batches/batch_1/cancel", "openai", "batches.cancel", False, False, False),
        ("POST", "/v1/messages", "anthropic", "messages", True, True, False),
        (
            "POST",
            "/v1/messages/count_tokens",
            "anthropic",
            "messages.count_tokens",
            False,
            False,
            True,
        ),
        (
            "POST",
            "/openai/deployments/my-gpt/chat/completions",
            "azure",
            "chat.completions",
            True,
            True,
            False,
        ),
        ("POST", "/openai/deployments/emb/embeddings", "azure", "embeddings", True, False, False),
    ],
)
def test_known_routes(method, path, api, operation, billable, streamable, read_only):
    route = classify(method, path)
    e = route.endpoint
    assert (e.api, e.operation, e.billable, e.streamable, e.read_only) == (
        api,
        operation,
        billable,
        streamable,
        read_only,
    )


def test_azure_deployment_is_taken_from_the_path():
    assert classify("POST", "/openai/deployments/prod-4o/chat/completions").deployment == "prod-4o"
    assert classify("POST", "/v1/chat/completions").deployment is None


@pytest.mark.parametrize(
    "path",
    [
        "//v1/chat/completions",
        "/v1/chat/completions/",
        "/V1/chat/completions",
        "/v1/Chat/Completions",
        "/v1//chat/completions",
        "/v1/chat/completions/../completions",
        "/v1/chat",
        "/",
        "",
        "/v1/models/a/b/c",
        "/openai/deployments//chat/completions",
        "/openai/deployments/x/unknown",
        "/openai/deployments/x/y/chat/completions",
        "/v1/messages/count_tokens/",
    ],
)
def test_path_tricks_are_unknown_routes(path):
    with pytest.raises(RouteNotFound):
        classify("POST", path)


def test_wrong_method_lists_the_allowed_ones():
    with pytest.raises(MethodNotAllowed) as info:
        classify("GET", "/v1/embeddings")
    assert info.value.allowed == ("POST",)
    with pytest.raises(MethodNotAllowed) as info:
        classify("PUT", "/v1/chat/completions")
    assert set(info.value.allowed) == {"GET", "POST"}
    with pytest.raises(MethodNotAllowed) as info:
        classify("PUT", "/v1/files")
    assert set(info.value.allowed) == {"GET", "POST"}


@pytest.mark.parametrize(
    ("method", "path", "operation", "billable", "read_only"),
    [
        ("POST", "/v1/responses/compact", "responses.compact", True, False),
        ("POST", "/v1/responses/input_tokens", "responses.input_tokens", False, True),
        ("POST", "/v1/responses/resp_1/cancel", "responses.cancel", False, False),
        ("GET", "/v1/responses/resp_1/input_items", "responses.input_items", False, True),
        ("POST", "/v1/conversations", "conversations.create", False, False),
        ("GET", "/v1/conversations/conv_1", "conversations.retrieve", False, True),
        ("DELETE", "/v1/conversations/conv_1", "conversations.delete", False, False),
        ("POST", "/v1/conversations/conv_1/items", "conversations.items.create", False, False),
        (
            "GET",
            "/v1/conversations/conv_1/items/msg_1",
            "conversations.items.retrieve",
            False,
            True,
        ),
    ],
)
def test_newer_openai_routes(method, path, operation, billable, read_only):
    e = classify(method, path).endpoint
    assert (e.api, e.operation, e.billable, e.read_only) == (
        "openai",
        operation,
        billable,
        read_only,
    )


@pytest.mark.parametrize(
    ("method", "path", "operation"),
    [
        ("GET", "/v1/models", "models.list"),
        ("GET", "/v1/models/claude-haiku-4-5", "models.retrieve"),
        ("GET", "/v1/files", "files.list"),
        ("POST", "/v1/files", "files.create"),
        ("GET", "/v1/files/file_1", "files.retrieve"),
        ("DELETE", "/v1/files/file_1", "files.delete"),
        ("GET", "/v1/files/file_1/content", "files.content"),
    ],
)
def test_shared_paths_take_the_callers_dialect(method, path, operation):
    assert classify(method, path, anthropic=True).endpoint.api == "anthropic"
    assert classify(method, path, anthropic=True).endpoint.operation == operation
    assert classify(method, path).endpoint.api == "openai"


@pytest.mark.parametrize(
    ("method", "path", "operation"),
    [
        ("POST", "/v1/messages/batches", "messages.batches.create"),
        ("GET", "/v1/messages/batches", "messages.batches.list"),
        ("GET", "/v1/messages/batches/msgbatch_1", "messages.batches.retrieve"),
        ("DELETE", "/v1/messages/batches/msgbatch_1", "messages.batches.delete"),
        ("GET", "/v1/messages/batches/msgbatch_1/results", "messages.batches.results"),
        ("POST", "/v1/messages/batches/msgbatch_1/cancel", "messages.batches.cancel"),
    ],
)
def test_message_batches_routes(method, path, operation):
    for anthropic in (False, True):
        e = classify(method, path, anthropic=anthropic).endpoint
        assert (e.api, e.operation, e.billable) == ("anthropic", operation, False)


def test_anthropic_headers_do_not_change_other_routes():
    assert classify("POST", "/v1/messages", anthropic=True).endpoint.operation == "messages"
    e = classify("POST", "/v1/chat/completions", anthropic=True).endpoint
    assert e.api == "openai"
