"""Servers in background threads with their own event loops, so sync clients can call them."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine
from typing import Any

import uvicorn
from aiohttp import web

from gateway.http.protocol import ConnectionLimits, ServerConfig


class LoopThread:
    """An event loop running in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 10) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


class AiohttpServer:
    """An aiohttp application served on a free loopback port in its own thread."""

    def __init__(self, app: web.Application) -> None:
        self._thread = LoopThread()
        self._runner = web.AppRunner(app, shutdown_timeout=0.5, handler_cancellation=True)
        self.port = self._thread.run(self._start())

    async def _start(self) -> int:
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        return int(server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._thread.run(self._runner.cleanup())
        self._thread.close()


class UvicornServer:
    """An ASGI app in a real uvicorn server (uvloop, the gateway's HTTP protocol) on a free loopback port."""

    def __init__(self, app: Any, limits: ConnectionLimits | None = None, **options: Any) -> None:
        config = ServerConfig(
            app,
            limits=limits or ConnectionLimits(),
            host="127.0.0.1",
            port=0,
            loop="uvloop",
            log_level="warning",
            lifespan="on",
            **options,
        )
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the gateway did not start")
            time.sleep(0.01)
        self.port = int(self.server.servers[0].sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.should_exit = True
        self._thread.join(10)
