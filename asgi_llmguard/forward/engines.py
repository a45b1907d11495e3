"""The two upstream HTTP engines behind one small interface.

The default engine is one shared, pooled ``aiohttp.ClientSession``: measured on this project's
benchmark machine it forwards several times more requests per second than httpx's own pool (see
docs/benchmarks.md). An ``httpx.AsyncClient`` can be passed instead for custom transports and for
in-process tests with ``httpx.MockTransport``.

Both engines relay bytes exactly as the upstream sent them (no decompression, no redirects) and
raise only the `UpstreamError` family, so the forwarding app has one error path.
"""

from __future__ import annotations

import asyncio
import urllib.request
from typing import TYPE_CHECKING, Literal, Protocol
from urllib.parse import urlsplit

from asgi_llmguard.forward.config import PoolLimits, Timeouts
from asgi_llmguard.lifecycle import Resource
from asgi_llmguard.types import Headers

if TYPE_CHECKING:
    import aiohttp
    import httpx


class UpstreamError(Exception):
    """The exchange with the upstream failed. Messages are the gateway's, never the library's."""

    #: ``connect``: nothing was sent (safe to retry); ``timeout``; ``broken``: the connection
    #: failed after the request was (maybe) sent.
    kind: Literal["connect", "timeout", "broken"] = "broken"

    def __init__(self, message: str, phase: str = "") -> None:
        super().__init__(message)
        self.phase = phase


class UpstreamConnectError(UpstreamError):
    kind = "connect"


class UpstreamTimeout(UpstreamError):
    kind = "timeout"


class UpstreamBroken(UpstreamError):
    kind = "broken"


class UpstreamResponse(Protocol):
    status: int
    #: Response headers as received, names lower-cased.
    headers: Headers

    async def read_chunk(self) -> bytes:
        """The next chunk of the raw body as it arrives; ``b""`` at its end."""
        ...

    async def read_all(self) -> bytes:
        """The rest of the raw body."""
        ...

    async def aclose(self) -> None:
        """Release the connection: back to the pool if the body was read, else closed."""
        ...


class Engine(Protocol):
    async def send(
        self, method: str, url: str, headers: list[tuple[str, str]], body: bytes
    ) -> UpstreamResponse:
        """Send a request and return once the response headers have arrived."""
        ...

    async def start(self) -> None:
        """Nothing needs starting ahead of use (the pool opens connections on demand)."""

    async def aclose(self) -> None: ...

    def connections_in_use(self) -> int:
        """Connections currently lent to an exchange (for tests, metrics and leak checks)."""
        ...


def _lower(raw: object) -> Headers:
    return [(k.lower(), v) for k, v in raw]  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------- aiohttp


class _AiohttpResponse:
    __slots__ = ("_idle", "_resp", "headers", "status")

    def __init__(self, resp: aiohttp.ClientResponse, idle: float | None) -> None:
        self._resp = resp
        self._idle = idle
        self.status = resp.status
        self.headers: Headers = _lower(resp.raw_headers)

    async def read_chunk(self) -> bytes:
        import aiohttp

        try:
            async with asyncio.timeout(self._idle):
                return await self._resp.content.readany()
        except TimeoutError:
            raise UpstreamTimeout("The upstream went silent mid-response.", "idle") from None
        except aiohttp.ClientError:
            raise UpstreamBroken("The upstream connection broke mid-response.", "body") from None

    async def read_all(self) -> bytes:
        import aiohttp

        if self._resp.content.is_eof():
            # Small answers usually arrive with their headers: nothing left to wait for, so no
            # deadline to arm (a measurable saving per request).
            return await self._resp.read()
        try:
            async with asyncio.timeout(self._idle):
                return await self._resp.read()
        except TimeoutError:
            raise UpstreamTimeout("The upstream went silent mid-response.", "idle") from None
        except aiohttp.ClientError:
            raise UpstreamBroken("The upstream connection broke mid-response.", "body") from None

    async def aclose(self) -> None:
        resp = self._resp
        if resp.content.at_eof():
            resp.release()
        else:
            # An unfinished body cannot go back to the pool: close the connection so the upstream
            # sees the cancel at once (it stops generating, and stops billing).
            resp.close()


class AiohttpEngine(Resource):
    """One pooled ``aiohttp.ClientSession``, created lazily inside the running loop."""

    # aiohttp adds these when absent; the gateway must send exactly the client's.
    _SKIP = frozenset({"Accept-Encoding", "User-Agent", "Content-Type", "Accept"})

    def __init__(
        self,
        *,
        timeouts: Timeouts = Timeouts(),
        limits: PoolLimits = PoolLimits(),
        trust_env: bool = True,
    ) -> None:
        self._timeouts = timeouts
        self._limits = limits
        self._trust_env = trust_env
        self._session: aiohttp.ClientSession | None = None
        self._connector: aiohttp.TCPConnector | None = None
        self._proxies: dict[str, str | None] = {}

    def _open(self) -> aiohttp.ClientSession:
        import aiohttp

        t = self._timeouts
        connect = None if t.connect is None or t.pool is None else t.connect + t.pool
        self._connector = aiohttp.TCPConnector(
            limit=self._limits.max_connections,
            limit_per_host=self._limits.max_per_host,
            keepalive_timeout=self._limits.keepalive_expiry,
        )
        self._session = aiohttp.ClientSession(
            connector=self._connector,
            timeout=aiohttp.ClientTimeout(total=None, connect=connect, sock_connect=t.connect),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            # Proxies are resolved once per upstream origin below, not from the environment on
            # every request.
            trust_env=False,
        )
        return self._session

    def _proxy(self, url: str) -> str | None:
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        try:
            return self._proxies[origin]
        except KeyError:
            proxy = None
            if self._trust_env and not urllib.request.proxy_bypass(parts.hostname or ""):
                proxy = urllib.request.getproxies().get(parts.scheme)
            # Upstream origins come from configuration, so this map stays small.
            self._proxies[origin] = proxy
            return proxy

    async def send(
        self, method: str, url: str, headers: list[tuple[str, str]], body: bytes
    ) -> UpstreamResponse:
        import aiohttp

        session = self._session or self._open()
        try:
            # aiohttp writes the body inside the same call, so the write time counts toward the
            # first-byte deadline; the two are added to bound the whole call.
            async with asyncio.timeout(_add(self._timeouts.first_byte, self._timeouts.write)):
                resp = await session.request(
                    method,
                    url,
                    headers=headers,
                    data=body or None,
                    allow_redirects=False,
                    skip_auto_headers=self._SKIP,
                    proxy=self._proxy(url),
                )
        except aiohttp.ConnectionTimeoutError:
            raise UpstreamTimeout("Timed out connecting to the upstream.", "connect") from None
        except TimeoutError:
            raise UpstreamTimeout("The upstream did not answer in time.", "first_byte") from None
        except (aiohttp.ClientConnectorError, aiohttp.ClientProxyConnectionError):
            raise UpstreamConnectError("Could not connect to the upstream.", "connect") from None
        except aiohttp.ClientError:
            raise UpstreamBroken("The upstream closed the connection.", "headers") from None
        return _AiohttpResponse(resp, self._timeouts.idle)

    def session(self) -> aiohttp.ClientSession:
        """The pooled session (opened on first use), for the WebSocket relay."""
        return self._session or self._open()

    def connections_in_use(self) -> int:
        connector = self._connector
        if connector is None:
            return 0
        # ``_acquired`` holds every connection in use; the per-host map is only filled when a
        # per-host limit is set.
        return len(connector._acquired)

    async def aclose(self) -> None:
        session, self._session, self._connector = self._session, None, None
        if session is not None:
            await session.close()


# ------------------------------------------------------------------------------------------ httpx


class _HttpxResponse:
    __slots__ = ("_idle", "_iter", "_resp", "headers", "status")

    def __init__(self, resp: httpx.Response, idle: float | None) -> None:
        self._resp = resp
        self._idle = idle
        self._iter = resp.aiter_raw()
        self.status = resp.status_code
        self.headers: Headers = _lower(resp.headers.raw)

    async def read_chunk(self) -> bytes:
        import httpx

        try:
            async with asyncio.timeout(self._idle):
                return await anext(self._iter, b"")
        except TimeoutError:
            raise UpstreamTimeout("The upstream went silent mid-response.", "idle") from None
        except httpx.TimeoutException:
            raise UpstreamTimeout("The upstream went silent mid-response.", "idle") from None
        except (httpx.TransportError, httpx.StreamError):
            raise UpstreamBroken("The upstream connection broke mid-response.", "body") from None

    async def read_all(self) -> bytes:
        parts = []
        while chunk := await self.read_chunk():
            parts.append(chunk)
        return b"".join(parts)

    async def aclose(self) -> None:
        await self._resp.aclose()


class HttpxEngine(Resource):
    """A caller's ``httpx.AsyncClient``. The gateway sets per-request timeouts, never redirects."""

    def __init__(self, client: httpx.AsyncClient, *, timeouts: Timeouts = Timeouts()) -> None:
        import httpx

        self._client = client
        self._timeouts = timeouts
        # httpx's read timeout would also bound the wait for headers; the gateway applies its own
        # first-byte and idle deadlines instead.
        self._httpx_timeout = httpx.Timeout(
            connect=timeouts.connect, read=None, write=timeouts.write, pool=timeouts.pool
        )

    async def send(
        self, method: str, url: str, headers: list[tuple[str, str]], body: bytes
    ) -> UpstreamResponse:
        import httpx

        request = self._client.build_request(
            method, url, headers=headers, content=body, timeout=self._httpx_timeout
        )
        try:
            async with asyncio.timeout(self._timeouts.first_byte):
                resp = await self._client.send(request, stream=True, follow_redirects=False)
        except TimeoutError:
            raise UpstreamTimeout("The upstream did not answer in time.", "first_byte") from None
        except httpx.ConnectTimeout:
            raise UpstreamTimeout("Timed out connecting to the upstream.", "connect") from None
        except httpx.PoolTimeout:
            raise UpstreamTimeout("No upstream connection was free in time.", "pool") from None
        except httpx.TimeoutException:
            raise UpstreamTimeout("The upstream did not answer in time.", "write") from None
        except httpx.ConnectError:
            raise UpstreamConnectError("Could not connect to the upstream.", "connect") from None
        except httpx.TransportError:
            raise UpstreamBroken("The upstream closed the connection.", "headers") from None
        return _HttpxResponse(resp, self._timeouts.idle)

    def connections_in_use(self) -> int:
        pool = getattr(self._client._transport, "_pool", None)
        if pool is None:
            return 0
        return sum(1 for c in pool.connections if not c.is_idle())

    async def aclose(self) -> None:
        """The client belongs to whoever made it: they close it (``async with`` or ``aclose``)."""


def _add(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a + b
