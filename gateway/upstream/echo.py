"""The built-in offline upstream: answers in the OpenAI wire format with the last user message.

It behaves like a real upstream as far as the gateway can tell (same bytes, streamed with optional
pauses, usage numbers, `max_tokens` truncation), so the quickstart and the HTTP-layer tests need no network.
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
import struct
import time
from typing import Any

import orjson

from gateway.dialects.base import UpstreamRequest
from gateway.dialects.normalize import completion_id
from gateway.dialects.openai import DONE_EVENT, sse_event
from gateway.upstream.mock import MockResponse

_PIECES = re.compile(r"\s*\S+\s*|\s+")


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


class EchoReply:
    """What the echo upstream answers to one request body."""

    def __init__(self, body: dict[str, Any]) -> None:
        messages = body.get("messages") or []
        last_user = next((m for m in reversed(messages) if m.get("role") == "user"), None)
        text = _text_of(last_user.get("content")) if last_user else ""
        self.model = str(body.get("model") or "echo")
        self.pieces = _PIECES.findall(text) or ["(the last user message had no text)"]
        cap = body.get("max_completion_tokens") or body.get("max_tokens")
        self.finish_reason = "stop"
        if isinstance(cap, int) and cap < len(self.pieces):
            self.pieces = self.pieces[:cap]
            self.finish_reason = "length"
        self.prompt_tokens = sum(4 + _tokens(_text_of(m.get("content"))) for m in messages) + 3
        self.completion_tokens = len(self.pieces)
        self.id = completion_id()
        self.created = int(time.time())
        options = body.get("stream_options") or {}
        self.include_usage = bool(options.get("include_usage"))

    def usage(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        }

    def completion(self) -> bytes:
        message = {"role": "assistant", "content": "".join(self.pieces), "refusal": None}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": self.finish_reason}
        return orjson.dumps(
            {
                "id": self.id,
                "object": "chat.completion",
                "created": self.created,
                "model": self.model,
                "choices": [choice],
                "usage": self.usage(),
            }
        )

    def events(self) -> list[bytes]:
        def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [choice],
            }

        events = [sse_event(chunk({"role": "assistant", "content": ""}, None))]
        events += [sse_event(chunk({"content": piece}, None)) for piece in self.pieces]
        events.append(sse_event(chunk({}, self.finish_reason)))
        if self.include_usage:
            events.append(sse_event({**chunk({}, None), "choices": [], "usage": self.usage()}))
        events.append(DONE_EVENT)
        return events


class EchoEmbeddings:
    """What the echo upstream answers to an embeddings body: a unit vector per input, the same for
    the same text (from its SHA-256), `dimensions` long (default 8), floats or base64 float32."""

    def __init__(self, body: dict[str, Any]) -> None:
        raw = body.get("input")
        items = [raw] if isinstance(raw, str) or (isinstance(raw, list) and raw and isinstance(raw[0], int)) else raw
        self.inputs = [str(item) for item in items or []]
        self.dimensions = int(body.get("dimensions") or 8)
        self.base64 = body.get("encoding_format") == "base64"
        self.model = str(body.get("model") or "echo")

    def _vector(self, text: str) -> list[float]:
        seed = hashlib.sha256(text.encode()).digest()
        values = [seed[i % 32] / 127.5 - 1.0 + i * 1e-3 for i in range(self.dimensions)]
        norm = math.sqrt(sum(v * v for v in values)) or 1.0
        return [v / norm for v in values]

    def reply(self) -> bytes:
        data = []
        for i, text in enumerate(self.inputs):
            vector = self._vector(text)
            embedding: Any = (
                base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode() if self.base64 else vector
            )
            data.append({"object": "embedding", "index": i, "embedding": embedding})
        tokens = sum(_tokens(text) for text in self.inputs)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return orjson.dumps({"object": "list", "data": data, "model": self.model, "usage": usage})


class EchoTransport:
    def __init__(self, delay_ms: float = 0.0) -> None:
        self._delay = delay_ms / 1000

    async def open(self, request: UpstreamRequest) -> MockResponse:
        try:
            body = orjson.loads(request.body)
            if request.url.endswith("/embeddings"):
                return MockResponse(200, {"content-type": "application/json"}, [EchoEmbeddings(body).reply()])
            reply = EchoReply(body)
        except (orjson.JSONDecodeError, AttributeError, TypeError):
            error = {
                "error": {
                    "message": "echo: cannot read the request",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": None,
                }
            }
            return MockResponse(400, {"content-type": "application/json"}, [orjson.dumps(error)])
        if body.get("stream"):
            headers = {"content-type": "text/event-stream; charset=utf-8"}
            return MockResponse(200, headers, reply.events(), self._delay)
        return MockResponse(200, {"content-type": "application/json"}, [reply.completion()])

    async def aclose(self) -> None:
        return None
