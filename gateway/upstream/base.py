"""The interface every transport offers: open a request, read or stream the answer, close."""

from __future__ import annotations

from typing import Protocol

from gateway.dialects.base import UpstreamRequest


class UpstreamResponse(Protocol):
    status: int

    @property
    def headers(self) -> dict[str, str]:
        """Lower-case names."""
        ...

    @property
    def complete(self) -> bool:
        """Whether the whole body has arrived already, so that reading it cannot wait."""
        ...

    async def read(self) -> bytes:
        """The whole body; releases the connection."""
        ...

    async def read_chunk(self) -> bytes:
        """The next piece of the body, as soon as there is one; `b""` once the body has ended (the
        connection is then released)."""
        ...

    def close(self) -> None:
        """Abandon the response (the connection is not reused)."""
        ...


class Transport(Protocol):
    async def open(self, request: UpstreamRequest) -> UpstreamResponse:
        """Send the request and wait for the status line; raises only `UpstreamError`s."""
        ...

    async def aclose(self) -> None: ...
