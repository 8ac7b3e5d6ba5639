"""A fake Anthropic Messages upstream: a real aiohttp server on loopback, Anthropic's wire format.

The model name picks the reply; streams are derived from the reply's content blocks the way the
real API sends them (`event:` + `data:` lines, message_start ... message_stop, pings, deltas split
into pieces, signature_delta after thinking, input_json_delta for tool input):

    claude-text          a text reply
    claude-tools         text, then two tool_use blocks (stop_reason tool_use)
    claude-thinking      a thinking block with its signature, then text
    claude-json          a call to the forced JSON-mode tool
    claude-search        a web search: server_tool_use, web_search_tool_result, then text citing a
                         result (streamed with citations_delta); usage counts the search
    claude-error-after-200   a text delta, then an `error` event (overloaded)
    claude-status-NNN    HTTP NNN with an Anthropic error body
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

ANTHROPIC_KEY = "sk-ant-upstream-secret-987654321"
USAGE_START = {
    "input_tokens": 10,
    "cache_creation_input_tokens": 20,
    "cache_read_input_tokens": 100,
    "output_tokens": 1,
}
OUTPUT_TOKENS = 30
COUNTED_BASE = 1000  # the fake's count_tokens: this plus 10 per message

REPLIES: dict[str, tuple[list[dict[str, Any]], str]] = {
    "claude-text": ([{"type": "text", "text": "Hello there, how can I help?"}], "end_turn"),
    "claude-tools": (
        [
            {"type": "text", "text": "Let me check both."},
            {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": {"city": "Paris", "unit": "c"}},
            {"type": "tool_use", "id": "toolu_01B", "name": "get_time", "input": {"tz": "Europe/Paris"}},
        ],
        "tool_use",
    ),
    "claude-thinking": (
        [
            {
                "type": "thinking",
                "thinking": "The user greets me. I should answer.",
                "signature": "EqQBCgIYAhIM1gbcDa9GJwZA",
            },
            {"type": "text", "text": "Hi! Nice to meet you."},
        ],
        "end_turn",
    ),
    "claude-json": (
        [{"type": "tool_use", "id": "toolu_J", "name": "json_tool_call", "input": {"answer": 42, "ok": True}}],
        "tool_use",
    ),
    "claude-error-after-200": ([{"type": "text", "text": "Partial answer"}], "end_turn"),
    "claude-search": (
        [
            {"type": "text", "text": "Let me look that up."},
            {"type": "server_tool_use", "id": "srvtoolu_01", "name": "web_search", "input": {"query": "hangzhou"}},
            {
                "type": "web_search_tool_result",
                "tool_use_id": "srvtoolu_01",
                "content": [
                    {
                        "type": "web_search_result",
                        "url": "https://claude.example/weather",
                        "title": "Weather",
                        "encrypted_content": "EqgfCioIARgBIiQ3YTAwMjY1Mi1mZjM5LTQ1NGUtODgxNC1kNjNjNTk1ZWI3Y2Y",
                        "page_age": "April 30, 2025",
                    },
                    {
                        "type": "web_search_result",
                        "url": "https://claude.example/news",
                        "title": "News",
                        "encrypted_content": "EqgfCioIARgBIiQ3YTAwMjY1Mi1mZjM5LTQ1NGUtODgxNC1kNjNjNTk1ZWI3Y2Z",
                        "page_age": None,
                    },
                ],
            },
            {
                "type": "text",
                "text": "It is sunny in Hangzhou.",
                "citations": [
                    {
                        "type": "web_search_result_location",
                        "url": "https://claude.example/weather",
                        "title": "Weather",
                        "encrypted_index": "Eo8BCioIAhgBIiQyYjQ0OWJmZi1lM2M2LTRjMjQtODRkOS00ZjU0MjA2ZjQ1YjQ",
                        "cited_text": "Sunny, 25 degrees.",
                    }
                ],
            },
        ],
        "end_turn",
    ),
}
SEARCH_USAGE = {"server_tool_use": {"web_search_requests": 1}}


@dataclass
class Seen:
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class FakeAnthropic:
    requests: list[Seen] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/messages", self.messages)
        app.router.add_post("/v1/messages/count_tokens", self.count_tokens)
        return app

    async def count_tokens(self, request: web.Request) -> web.Response:
        """Anthropic's token count: here 1,000 plus 10 per message, unlike any estimate. Models
        `claude-status-NNN` fail with NNN."""
        body = await request.json()
        self.requests.append(Seen({k.lower(): v for k, v in request.headers.items()}, body))
        if request.headers.get("x-api-key") != ANTHROPIC_KEY:
            return _error(401, "authentication_error", "invalid x-api-key")
        model = str(body.get("model", ""))
        if model.startswith("claude-status-"):
            status = int(model.removeprefix("claude-status-"))
            return _error(status, "invalid_request_error", f"fake upstream says {status}")
        if "max_tokens" in body or "stream" in body:
            return _error(400, "invalid_request_error", "max_tokens: Extra inputs are not permitted")
        return web.json_response({"input_tokens": COUNTED_BASE + 10 * len(body["messages"])})

    async def messages(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(Seen({k.lower(): v for k, v in request.headers.items()}, body))
        if request.headers.get("x-api-key") != ANTHROPIC_KEY:
            return _error(401, "authentication_error", "invalid x-api-key")
        if request.headers.get("anthropic-version") != "2023-06-01":
            return _error(400, "invalid_request_error", "anthropic-version header is required")
        if "max_tokens" not in body:
            return _error(400, "invalid_request_error", "max_tokens: Field required")
        model = body["model"]
        if model.startswith("claude-status-"):
            status = int(model.removeprefix("claude-status-"))
            kind = "overloaded_error" if status == 529 else "invalid_request_error"
            return _error(status, kind, f"fake upstream says {status}")
        blocks, stop_reason = REPLIES[model]
        if body.get("stream"):
            return await self._stream(request, model, blocks, stop_reason)
        message = _message(model, blocks, stop_reason)
        return web.Response(body=json.dumps(message).encode(), content_type="application/json")

    async def _stream(
        self, request: web.Request, model: str, blocks: list[dict[str, Any]], stop_reason: str
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream; charset=utf-8"})
        await resp.prepare(request)
        for name, data in _events(model, blocks, stop_reason):
            await resp.write(f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode())
            await asyncio.sleep(0.001)
        await resp.write_eof()
        return resp


def _message(
    model: str, content: list[dict[str, Any]], stop_reason: str | None, output: int = OUTPUT_TOKENS
) -> dict[str, Any]:
    usage = {**USAGE_START, "output_tokens": output}
    if model == "claude-search" and stop_reason is not None:
        usage.update(SEARCH_USAGE)
    return {
        "id": "msg_01FakeAnthropic",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": usage,
    }


def _pieces(text: str, n: int = 3) -> list[str]:
    size = max(1, len(text) // n)
    return [text[i : i + size] for i in range(0, len(text), size)]


def _events(model: str, blocks: list[dict[str, Any]], stop_reason: str) -> list[tuple[str, dict[str, Any]]]:
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": _message(model, [], None, output=1)}),
        ("ping", {"type": "ping"}),
    ]
    for index, block in enumerate(blocks):
        kind = block["type"]
        empty = {
            "text": {"type": "text", "text": ""},
            "thinking": {"type": "thinking", "thinking": "", "signature": ""},
            "tool_use": {**block, "input": {}},
            "server_tool_use": {**block, "input": {}},
            "web_search_tool_result": block,  # comes whole, in its start event
        }[kind]
        events.append(("content_block_start", {"type": "content_block_start", "index": index, "content_block": empty}))
        if kind == "text":
            deltas = [{"type": "citations_delta", "citation": c} for c in block.get("citations", [])]
            deltas += [{"type": "text_delta", "text": p} for p in _pieces(block["text"])]
        elif kind == "web_search_tool_result":
            deltas = []
        elif kind == "thinking":
            deltas = [{"type": "thinking_delta", "thinking": p} for p in _pieces(block["thinking"])]
            deltas.append({"type": "signature_delta", "signature": block["signature"]})
        else:
            deltas = [{"type": "input_json_delta", "partial_json": ""}]
            deltas += [{"type": "input_json_delta", "partial_json": p} for p in _pieces(json.dumps(block["input"]), 4)]
        for delta in deltas:
            events.append(("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}))
            if model == "claude-error-after-200":
                error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
                return [*events, ("error", error)]
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    events.append(
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": OUTPUT_TOKENS, **(SEARCH_USAGE if model == "claude-search" else {})},
            },
        )
    )
    events.append(("message_stop", {"type": "message_stop"}))
    return events


def _error(status: int, kind: str, message: str) -> web.Response:
    body = {"type": "error", "error": {"type": kind, "message": message}}
    return web.Response(status=status, body=json.dumps(body).encode(), content_type="application/json")
