"""A fake DashScope upstream (Qwen's own protocol): a real aiohttp server on loopback.

POST /api/v1/services/aigc/text-generation/generation with `input.messages` and `parameters`.
Buffered: `{request_id, output: {choices, search_info}, usage}`. Streamed (`X-DashScope-SSE: enable`):
events with `id:`, `event:result` and the `:HTTP_STATUS/200` comment line, each message the
increment (`incremental_output`), finish_reason "null" until the last, usage cumulative, no [DONE].
The model name picks failures:

    qwen-status-NNN        HTTP NNN with DashScope's error body {code, message, request_id}
    qwen-error-after-200   one increment, then an `event:error`
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

DASHSCOPE_KEY = "sk-dashscope-secret-13579"
PATH = "/api/v1/services/aigc/text-generation/generation"
REQUEST_ID = "5f3b1c2e-8d2a-9b1f-a7c4-0e6d2f1a3b4c"
TEXT = "Hangzhou is sunny today."
REASONING = "The user asks about the weather."
SOURCES = [
    {"index": 1, "title": "Weather", "url": "https://qwen.example/weather", "site_name": "Example", "icon": ""},
    {"index": 2, "title": "News", "url": "https://qwen.example/news", "site_name": "Example", "icon": ""},
]


@dataclass
class Seen:
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class FakeDashScope:
    requests: list[Seen] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(PATH, self.generation)
        return app

    async def generation(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(Seen({k.lower(): v for k, v in request.headers.items()}, body))
        if request.headers.get("authorization") != f"Bearer {DASHSCOPE_KEY}":
            return _error(401, "InvalidApiKey", "Invalid API-key provided.")
        model = body.get("model", "")
        if model.startswith("qwen-status-"):
            status = int(model.removeprefix("qwen-status-"))
            return _error(status, "InvalidParameter" if status < 500 else "InternalError", f"fake says {status}")
        parameters = body.get("parameters") or {}
        if not isinstance(body.get("input", {}).get("messages"), list) or parameters.get("result_format") != "message":
            return _error(400, "InvalidParameter", "input.messages and result_format=message are expected")
        fmt = (parameters.get("response_format") or {}).get("type")
        text = '{"ok": true}' if fmt == "json_object" else TEXT
        thinking = parameters.get("enable_thinking") is True
        search = parameters.get("enable_search") is True
        sources = search and (parameters.get("search_options") or {}).get("enable_source") is True
        if request.headers.get("x-dashscope-sse") == "enable":
            return await self._stream(request, model, text, thinking, search, sources)
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if thinking:
            message["reasoning_content"] = REASONING
        output: dict[str, Any] = {"choices": [{"finish_reason": "stop", "message": message}]}
        if sources:
            output["search_info"] = {"search_results": SOURCES}
        reply = {"request_id": REQUEST_ID, "output": output, "usage": _usage(12, 8, thinking, search)}
        return web.json_response(reply)

    async def _stream(
        self, request: web.Request, model: str, text: str, thinking: bool, search: bool, sources: bool
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream;charset=UTF-8"})
        await resp.prepare(request)
        pieces: list[dict[str, Any]] = []
        if thinking:
            pieces += [{"content": "", "reasoning_content": p} for p in (REASONING[:10], REASONING[10:])]
        pieces += [{"content": p, "reasoning_content": ""} for p in (text[:6], text[6:])]
        for n, piece in enumerate(pieces, 1):
            last = n == len(pieces)
            output: dict[str, Any] = {
                "choices": [{"message": {"role": "assistant", **piece}, "finish_reason": "stop" if last else "null"}]
            }
            if sources and n == 1:  # DashScope sends the search results with the first increment
                output["search_info"] = {"search_results": SOURCES}
            data = {"output": output, "usage": _usage(12, n, thinking, search), "request_id": REQUEST_ID}
            await resp.write(f"id:{n}\nevent:result\n:HTTP_STATUS/200\ndata:{json.dumps(data)}\n\n".encode())
            if model == "qwen-error-after-200":
                error = {"code": "DataInspectionFailed", "message": "Output may contain inappropriate content."}
                await resp.write(f"id:{n + 1}\nevent:error\n:HTTP_STATUS/400\ndata:{json.dumps(error)}\n\n".encode())
                break
        await resp.write_eof()
        return resp


def _usage(prompt: int, completion: int, thinking: bool, search: bool) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "input_tokens": prompt,
        "output_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 2},
    }
    if thinking:
        usage["output_tokens_details"] = {"reasoning_tokens": 1}
    if search:
        usage["plugins"] = {"search": {"count": 1, "strategy": "turbo"}}
    return usage


def _error(status: int, code: str, message: str) -> web.Response:
    body = {"code": code, "message": message, "request_id": REQUEST_ID}
    return web.Response(status=status, body=json.dumps(body).encode(), content_type="application/json")
