"""Stand-ins for the layers around the rate limiter, and a real Redis server of our own.

`KeyLayer` plays the auth layer (a header names a `KeyPolicy`), `UsageStub` the usage layer
(a header says how many tokens the request used), `ok_app` an upstream that always answers.
`RedisServer` starts a private ``redis-server`` so tests can kill it without touching the
shared one.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Mapping

import orjson
import redis

from asgi_llmguard.context import get_context
from asgi_llmguard.policy import KeyPolicy
from asgi_llmguard.types import ASGIApp, Receive, Scope, Send


class KeyLayer:
    def __init__(self, app: ASGIApp, keys: Mapping[str, KeyPolicy]) -> None:
        self.app = app
        self.keys = dict(keys)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            ctx = get_context(scope)
            for name, value in scope["headers"]:
                if name == b"x-test-key":
                    ctx.key = self.keys[value.decode()]
        await self.app(scope, receive, send)


class UsageStub:
    """Sets ``ctx.usage_tokens`` from ``x-test-usage`` before returning, as the usage layer does."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ctx = get_context(scope)
        try:
            await self.app(scope, receive, send)
        finally:
            for name, value in scope["headers"]:
                if name == b"x-test-usage":
                    ctx.usage_tokens = int(value)


async def ok_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers 200 with the request body's length, or the status in ``x-test-status``."""
    if scope["type"] != "http":
        return
    status = 200
    for name, value in scope["headers"]:
        if name == b"x-test-status":
            status = int(value)
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = orjson.dumps({"received": size})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"x-ratelimit-limit-requests", b"9999"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A private ``redis-server`` on a free loopback port: no persistence, DEBUG allowed, and a
    password, so tests can check it never reaches a log line."""

    password = "s3cret-redis-pass"

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(
            port=self.port, password=self.password, socket_timeout=5, socket_connect_timeout=0.5
        )

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--enable-debug-command",
                "yes",
                "--logfile",
                "",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = self.client()
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.RedisError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.02)
        client.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
