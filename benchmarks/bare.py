"""Minimal pure-ASGI forwarders: the baselines the gateway is measured against.

Each reads the request body, sends it to ``upstream + path`` with one shared pooled client and
streams the answer back chunk by chunk, dropping hop-by-hop headers. Nothing else: no routing,
no credentials, no error handling beyond what the client library does.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import httpx

Headers = list[tuple[str, str]]

HOP_BY_HOP = {
    *(b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate"),
    *(b"proxy-authorization", b"te", b"trailer", b"transfer-encoding", b"upgrade"),
}
DROP_REQUEST = frozenset(HOP_BY_HOP | {b"host", b"content-length"})
DROP_RESPONSE = frozenset(HOP_BY_HOP | {b"date", b"server"})  # the ASGI server sets its own


class _Forwarder:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":  # startup
                await self.open()
                await send({"type": "lifespan.startup.complete"})
            await self.close()
            await send({"type": "lifespan.shutdown.complete"})
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        query = scope["query_string"]
        url = self.upstream + scope["path"] + ("?" + query.decode() if query else "")
        headers = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in scope["headers"]
            if k not in DROP_REQUEST
        ]
        await self.forward(scope["method"], url, headers, body, send)

    async def open(self) -> None: ...
    async def close(self) -> None: ...

    async def forward(
        self, method: str, url: str, headers: Headers, body: bytes, send: Any
    ) -> None:
        raise NotImplementedError


async def _start(send: Any, status: int, raw: Any) -> None:
    headers = [(k.lower(), v) for k, v in raw if k.lower() not in DROP_RESPONSE]
    await send({"type": "http.response.start", "status": status, "headers": headers})


class AiohttpForwarder(_Forwarder):
    """One shared ``aiohttp.ClientSession`` (auto_decompress=False)."""

    async def open(self) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1000), auto_decompress=False
        )

    async def close(self) -> None:
        await self.session.close()

    async def forward(
        self, method: str, url: str, headers: Headers, body: bytes, send: Any
    ) -> None:
        skip = {"Accept-Encoding", "User-Agent", "Content-Type", "Accept"}
        async with self.session.request(
            method, url, headers=headers, data=body, allow_redirects=False, skip_auto_headers=skip
        ) as resp:
            await _start(send, resp.status, resp.raw_headers)
            async for chunk in resp.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


class HttpxForwarder(_Forwarder):
    """One shared ``httpx.AsyncClient``: its own pool, or the transport ``make_client`` gives."""

    def __init__(self, upstream: str, make_client: Any) -> None:
        super().__init__(upstream)
        self.make_client = make_client

    async def open(self) -> None:
        self.client: httpx.AsyncClient = self.make_client()

    async def close(self) -> None:
        await self.client.aclose()

    async def forward(
        self, method: str, url: str, headers: Headers, body: bytes, send: Any
    ) -> None:
        request = self.client.build_request(method, url, headers=headers, content=body)
        resp = await self.client.send(request, stream=True, follow_redirects=False)
        try:
            await _start(send, resp.status_code, resp.headers.raw)
            async for chunk in resp.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        finally:
            await resp.aclose()
        await send({"type": "http.response.body", "body": b""})
