"""Memory per stream when clients read slowly or not at all (backpressure).

An upstream streams as fast as it can (events of about 1 KiB, without end). N clients ask the
gateway (one worker, a separate process) for such a stream and then read nothing. The gateway must
stop reading the upstream once its client's socket is full, so its memory per stream stays bounded
however long the stream: the upstream's writes block instead. Reported: the gateway's resident
memory per stream once every stream has stopped moving, and how many bytes each upstream response
got out (most of them sit in the kernel's socket buffers, not in the gateway). Then one client that
reads slowly (64 KiB every 50 ms) for a while, to show a slow reader is still served.

    python3 bench/backpressure.py --streams 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from aiohttp import web
from run import _free_port, _wait_port  # bench/run.py, beside this script

KEY = "sk-bench"
EVENT = (
    "data: "
    + json.dumps(
        {
            "id": "chatcmpl-bp",
            "object": "chat.completion.chunk",
            "created": 1763700000,
            "model": "endless",
            "choices": [{"index": 0, "delta": {"content": "x" * 900}, "finish_reason": None}],
        },
        separators=(",", ":"),
    )
    + "\n\n"
).encode()


class Upstream:
    """An OpenAI-style upstream whose streams never end; counts what each got out."""

    def __init__(self) -> None:
        self.sent: dict[int, int] = {}
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.port = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    async def _start(self) -> int:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._stream)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        me = id(response)
        self.sent[me] = 0
        try:
            while True:
                await response.write(EVENT)  # blocks once the gateway stops reading
                self.sent[me] += len(EVENT)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return response

    def total(self) -> int:
        return sum(self.sent.values())


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _request() -> bytes:
    body = json.dumps({"model": "endless", "messages": [{"role": "user", "content": "go"}], "stream": True})
    return (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {KEY}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n{body}"
    ).encode()


def _settle(upstream: Upstream, seconds: float = 2.0, limit: float = 60.0) -> None:
    """Until the upstream's total stops growing for `seconds`."""
    deadline = time.monotonic() + limit
    last, since = upstream.total(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = upstream.total()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= seconds:
            return
    raise RuntimeError("the upstream never stopped sending: nothing holds it back")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=200, help="clients that read nothing")
    args = parser.parse_args()
    upstream = Upstream()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "gateway.yaml"
        config.write_text(
            f"keys: [{{name: bench, key: {KEY}}}]\n"
            f"upstreams: [{{name: up, dialect: openai, base_url: 'http://127.0.0.1:{upstream.port}/v1', api_key: k}}]\n"
            "models: [{name: endless, upstream: up}]\n"
        )
        port = _free_port()
        gateway = subprocess.Popen(
            [str(Path(sys.executable).parent / "gateway"), "serve", "--config", str(config), "--port", str(port)],
            env={**os.environ, "GATEWAY_LOG_LEVEL": "warning", "GATEWAY_ACCESS_LOG": "false"},
        )
        try:
            _wait_port(port)
            _slow_reader(port, upstream, seconds=1)  # warm up: pools and lazily made objects exist from here
            time.sleep(1)
            base = _rss_mb(gateway.pid)
            clients = []
            for _ in range(args.streams):
                sock = socket.create_connection(("127.0.0.1", port))
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
                sock.sendall(_request())
                clients.append(sock)
            _settle(upstream)
            held = _rss_mb(gateway.pid)
            sent = upstream.total()
            per_stream_kib = (held - base) * 1024 / args.streams
            for sock in clients:
                sock.close()
            time.sleep(2)
            after = _rss_mb(gateway.pid)
            rate = _slow_reader(port, upstream, seconds=5)
        finally:
            gateway.terminate()
            gateway.wait(20)
    result = {
        "streams": args.streams,
        "gateway_rss_mb": {"before": round(base, 1), "held": round(held, 1), "after_close": round(after, 1)},
        "gateway_kib_per_stream": round(per_stream_kib, 1),
        "upstream_mib_out_per_stream": round(sent / args.streams / 2**20, 2),
        "slow_reader_kib_per_s": round(rate / 1024, 1),
    }
    print(
        f"{args.streams} streams whose clients read nothing: gateway rss {base:.1f} -> {held:.1f} MB "
        f"({per_stream_kib:.0f} KiB per stream), {after:.1f} MB once they closed; each upstream response got "
        f"{sent / args.streams / 2**20:.2f} MiB out before it was held back (mostly kernel socket buffers)."
    )
    print(f"one client reading 64 KiB every 50 ms got {rate / 1024:.0f} KiB/s")
    print(json.dumps(result))
    return 0


def _slow_reader(port: int, upstream: Upstream, seconds: float) -> float:
    """Read one endless stream 64 KiB every 50 ms for `seconds`; returns bytes/s received."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(_request())
    got = 0
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        got += len(sock.recv(64 * 1024))
        time.sleep(0.05)
    sock.close()
    return got / (time.monotonic() - started)


if __name__ == "__main__":
    sys.exit(main())
