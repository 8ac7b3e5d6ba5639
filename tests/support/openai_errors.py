"""OpenAI's error replies, as the fake OpenAI-compatible upstreams send them."""

from __future__ import annotations

import json

from aiohttp import web


def type_for(status: int) -> str:
    return {
        400: "invalid_request_error",
        401: "invalid_request_error",
        404: "invalid_request_error",
        429: "requests",
    }.get(status, "server_error")


def openai_error(
    status: int,
    message: str,
    kind: str,
    code: str | None,
    headers: dict[str, str] | None = None,
    param: str | None = None,
) -> web.Response:
    body = {
        "error": {
            "message": message,
            "type": kind,
            "param": param or ("messages" if status == 400 else None),
            "code": code,
        }
    }
    return web.Response(
        status=status,
        body=json.dumps(body, indent=2).encode(),
        headers={"content-type": "application/json", **(headers or {})},
    )
