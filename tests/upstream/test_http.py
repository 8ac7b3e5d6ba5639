"""Every aiohttp exception maps to a gateway error, and messages name the upstream, not its URL."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest

from gateway.dialects.base import UpstreamRequest
from gateway.errors import UpstreamConnectError, UpstreamError, UpstreamProtocolError, UpstreamTimeout
from gateway.upstream.http import EXCEPTION_TABLE, HttpTransport, translate

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def _aiohttp_exceptions() -> list[type[BaseException]]:
    return [
        obj for _, obj in inspect.getmembers(aiohttp) if inspect.isclass(obj) and issubclass(obj, aiohttp.ClientError)
    ]


def _instance(cls: type[BaseException]) -> BaseException:
    exc = cls.__new__(cls)
    BaseException.__init__(exc)
    return exc


@pytest.mark.parametrize("cls", _aiohttp_exceptions(), ids=lambda c: c.__name__)
def test_every_aiohttp_exception_is_mapped(cls: type[BaseException]) -> None:
    err = translate(_instance(cls), "vendor")
    assert isinstance(err, UpstreamError)
    assert err.message.startswith("The upstream `vendor`")


def test_specific_mappings() -> None:
    assert isinstance(translate(TimeoutError(), "u"), UpstreamTimeout)
    assert isinstance(translate(_instance(aiohttp.ServerTimeoutError), "u"), UpstreamTimeout)
    assert isinstance(translate(_instance(aiohttp.ClientConnectorError), "u"), UpstreamConnectError)
    assert isinstance(translate(_instance(aiohttp.ServerDisconnectedError), "u"), UpstreamProtocolError)
    assert isinstance(translate(ConnectionResetError(), "u"), UpstreamConnectError)
    assert translate(TimeoutError(), "u").status == 504


def test_table_has_subclasses_before_bases() -> None:
    classes = [source for source, _, _ in EXCEPTION_TABLE]
    for i, earlier in enumerate(classes):
        for later in classes[i + 1 :]:
            assert not issubclass(later, earlier), f"{later.__name__} is shadowed by {earlier.__name__}"


def test_non_transport_exceptions_are_not_swallowed() -> None:
    with pytest.raises(TypeError):
        translate(ValueError("bug"), "u")


async def test_connection_refused_is_502_without_url() -> None:
    transport = HttpTransport(pool_size=4, connect_timeout=1, read_timeout=1)
    request = UpstreamRequest("POST", "http://user:pw@127.0.0.1:9/v1/chat/completions", {}, b"{}", "vendor")
    with pytest.raises(UpstreamConnectError) as info:
        await transport.open(request)
    assert info.value.status == 502
    assert "127.0.0.1" not in info.value.message and "pw" not in info.value.message
    await transport.aclose()


async def test_a_pooled_connection_the_upstream_closed_is_retried_once() -> None:
    """The race of an idle timeout: the upstream closes a kept-alive connection just as the next
    request arrives on it, without answering. The request goes again on a fresh connection."""
    answered = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal answered
        for served in range(2):
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode().lower().split("\r\n")
            length = int(next(line.split(":")[1] for line in lines if line.startswith("content-length")))
            await reader.readexactly(length)
            if served == 1:  # the second request on this connection: closed, unanswered
                writer.close()
                return
            answered += 1
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}")
            await writer.drain()

    async with _served(handle) as (transport, request):
        for _ in range(3):
            response = await transport.open(request)
            assert response.status == 200 and await response.read() == b"{}"
        assert answered == 3


async def test_a_reply_is_complete_once_its_whole_body_has_arrived() -> None:
    """`complete` says reading cannot wait (the relay then arms no timer): not while the body trickles."""
    body_sent = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(2)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 4\r\n\r\n{}")
        await writer.drain()
        await body_sent.wait()
        writer.write(b"  ")
        await writer.drain()
        writer.close()

    async with _served(handle) as (transport, request):
        response = await transport.open(request)
        await asyncio.sleep(0.05)
        assert not response.complete  # two of its four bytes are still to come
        body_sent.set()
        for _ in range(100):
            if response.complete:
                break
            await asyncio.sleep(0.01)
        assert response.complete
        assert await response.read() == b"{}  "


async def test_a_stream_read_past_its_end_stays_ended() -> None:
    """`read_chunk` gives `b""` at the body's end and again after it (the relay may ask once more,
    as a stream whose first round gave no event does), and the connection goes back to the pool."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(2):
            await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(2)
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
                b"6\r\ndata: \r\n4\r\n{}\n\n\r\n0\r\n\r\n"
            )
            await writer.drain()
        writer.close()

    async with _served(handle) as (transport, request):
        for _ in range(2):  # the second request rides the connection the first one released
            response = await transport.open(request)
            body = b""
            while chunk := await response.read_chunk():
                body += chunk
            assert body == b"data: {}\n\n"
            assert await response.read_chunk() == b""
            assert await response.read_chunk() == b""


@contextlib.asynccontextmanager
async def _served(handle: Handler) -> AsyncIterator[tuple[HttpTransport, UpstreamRequest]]:
    """A raw upstream on loopback answering with `handle`, a one-connection transport to it, and a
    request for it; all closed afterwards."""
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport = HttpTransport(pool_size=1, connect_timeout=1, read_timeout=1)
    request = UpstreamRequest("POST", f"http://127.0.0.1:{port}/v1/chat/completions", {}, b"{}", "vendor")
    try:
        yield transport, request
    finally:
        await transport.aclose()
        server.close()
        await server.wait_closed()
