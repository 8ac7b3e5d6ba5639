"""A transport that answers with a plain function, in the spirit of httpx's `MockTransport`.

The relay's own tests use it to script upstreams without sockets; the built-in echo upstream uses
its response class.

    def handler(request: UpstreamRequest) -> MockResponse:
        return MockResponse(200, chunks=[b'data: {...}\\n\\n', UpstreamTimeout("stalled")])

    relay = Relay(router, {"up": MockTransport(handler)}, max_attempts=3)
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Sequence

from gateway.dialects.base import UpstreamRequest


class MockResponse:
    """A response from a script: `chunks` arrive one by one, `delay` seconds apart.

    An exception among the chunks is raised where it stands, as a transport raises when an
    upstream fails mid-body.
    """

    def __init__(
        self,
        status: int = 200,
        headers: dict[str, str] | None = None,
        chunks: Sequence[bytes | BaseException] = (),
        delay: float = 0.0,
    ) -> None:
        self.status = status
        self.headers = headers or {}
        self._chunks = list(chunks)
        self._delay = delay
        self.closed = False
        # Reading it cannot wait; a body that fails (a chunk that is an exception) has not arrived.
        self.complete = (not delay or len(self._chunks) <= 1) and not any(
            isinstance(chunk, BaseException) for chunk in self._chunks
        )
        self._next = 0

    async def read(self) -> bytes:
        pieces = []
        while chunk := await self.read_chunk():
            pieces.append(chunk)
        return b"".join(pieces)

    async def read_chunk(self) -> bytes:
        while not self.closed and self._next < len(self._chunks):
            i = self._next
            self._next += 1
            if self._delay and i:
                await asyncio.sleep(self._delay)
            chunk = self._chunks[i]
            if isinstance(chunk, BaseException):
                self._next = len(self._chunks)  # a body that failed has ended, as a transport's has
                raise chunk
            if chunk:  # an empty piece is no piece: `b""` means the end
                return chunk
        return b""

    def close(self) -> None:
        self.closed = True


Handler = Callable[[UpstreamRequest], "MockResponse | Awaitable[MockResponse]"]


class MockTransport:
    """Calls `handler` for each request; the handler may be async and may raise an `UpstreamError`."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self.requests: list[UpstreamRequest] = []

    async def open(self, request: UpstreamRequest) -> MockResponse:
        self.requests.append(request)
        result = self._handler(request)
        if inspect.isawaitable(result):
            result = await result
        if not isinstance(result, MockResponse):
            raise TypeError(f"the handler must return a MockResponse, not {type(result).__name__}")
        return result

    async def aclose(self) -> None:
        return None
