"""Backpressure: clients that read nothing while their upstream streams without end.

The gateway (a real process, so its memory is its own) must stop reading each upstream once its
client's socket is full: the upstream's writes block, and the gateway's memory per stream stays
bounded however long the stream runs. A bounded sample of bench/backpressure.py (which reports the
figure for hundreds of streams).
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from tests.conftest import CLIENT_KEY, config_yaml
from tests.support.fake_openai import FakeOpenAI
from tests.support.process import GatewayProcess

STREAMS = 20
# Measured: about 0.8 (bench/backpressure.py); 2.6 with aiohttp's default read buffer (512 KiB).
MIB_PER_STREAM = 2.0


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))


def _settle(fake: FakeOpenAI, quiet: float = 1.5, limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    last, since = fake.endless_sent, time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        if fake.endless_sent != last:
            last, since = fake.endless_sent, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
    pytest.fail("the upstream was never held back: the gateway keeps reading for clients that do not")


def test_clients_that_read_nothing_hold_back_their_upstream(
    tmp_path: Path, fake: FakeOpenAI, fake_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(config_yaml(fake_url))
    body = json.dumps({"model": "fake-endless", "messages": [{"role": "user", "content": "go on"}], "stream": True})
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {CLIENT_KEY}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n{body}"
    ).encode()
    with GatewayProcess(config, workdir=tmp_path, env={"GATEWAY_ACCESS_LOG": "false"}) as gateway:
        assert gateway.proc is not None
        # Warm up with one stream read for a while, then closed.
        warm = socket.create_connection(("127.0.0.1", gateway.port))
        warm.sendall(request)
        for _ in range(50):
            warm.recv(65536)
        warm.close()
        time.sleep(0.5)
        before = _rss_mb(gateway.proc.pid)

        clients = []
        for _ in range(STREAMS):
            sock = socket.create_connection(("127.0.0.1", gateway.port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            sock.sendall(request)
            clients.append(sock)
        _settle(fake)
        held = _rss_mb(gateway.proc.pid)
        per_stream = (held - before) / STREAMS
        out_per_stream = fake.endless_sent / (STREAMS + 1) / 2**20
        cut = fake.streams_cut
        for sock in clients:
            sock.close()
        deadline = time.monotonic() + 10
        while fake.streams_cut < cut + STREAMS and time.monotonic() < deadline:
            time.sleep(0.05)
        assert fake.streams_cut == cut + STREAMS  # every held upstream request was closed with its client
    assert per_stream < MIB_PER_STREAM, (before, held)
    with capsys.disabled():  # the figure goes to the test output
        print(
            f"\n{STREAMS} clients reading nothing: gateway rss {before:.0f} -> {held:.0f} MB "
            f"({per_stream * 1024:.0f} KiB per stream); each upstream got {out_per_stream:.1f} MiB out, then was held"
        )
