"""Upstream calls over HTTP: one pooled aiohttp session per process.

Every aiohttp and socket exception becomes a `gateway.errors.UpstreamError` here, from one table,
and nowhere else. Messages name the upstream by its config name, never by URL.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp

from gateway.dialects.base import UpstreamRequest
from gateway.errors import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)

log = logging.getLogger("gateway.upstream")

# First match wins, so subclasses come before their bases.
EXCEPTION_TABLE: tuple[tuple[type[BaseException], type[UpstreamError], str], ...] = (
    (asyncio.TimeoutError, UpstreamTimeout, "did not answer in time"),
    (aiohttp.ClientConnectorError, UpstreamConnectError, "could not be reached"),
    (aiohttp.ServerDisconnectedError, UpstreamProtocolError, "closed the connection unexpectedly"),
    (aiohttp.ClientPayloadError, UpstreamProtocolError, "sent a broken reply body"),
    (aiohttp.ClientResponseError, UpstreamProtocolError, "sent a malformed reply"),
    (aiohttp.ClientConnectionError, UpstreamConnectError, "connection failed"),
    (aiohttp.ClientError, UpstreamProtocolError, "request failed"),
    (OSError, UpstreamConnectError, "connection failed"),
)


# What a stale pooled keep-alive connection gives: closed by the upstream before any answer.
_STALE = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)


def translate(exc: BaseException, upstream: str) -> UpstreamError:
    for source, target, what in EXCEPTION_TABLE:
        if isinstance(exc, source):
            log.warning("upstream %s %s: %s", upstream, what, type(exc).__name__)
            return target(f"The upstream `{upstream}` {what}.")
    raise TypeError(f"not a transport exception: {exc!r}")


_READ_BUFFER = 64 * 1024


class HttpResponse:
    __slots__ = ("_ended", "_headers", "_resp", "_upstream", "status")

    def __init__(self, resp: aiohttp.ClientResponse, upstream: str) -> None:
        self._resp = resp
        self._upstream = upstream
        self.status = resp.status
        self._headers: dict[str, str] | None = None
        self._ended = False  # the body's end was read: the connection is released

    @property
    def headers(self) -> dict[str, str]:
        # Read only for errors (Retry-After and the like): not built for every reply.
        if self._headers is None:
            self._headers = {k.lower(): v for k, v in self._resp.headers.items()}
        return self._headers

    @property
    def complete(self) -> bool:
        return self._resp.content.is_eof()

    async def read(self) -> bytes:
        try:
            return await self._resp.read()
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            self._resp.close()
            raise translate(exc, self._upstream) from None

    async def read_chunk(self) -> bytes:
        # A coroutine per piece, not an iterator: each layer between a stream's loop and the socket
        # is resumed on every event of every stream.
        if self._ended:  # a released response's stream raises on reading: the end stays the end
            return b""
        try:
            chunk = await self._resp.content.readany()
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            self._resp.close()
            raise translate(exc, self._upstream) from None
        if not chunk:
            self._ended = True
            self._resp.release()
        return chunk

    def close(self) -> None:
        self._resp.close()


class HttpTransport:
    def __init__(self, *, pool_size: int, connect_timeout: float, read_timeout: float) -> None:
        self._pool_size = pool_size
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, sock_read=read_timeout)
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[tuple[float | None, float | None], aiohttp.ClientTimeout] = {}

    def _session_now(self) -> aiohttp.ClientSession:
        # Created on first use, inside the running loop (aiohttp binds the session to it).
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._pool_size, ttl_dns_cache=300, keepalive_timeout=30)
            # No cookie jar: cookies one upstream reply sets must never ride along on other callers' requests.
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                auto_decompress=True,
                trust_env=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                # What a reply may buffer here while its client reads slowly (aiohttp stops reading
                # the upstream at twice this): 128 KiB per stream rather than aiohttp's 512 KiB.
                read_bufsize=_READ_BUFFER,
            )
        return self._session

    async def open(self, request: UpstreamRequest) -> HttpResponse:
        session = self._session_now()
        for attempt in (1, 2):
            try:
                resp = await session.request(
                    request.method,
                    request.url,
                    headers=request.headers,
                    data=request.body,
                    allow_redirects=False,
                    timeout=self._timeout_for(request),
                )
            except _STALE as exc:
                # Upstreams close idle keep-alive connections, and the pool may hand out one that has
                # just died. Nothing was answered on it, so one more try, on another connection, is safe.
                if attempt == 1:
                    log.info("upstream %s: pooled connection was closed, retrying", request.upstream)
                    continue
                raise translate(exc, request.upstream) from None
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                raise translate(exc, request.upstream) from None
            return HttpResponse(resp, request.upstream)
        raise AssertionError("unreachable")

    def _timeout_for(self, request: UpstreamRequest) -> aiohttp.ClientTimeout:
        if request.connect_timeout is None and request.read_timeout is None:
            return self._timeout
        key = (request.connect_timeout or self._timeout.sock_connect, request.read_timeout or self._timeout.sock_read)
        timeout = self._timeouts.get(key)
        if timeout is None:
            timeout = self._timeouts[key] = aiohttp.ClientTimeout(total=None, sock_connect=key[0], sock_read=key[1])
        return timeout

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
