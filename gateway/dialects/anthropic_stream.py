"""Anthropic Messages event stream -> OpenAI chat.completion.chunk events, one decoder per request.

message_start              first chunk (role), input and cache usage
content_block_start        tool_use: a new tool_calls[index] with id, name, arguments ""
                           redacted_thinking: a thinking_blocks entry with its data
content_block_delta        text_delta -> content; thinking_delta -> reasoning_content;
                           signature_delta -> thinking_blocks[index].signature;
                           input_json_delta -> tool_calls[index].function.arguments (or content,
                           for the forced JSON-mode tool)
                           server_tool_use: nothing (the upstream runs it)
                           web_search_tool_result: its URLs kept for `citations`
content_block_delta        citations_delta: the cited URL kept for `citations`
message_delta              finish_reason from stop_reason; cumulative output usage; `citations`
                           when no usage chunk follows
message_stop               usage chunk if the client asked, with `citations`; then [DONE] (at finish)
ping                       nothing
error                      raised; the relay turns it into an error event and [DONE]
"""

from __future__ import annotations

import time
from typing import Any

from gateway.dialects.anthropic_helper import anthropic_error, finish_reason, openai_usage
from gateway.dialects.base import Usage
from gateway.dialects.citations import Citations
from gateway.dialects.normalize import text_length
from gateway.dialects.openai import DONE_EVENT, json_object, sse_event
from gateway.dialects.sse import SSEParser
from gateway.errors import UpstreamProtocolError
from gateway.types import JSON


class AnthropicStreamDecoder:
    def __init__(self, model: str, include_usage: bool, json_tool: str | None) -> None:
        self._parser = SSEParser()
        self._include_usage = include_usage
        self._json_tool = json_tool
        self._id = "msg_unknown"
        self._model = model
        self._created = int(time.time())
        self._kinds: dict[int, str] = {}  # content block index -> text | thinking | tool | json | other
        self._tool_index: dict[int, int] = {}  # content block index -> tool_calls index
        self._thinking_index: dict[int, int] = {}  # content block index -> thinking_blocks index
        self._usage: JSON = {}
        self._tools_called = False
        self._done = False
        self._citations = Citations()
        self.text_chars = 0

    @property
    def usage(self) -> Usage | None:
        return openai_usage(self._usage)[1] if self._usage else None

    def feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        for event in self._parser.feed(data):
            obj = json_object(event.data, "stream event")
            handler = _HANDLERS.get(obj.get("type", event.event or ""))
            if handler is not None:
                chunk = handler(self, obj)
                if chunk is not None:
                    out.append(sse_event(chunk))
        return out

    def finish(self) -> list[bytes]:
        self._parser.finish()
        if not self._done:
            raise UpstreamProtocolError("The upstream closed the stream before the reply was complete.")
        return [DONE_EVENT]

    # --- events ---

    def _message_start(self, obj: JSON) -> JSON:
        message = obj.get("message") or {}
        self._id = message.get("id") or self._id
        self._model = message.get("model") or self._model
        self._usage.update(message.get("usage") or {})
        return self._chunk({"role": "assistant", "content": ""})

    def _block_start(self, obj: JSON) -> JSON | None:
        index = obj.get("index", 0)
        block = obj.get("content_block") or {}
        kind = block.get("type")
        self._citations.from_anthropic_block(block)
        if kind == "tool_use" and block.get("name") == self._json_tool:
            self._kinds[index] = "json"
            return None
        if kind == "tool_use":
            self._kinds[index] = "tool"
            position = self._tool_index[index] = len(self._tool_index)
            self._tools_called = True
            call = {
                "index": position,
                "id": block.get("id"),
                "type": "function",
                "function": {"name": block.get("name"), "arguments": ""},
            }
            return self._chunk({"tool_calls": [call]})
        if kind in ("thinking", "redacted_thinking"):
            self._kinds[index] = "thinking"
            position = self._thinking_index[index] = len(self._thinking_index)
            if kind == "redacted_thinking":
                entry = {"index": position, "type": "redacted_thinking", "data": block.get("data")}
                return self._chunk({"thinking_blocks": [entry]})
            return None
        self._kinds[index] = "text" if kind == "text" else "other"
        text = block.get("text")
        return self._chunk({"content": text}) if kind == "text" and text else None

    def _block_delta(self, obj: JSON) -> JSON | None:
        index = obj.get("index", 0)
        delta = obj.get("delta") or {}
        kind = delta.get("type")
        if kind == "text_delta":
            return self._chunk({"content": delta.get("text", "")})
        if kind == "thinking_delta":
            return self._chunk({"reasoning_content": delta.get("thinking", "")})
        if kind == "signature_delta":
            entry = {
                "index": self._thinking_index.get(index, 0),
                "type": "thinking",
                "signature": delta.get("signature"),
            }
            return self._chunk({"thinking_blocks": [entry]})
        if kind == "input_json_delta":
            partial = delta.get("partial_json", "")
            block_kind = self._kinds.get(index)
            if block_kind == "json":
                return self._chunk({"content": partial}) if partial else None
            if block_kind != "tool":
                return None  # a server tool's input (web search): the upstream runs it
            call = {"index": self._tool_index[index], "function": {"arguments": partial}}
            return self._chunk({"tool_calls": [call]})
        if kind == "citations_delta":
            self._citations.add((delta.get("citation") or {}).get("url"))
        return None

    def _message_delta(self, obj: JSON) -> JSON:
        self._usage.update({k: v for k, v in (obj.get("usage") or {}).items() if v is not None})
        stop = (obj.get("delta") or {}).get("stop_reason")
        answered_by_json = self._json_tool is not None and not self._tools_called
        chunk = self._chunk({}, finish_reason(stop, answered_by_json))
        if not self._include_usage:
            self._citations.attach(chunk)
        return chunk

    def _message_stop(self, obj: JSON) -> JSON | None:
        self._done = True
        if not self._include_usage:
            return None
        chunk: JSON = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "choices": [],
            "usage": openai_usage(self._usage)[0],
        }
        self._citations.attach(chunk)
        return chunk

    def _error(self, obj: JSON) -> None:
        raise anthropic_error(obj)

    def _chunk(self, delta: JSON, finish: str | None = None) -> JSON:
        self.text_chars += text_length(delta)
        return {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }


_HANDLERS: dict[str, Any] = {
    "message_start": AnthropicStreamDecoder._message_start,
    "content_block_start": AnthropicStreamDecoder._block_start,
    "content_block_delta": AnthropicStreamDecoder._block_delta,
    "message_delta": AnthropicStreamDecoder._message_delta,
    "message_stop": AnthropicStreamDecoder._message_stop,
    "error": AnthropicStreamDecoder._error,
}
