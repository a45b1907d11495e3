"""The three ways to run the gateway: mounted, as single middlewares, standalone (test_cli.py)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx
import openai
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from asgi_llmguard import ClassifyMiddleware, Upstream, build_stack, get_context
from asgi_llmguard.testing import FakeProvider, serve

KEY = "sk-upstream-mount"


def _gateway(url: str):
    return build_stack(
        upstreams=[
            Upstream("openai", f"{url}/v1", api_key=KEY),
            Upstream("anthropic", url, api_key=KEY),
        ]
    )


def test_fastapi_mount_with_the_openai_sdk_streaming_and_not():
    fake = FakeProvider(api_key=KEY)
    with serve(fake) as upstream:
        gateway = _gateway(upstream.url)

        @contextlib.asynccontextmanager
        async def lifespan(app: FastAPI) -> AsyncIterator[None]:
            async with gateway:  # lifespan does not reach mounted apps: close it here
                yield

        app = FastAPI(lifespan=lifespan)

        @app.get("/health")
        async def health() -> dict[str, str]:
            return {"status": "ok"}

        app.mount("/llm", gateway)
        with serve(app) as server:
            client = openai.OpenAI(base_url=f"{server.url}/llm/v1", api_key="c", max_retries=0)
            out = client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "mounted hi"}]
            )
            chunks = list(
                client.chat.completions.create(
                    model="gpt-4o",
                    messages=[{"role": "user", "content": "mounted hi"}],
                    stream=True,
                    stream_options={"include_usage": True},
                )
            )
            assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
            unknown = httpx.post(f"{server.url}/llm/v1/nope", json={})
    assert out.choices[0].message.content == "Hello from the fake provider."
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == 2
    # The mount prefix is not part of the route: the upstream sees its own path.
    assert fake.requests[-1].path == "/v1/chat/completions"
    assert unknown.status_code == 404
    assert "/v1/nope" in unknown.json()["error"]["message"]


async def test_starlette_mount_lifespan_closes_the_gateway_session():
    fake = FakeProvider(api_key=KEY)
    with serve(fake) as upstream:
        gateway = _gateway(upstream.url)

        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            async with gateway:
                yield

        app = Starlette(routes=[Mount("/llm", app=gateway)], lifespan=lifespan)
        async with LifespanManager(app) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                resp = await client.post(
                    "/llm/v1/messages",
                    json={
                        "model": "claude-haiku-4-5",
                        "max_tokens": 20,
                        "messages": [{"role": "user", "content": "hi"}],
                    },
                )
            assert resp.status_code == 200
            assert resp.json()["type"] == "message"
            engine = gateway.forwarder.engine
            assert engine._session is not None  # type: ignore[attr-defined]
        assert engine._session is None  # type: ignore[attr-defined]


async def test_classify_middleware_alone_in_a_users_app():
    async def endpoint(request: Request) -> JSONResponse:
        ctx = get_context(request.scope)
        assert ctx.route is not None
        return JSONResponse(
            {"operation": ctx.route.endpoint.operation, "api": ctx.route.endpoint.api}
        )

    app = Starlette(
        routes=[Route("/v1/messages", endpoint, methods=["POST"])],
        middleware=[Middleware(ClassifyMiddleware)],
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        ok = await client.post("/v1/messages", json={})
        unknown = await client.post("/v1/unknown", json={})
    assert ok.json() == {"operation": "messages", "api": "anthropic"}
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "unknown_url"


async def test_passthrough_forwards_unknown_v1_paths_only():
    fake = FakeProvider()
    with serve(fake) as upstream:
        gateway = build_stack(
            upstreams=[Upstream("openai", f"{upstream.url}/v1")], passthrough="openai"
        )
        async with gateway:
            transport = httpx.ASGITransport(app=gateway)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                passed = await client.get("/v1/assistants")
                outside = await client.get("/admin")
    # Not in the route table (the deprecated Assistants API), and the fake does not know it
    # either: its own 404 proves the request reached it.
    assert passed.status_code == 404
    assert fake.requests[-1].path == "/v1/assistants"
    assert outside.status_code == 404
    assert len(fake.requests) == 1
