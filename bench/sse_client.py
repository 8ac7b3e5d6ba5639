"""A lean HTTP/1.1 client for many concurrent event streams: an asyncio protocol per connection that
only stamps the time of each SSE event as the bytes arrive (no parsing beyond counting blank-line
ends), so that thousands of streams cost the load generator little and the gaps it measures are the
server's. Used by the paced scenario and the soak in bench/suite.py."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field


@dataclass
class StreamTimes:
    sent: float = 0.0
    events: list[float] = field(default_factory=list)  # perf_counter of each event's end
    status: int = 0
    done: bool = False  # the response ended (`[DONE]` seen)
    error: str | None = None


class _Protocol(asyncio.Protocol):
    def __init__(self, request: bytes, times: StreamTimes, finished: asyncio.Future[None], cut_after: int | None):
        self._request = request
        self._times = times
        self._finished = finished
        self._cut_after = cut_after  # close the connection after this many events (a client that leaves)
        self._head = b""
        self._in_body = False
        self._tail = b""  # the end of the last piece, to find an event end split across pieces
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._times.sent = time.perf_counter()
        transport.write(self._request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        times = self._times
        if not self._in_body:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                return
            times.status = int(self._head[9:12])
            data, self._in_body = self._head[end + 4 :], True
        joined = self._tail + data
        count = joined.count(b"\n\n") - self._tail.count(b"\n\n")
        for _ in range(count):
            times.events.append(now)
        self._tail = joined[-1:]
        if b"[DONE]" in data:
            times.done = True
            self._close()
        elif self._cut_after is not None and len(times.events) >= self._cut_after:
            self._close()

    def _close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and self._times.error is None:
            self._times.error = str(exc)
        if not self._finished.done():
            self._finished.set_result(None)


def request_bytes(port: int, path: str, body: bytes, key: str) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {key}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


async def one_stream(port: int, request: bytes, cut_after: int | None = None) -> StreamTimes:
    """One request on its own connection; returns when the server or the client closed it."""
    loop = asyncio.get_running_loop()
    times = StreamTimes()
    finished: asyncio.Future[None] = loop.create_future()
    try:
        await loop.create_connection(lambda: _Protocol(request, times, finished, cut_after), "127.0.0.1", port)
        await finished
    except OSError as exc:
        times.error = str(exc)
    return times


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))]
