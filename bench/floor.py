"""The floor: the least a Python pass-through on the gateway's stack can do per request.

A plain ASGI app under uvicorn (uvloop, httptools, one worker) that sends each POST body to the
upstream with one pooled aiohttp session and relays the answer: buffered as one body, streamed
chunk by chunk as it comes. No auth, no parsing, no records. Run by bench/suite.py:

    python bench/floor.py --port P --upstream http://127.0.0.1:U/streamed/v1 ...
"""

from __future__ import annotations

import argparse
from typing import Any

import aiohttp
import uvicorn


def make_app(upstreams: dict[str, str]) -> Any:
    session: aiohttp.ClientSession | None = None

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        nonlocal session
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    if session is not None:
                        await session.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        assert session is not None
        # The route picks the upstream: /buffered/... or /streamed/..., as the client asked.
        mode = scope["path"].split("/")[1]
        async with session.post(upstreams[mode], data=body, headers={"content-type": "application/json"}) as up:
            stream = up.headers.get("content-type", "").startswith("text/event-stream")
            headers = [(b"content-type", up.headers.get("content-type", "application/json").encode())]
            if not stream:
                data = await up.read()
                headers.append((b"content-length", str(len(data)).encode()))
                await send({"type": "http.response.start", "status": up.status, "headers": headers})
                await send({"type": "http.response.body", "body": data})
                return
            await send({"type": "http.response.start", "status": up.status, "headers": headers})
            async for chunk in up.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", action="append", default=[], help="NAME=URL, the upstream for /NAME/...")
    args = parser.parse_args()
    upstreams = dict(item.split("=", 1) for item in args.upstream)
    uvicorn.run(
        make_app(upstreams),
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
