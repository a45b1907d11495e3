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
        ("POST", "/v1/audio/transcriptions", "openai", "audio.transcriptions", True, False, False),
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
        classify("GET", "/v1/chat/completions")
    assert info.value.allowed == ("POST",)
    with pytest.raises(MethodNotAllowed) as info:
        classify("PUT", "/v1/files")
    assert set(info.value.allowed) == {"GET", "POST"}
