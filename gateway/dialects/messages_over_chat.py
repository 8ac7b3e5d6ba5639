"""Anthropic Messages in, to an OpenAI-compatible upstream: the Messages body becomes a chat
completions request (then written for the vendor by its chat translator, as any chat request is), and
the chat reply and chunks become an Anthropic message and its events. Pure: no I/O."""

from __future__ import annotations

from typing import Any

import orjson

from gateway.dialects.base import DecodedReply, Usage
from gateway.dialects.over_chat import ChatEvents, OverChat
from gateway.errors import InvalidRequest
from gateway.protocol.messages import MessagesRequest, text_of
from gateway.types import JSON

# OpenAI finish_reason -> Anthropic stop_reason
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}
_TOOL_CHOICES = {"auto": "auto", "any": "required", "none": "none"}


class MessagesOverChat(OverChat):
    """The Messages API for one vendor, through that vendor's chat translator."""

    @staticmethod
    def chat_body(src: JSON) -> JSON:
        return chat_body(src)

    def decode_reply(self, body: bytes, request: MessagesRequest) -> DecodedReply:
        decoded = self._chat.decode_reply(body, self.chat_request(request))
        message = message_of(orjson.loads(decoded.body), decoded.usage)
        return DecodedReply(orjson.dumps(message), decoded.usage)

    def stream_decoder(self, request: MessagesRequest) -> MessageEvents:
        return MessageEvents(self._chat.stream_decoder(self.chat_request(request)), request.model)


# --- request ----------------------------------------------------------------------------------


def chat_body(src: JSON) -> JSON:
    """A Messages body as a chat completions body: system, content blocks, images, tools and tool
    results, tool_choice, thinking, stop_sequences, metadata.user_id."""
    messages: list[JSON] = []
    system = text_of(src.get("system"))
    if system:
        messages.append({"role": "system", "content": system})
    for i, message in enumerate(src["messages"]):
        messages += _messages(message, i)
    body: JSON = {"model": src["model"], "messages": messages, "max_tokens": src["max_tokens"]}
    for name in ("temperature", "top_p", "stream"):
        if src.get(name) is not None:
            body[name] = src[name]
    if src.get("stream"):
        body["stream_options"] = {"include_usage": True}
    if src.get("stop_sequences"):
        body["stop"] = src["stop_sequences"][:4]
    tools = src.get("tools")
    if tools:
        body["tools"] = [_tool(t, i) for i, t in enumerate(tools)]
    choice = src.get("tool_choice")
    if isinstance(choice, dict):
        kind = choice.get("type")
        if kind == "tool":
            body["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
        elif kind in _TOOL_CHOICES:
            body["tool_choice"] = _TOOL_CHOICES[kind]
        if choice.get("disable_parallel_tool_use"):
            body["parallel_tool_calls"] = False
    thinking = src.get("thinking")
    if isinstance(thinking, dict):
        if thinking.get("type") == "disabled":
            body["enable_thinking"] = False
        elif isinstance(thinking.get("budget_tokens"), int):
            body["thinking"] = {"type": "enabled", "budget_tokens": thinking["budget_tokens"]}
        else:
            body["enable_thinking"] = True
    metadata = src.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        body["user"] = metadata["user_id"]
    return body


def _messages(message: JSON, i: int) -> list[JSON]:
    role, content = message["role"], message["content"]
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    out: list[JSON] = []
    parts: list[JSON] = []
    calls: list[JSON] = []
    for j, block in enumerate(content):
        where = f"messages[{i}].content[{j}]"
        if not isinstance(block, dict):
            raise InvalidRequest(f"'{where}' must be a content block (an object).", param=where)
        kind = block.get("type")
        if kind == "text":
            parts.append({"type": "text", "text": str(block.get("text", ""))})
        elif kind == "image":
            parts.append({"type": "image_url", "image_url": {"url": _image_url(block.get("source"), where)}})
        elif kind == "tool_use" and role == "assistant":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {"name": block.get("name"), "arguments": arguments},
                }
            )
        elif kind == "tool_result" and role == "user":
            # Tool results come first: chat wants them right after the assistant's tool calls.
            out.append(
                {"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": text_of(block.get("content"))}
            )
        elif kind in ("thinking", "redacted_thinking"):
            continue  # a previous turn's thinking: chat upstreams take none back
        else:
            raise InvalidRequest(f"'{where}.type' {kind!r} is not supported for this model.", param=f"{where}.type")
    if role == "assistant":
        text = "".join(str(p.get("text", "")) for p in parts if p["type"] == "text")
        assistant: JSON = {"role": "assistant", "content": text or None}
        if calls:
            assistant["tool_calls"] = calls
        if text or calls:
            out.append(assistant)
    elif parts:
        out.append({"role": "user", "content": parts})
    return out


def _image_url(source: Any, where: str) -> str:
    if isinstance(source, dict):
        if source.get("type") == "base64" and isinstance(source.get("data"), str):
            return f"data:{source.get('media_type') or 'image/png'};base64,{source['data']}"
        if source.get("type") == "url" and isinstance(source.get("url"), str):
            return str(source["url"])
    raise InvalidRequest(f"'{where}.source' must be a base64 or url image source.", param=f"{where}.source")


def _tool(tool: Any, i: int) -> JSON:
    if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
        raise InvalidRequest(f"'tools[{i}]' must be an object with a `name`.", param=f"tools[{i}]")
    function: JSON = {"name": tool["name"], "parameters": tool.get("input_schema") or {"type": "object"}}
    if isinstance(tool.get("description"), str):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


# --- reply ------------------------------------------------------------------------------------


def message_of(completion: JSON, usage: Usage | None) -> JSON:
    """An OpenAI chat.completion as an Anthropic message."""
    choices = completion.get("choices") or [{}]
    choice = choices[0]
    message = choice.get("message") or {}
    content: list[JSON] = []
    if message.get("reasoning_content"):
        content.append({"type": "thinking", "thinking": message["reasoning_content"], "signature": ""})
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id"),
                "name": function.get("name"),
                "input": _input(function.get("arguments")),
            }
        )
    return {
        "id": "msg_" + str(completion.get("id", "")).removeprefix("chatcmpl-"),
        "type": "message",
        "role": "assistant",
        "model": completion.get("model"),
        "content": content,
        "stop_reason": STOP_REASONS.get(choice.get("finish_reason") or "stop", "end_turn"),
        "stop_sequence": None,
        "usage": anthropic_usage(usage),
    }


def anthropic_usage(usage: Usage | None) -> JSON:
    if usage is None:
        return {"input_tokens": 0, "output_tokens": 0}
    cached = min(usage.cached_tokens, usage.prompt_tokens)
    return {
        "input_tokens": max(usage.prompt_tokens - cached - usage.cache_write_tokens, 0),
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": usage.cache_write_tokens,
        "output_tokens": usage.completion_tokens,
    }


def _input(arguments: Any) -> Any:
    try:
        value = orjson.loads(arguments) if isinstance(arguments, str) and arguments else {}
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def event(name: str, data: JSON) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps({"type": name, **data}) + b"\n\n"


class MessageEvents(ChatEvents):
    """Turns a chat stream (its decoder's normalized chunks) into Anthropic's event sequence:
    `message_start`, `ping`, per content block `content_block_start` / `_delta` / `_stop`,
    `message_delta` (stop reason and usage), `message_stop`."""

    def __init__(self, chat: Any, model: str) -> None:
        super().__init__(chat)
        self._model = model
        self._started = False
        self._block: tuple[str, int] | None = None  # (kind, tool call index) of the open block
        self._index = -1

    def _start(self, chunk: JSON) -> list[bytes]:
        if self._started:
            return []
        self._started = True
        message: JSON = {
            "id": "msg_" + str(chunk.get("id", "")).removeprefix("chatcmpl-"),
            "type": "message",
            "role": "assistant",
            "model": chunk.get("model") or self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},  # known at the end: see `message_delta`
        }
        return [event("message_start", {"message": message}), event("ping", {})]

    def _delta(self, delta: JSON) -> list[bytes]:
        out: list[bytes] = []
        if delta.get("reasoning_content"):
            out += self._open("thinking", 0, {"type": "thinking", "thinking": "", "signature": ""})
            out.append(self._block_delta({"type": "thinking_delta", "thinking": delta["reasoning_content"]}))
        if delta.get("content"):
            out += self._open("text", 0, {"type": "text", "text": ""})
            out.append(self._block_delta({"type": "text_delta", "text": delta["content"]}))
        for call in delta.get("tool_calls") or []:
            function = call.get("function") or {}
            position = call.get("index", 0)
            if self._block != ("tool", position):
                block = {"type": "tool_use", "id": call.get("id"), "name": function.get("name"), "input": {}}
                out += self._open("tool", position, block)
            if function.get("arguments"):
                out.append(self._block_delta({"type": "input_json_delta", "partial_json": function["arguments"]}))
        return out

    def _open(self, kind: str, position: int, block: JSON) -> list[bytes]:
        if self._block == (kind, position):
            return []
        out = self._close()
        self._index += 1
        self._block = (kind, position)
        out.append(event("content_block_start", {"index": self._index, "content_block": block}))
        return out

    def _close(self) -> list[bytes]:
        if self._block is None:
            return []
        self._block = None
        return [event("content_block_stop", {"index": self._index})]

    def _block_delta(self, delta: JSON) -> bytes:
        return event("content_block_delta", {"index": self._index, "delta": delta})

    def finish(self) -> list[bytes]:
        self._chat.finish()  # raises if the upstream's stream ended early
        out = [*self._start({}), *self._close()]
        usage = anthropic_usage(self.usage)
        stop_reason = STOP_REASONS.get(self._finish_reason or "stop", "end_turn")
        delta = {"delta": {"stop_reason": stop_reason, "stop_sequence": None}, "usage": usage}
        return [*out, event("message_delta", delta), event("message_stop", {})]
