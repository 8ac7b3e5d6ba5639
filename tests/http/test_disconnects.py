"""A thousand clients that leave mid-stream: every upstream request closed, nothing left behind.

Counted: the upstream's cut streams, this process's open file descriptors, its unfinished asyncio
tasks and resident memory, before and after. The gateway, the fake upstream and the clients share this
process, so every socket they open shows up here.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import resource
import time

import pytest

from tests.conftest import CLIENT_KEY, RunningGateway
from tests.support.fake_openai import FakeOpenAI

CLIENTS = 1000
AT_ONCE = 100


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _live_tasks() -> int:
    """Unfinished asyncio tasks in this process: the gateway's, the fake upstream's, all loops."""
    return sum(1 for obj in gc.get_objects() if isinstance(obj, asyncio.Task) and not obj.done())


async def _leave_after_the_first_bytes(port: int, request: bytes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    await reader.readuntil(b"data: ")  # the stream has started
    writer.close()
    await writer.wait_closed()


def test_a_thousand_clients_leaving_mid_stream_leave_nothing_behind(
    gateway: RunningGateway, fake: FakeOpenAI, capsys: pytest.CaptureFixture[str]
) -> None:
    port = int(gateway.url.rsplit(":", 1)[1])
    body = json.dumps(
        {"model": "fake-slow", "messages": [{"role": "user", "content": "a b c d e f g h"}], "stream": True}
    )
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {CLIENT_KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}"
    ).encode()

    async def clients(count: int) -> None:
        for start in range(0, count, AT_ONCE):
            await asyncio.gather(
                *(_leave_after_the_first_bytes(port, request) for _ in range(min(AT_ONCE, count - start)))
            )

    asyncio.run(clients(AT_ONCE))  # warm up: pools, caches and lazily made objects exist from here on
    _settle(fake, fake.streams_cut)
    fds, tasks, rss, cut = _fds(), _live_tasks(), _rss_mb(), fake.streams_cut

    asyncio.run(clients(CLIENTS))
    _settle(fake, cut + CLIENTS)

    assert fake.streams_cut == cut + CLIENTS  # every upstream request was closed
    assert _fds() <= fds + 2, (fds, _fds())
    assert _live_tasks() <= tasks, (tasks, _live_tasks())
    assert _rss_mb() < rss + 25, (rss, _rss_mb())
    with capsys.disabled():  # the counts go to the test output
        print(
            f"\n{CLIENTS} clients left mid-stream: fds {fds} -> {_fds()}, tasks {tasks} -> {_live_tasks()}, "
            f"rss {rss:.0f} -> {_rss_mb():.0f} MB"
        )


def _settle(fake: FakeOpenAI, cut: int, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while fake.streams_cut < cut and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # the last closes finish on every side
    gc.collect()
