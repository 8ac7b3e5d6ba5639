"""OpenAI's Responses API in, to an upstream that has only chat completions: the request becomes a
chat request (written for the vendor by its chat translator), the reply a Response object, the chunks
Responses' typed events. Stateless: nothing is stored. Pure: no I/O."""

from __future__ import annotations

import time
from typing import Any

import orjson

from gateway.dialects.base import DecodedReply, Usage
from gateway.dialects.over_chat import ChatEvents, OverChat
from gateway.errors import InvalidRequest
from gateway.protocol.responses import ResponsesRequest
from gateway.types import JSON

_ROLES = ("user", "assistant", "system", "developer")


class ResponsesOverChat(OverChat):
    @staticmethod
    def chat_body(src: JSON) -> JSON:
        return chat_body(src)

    def decode_reply(self, body: bytes, request: ResponsesRequest) -> DecodedReply:
        decoded = self._chat.decode_reply(body, self.chat_request(request))
        completion = orjson.loads(decoded.body)
        response = response_of(request.body, completion, decoded.usage)
        return DecodedReply(orjson.dumps(response), decoded.usage)

    def stream_decoder(self, request: ResponsesRequest) -> ResponseEvents:
        return ResponseEvents(self._chat.stream_decoder(self.chat_request(request)), request.body)


# --- request ----------------------------------------------------------------------------------


def chat_body(src: JSON) -> JSON:
    """A Responses body as a chat completions body: instructions, input items (messages, function
    calls and their outputs), function tools, tool_choice, reasoning.effort, text.format,
    max_output_tokens. State cannot be kept: `store: true` and `previous_response_id` are refused."""
    if src.get("store"):
        raise InvalidRequest(
            "`store: true` is not supported for this model: its upstream has no Responses API of its own and the "
            "gateway keeps no responses (send `store: false`).",
            param="store",
        )
    if src.get("previous_response_id") is not None:
        raise InvalidRequest(
            "`previous_response_id` is not supported for this model: its upstream has no Responses API of its own "
            "and the gateway keeps no responses; send the whole input.",
            param="previous_response_id",
        )
    messages: list[JSON] = []
    if src.get("instructions"):
        messages.append({"role": "system", "content": src["instructions"]})
    items = src["input"]
    if isinstance(items, str):
        messages.append({"role": "user", "content": items})
    else:
        for i, item in enumerate(items):
            _add_item(messages, item, i)
    body: JSON = {"model": src["model"], "messages": messages}
    for name in ("temperature", "top_p", "parallel_tool_calls", "user", "stream"):
        if src.get(name) is not None:
            body[name] = src[name]
    if src.get("stream"):
        body["stream_options"] = {"include_usage": True}
    if src.get("max_output_tokens") is not None:
        body["max_completion_tokens"] = src["max_output_tokens"]
    if src.get("tools"):
        body["tools"] = [_tool(tool, i) for i, tool in enumerate(src["tools"])]
    choice = src.get("tool_choice")
    if isinstance(choice, str):
        body["tool_choice"] = choice
    elif isinstance(choice, dict) and choice.get("type") == "function":
        body["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
    reasoning = src.get("reasoning")
    if isinstance(reasoning, dict) and isinstance(reasoning.get("effort"), str):
        body["reasoning_effort"] = reasoning["effort"]
    text = src.get("text")
    fmt = text.get("format") if isinstance(text, dict) else None
    if isinstance(fmt, dict):
        if fmt.get("type") == "json_schema":
            schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
            body["response_format"] = {"type": "json_schema", "json_schema": schema}
        elif fmt.get("type") == "json_object":
            body["response_format"] = {"type": "json_object"}
    return body


def _add_item(messages: list[JSON], item: Any, i: int) -> None:
    where = f"input[{i}]"
    if not isinstance(item, dict):
        raise InvalidRequest(f"'{where}' must be an object.", param=where)
    kind = item.get("type", "message")
    if kind == "message":
        role = item.get("role")
        if role not in _ROLES:
            raise InvalidRequest(f"'{where}.role' must be one of {', '.join(_ROLES)}.", param=f"{where}.role")
        messages.append({"role": "system" if role == "developer" else role, "content": _content(item, where)})
    elif kind == "function_call":
        call = {"id": item.get("call_id"), "type": "function",
                "function": {"name": item.get("name"), "arguments": item.get("arguments") or "{}"}}  # fmt: skip
        last = messages[-1] if messages else None
        if last is not None and last["role"] == "assistant" and "tool_calls" in last:
            last["tool_calls"].append(call)  # parallel calls: one assistant message
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    elif kind == "function_call_output":
        output = item.get("output")
        text = output if isinstance(output, str) else orjson.dumps(output).decode()
        messages.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": text})
    elif kind != "reasoning":  # earlier reasoning: chat upstreams take none back
        raise InvalidRequest(f"'{where}.type' {kind!r} is not supported.", param=f"{where}.type")


def _content(item: JSON, where: str) -> Any:
    content = item.get("content")
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(f"'{where}.content' must be a string or an array.", param=f"{where}.content")
    parts: list[JSON] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text"):
            parts.append({"type": "text", "text": str(part.get("text", ""))})
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            parts.append({"type": "image_url", "image_url": {"url": part["image_url"]}})
        else:
            param = f"{where}.content[{j}].type"
            raise InvalidRequest(f"'{param}' {kind!r} is not supported.", param=param)
    if item.get("role") == "assistant":
        return "".join(p["text"] for p in parts if p["type"] == "text")
    return parts


def _tool(tool: Any, i: int) -> JSON:
    if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("name"), str):
        raise InvalidRequest(f"'tools[{i}]': only function tools are supported here.", param=f"tools[{i}]")
    function = {k: tool[k] for k in ("name", "description", "parameters", "strict") if tool.get(k) is not None}
    return {"type": "function", "function": function}


# --- reply ------------------------------------------------------------------------------------


def usage_of(usage: Usage | None) -> JSON:
    u = usage or Usage()
    return {
        "input_tokens": u.prompt_tokens,
        "input_tokens_details": {"cached_tokens": u.cached_tokens, "cache_write_tokens": u.cache_write_tokens},
        "output_tokens": u.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
        "total_tokens": u.total_tokens or u.prompt_tokens + u.completion_tokens,
    }


def envelope(src: JSON, response_id: str, model: str, created: int) -> JSON:
    """The fields of a Response that echo the request, with an empty output (`in_progress`)."""
    reasoning = src.get("reasoning") if isinstance(src.get("reasoning"), dict) else None
    response: JSON = {
        "id": response_id,
        "object": "response",
        "created_at": created,
        "status": "in_progress",
        "error": None,
        "incomplete_details": None,
        "instructions": src.get("instructions"),
        "max_output_tokens": src.get("max_output_tokens"),
        "model": model,
        "output": [],
        "parallel_tool_calls": src.get("parallel_tool_calls", True),
        "previous_response_id": None,
        "reasoning": {"effort": (reasoning or {}).get("effort"), "summary": None},
        "store": False,
        "temperature": src.get("temperature", 1.0),
        "text": src.get("text") or {"format": {"type": "text"}},
        "tool_choice": src.get("tool_choice", "auto"),
        "tools": [_echoed_tool(tool) for tool in src.get("tools") or []],
        "top_p": src.get("top_p", 1.0),
        "truncation": "disabled",
        "metadata": src.get("metadata") or {},
    }
    if isinstance(src.get("user"), str):
        response["user"] = src["user"]
    return response


def _echoed_tool(tool: JSON) -> JSON:
    """A function tool as a Response lists it: every field present (`strict` and `description` null
    when not given)."""
    return {
        "type": "function",
        "name": tool.get("name"),
        "description": tool.get("description"),
        "parameters": tool.get("parameters"),
        "strict": tool.get("strict"),
    }


def _finish(response: JSON, finish_reason: str | None, usage: Usage | None) -> JSON:
    if finish_reason == "length":
        response["status"], response["incomplete_details"] = "incomplete", {"reason": "max_output_tokens"}
    else:
        response["status"] = "completed"
    response["usage"] = usage_of(usage)
    return response


def response_of(src: JSON, completion: JSON, usage: Usage | None) -> JSON:
    """A chat.completion as a Response."""
    key = str(completion.get("id", "")).removeprefix("chatcmpl-")
    response = envelope(src, "resp_" + key, str(completion.get("model")), int(completion.get("created") or time.time()))
    choice = (completion.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    output = response["output"]
    if message.get("reasoning_content"):
        summary = [{"type": "summary_text", "text": message["reasoning_content"]}]
        output.append({"type": "reasoning", "id": "rs_" + key, "summary": summary})
    if message.get("content"):
        output.append(_message_item("msg_" + key, message["content"], "completed"))
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        output.append(_call_item(call, function.get("name"), function.get("arguments") or "", "completed"))
    return _finish(response, choice.get("finish_reason"), usage)


def _message_item(item_id: str, text: str, status: str) -> JSON:
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    return {"type": "message", "id": item_id, "status": status, "role": "assistant", "content": [part]}


def _call_item(call: JSON, name: Any, arguments: str, status: str) -> JSON:
    call_id = call.get("id") or ""
    return {"type": "function_call", "id": "fc_" + str(call_id), "call_id": call_id, "name": name,
            "arguments": arguments, "status": status}  # fmt: skip


class ResponseEvents(ChatEvents):
    """Chat chunks as Responses' typed events: `response.created`, `response.in_progress`, per output
    item `response.output_item.added` / `.done` (with `content_part`, `output_text.delta` / `.done`
    for text and `function_call_arguments.delta` / `.done` for calls), `response.completed`."""

    def __init__(self, chat: Any, src: JSON) -> None:
        super().__init__(chat)
        self._src = src
        self._seq = 0
        self._response: JSON | None = None
        self._key = ""
        self._open: JSON | None = None  # the output item being streamed
        self._open_call: int | None = None  # its tool call index, when a function call
        self._reasoning: list[str] = []

    def _event(self, kind: str, data: JSON) -> bytes:
        payload = {"type": kind, **data, "sequence_number": self._seq}
        self._seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"

    def _start(self, chunk: JSON) -> list[bytes]:
        if self._response is not None:
            return []
        self._key = str(chunk.get("id", "")).removeprefix("chatcmpl-")
        model = str(chunk.get("model") or self._src.get("model"))
        self._response = envelope(self._src, "resp_" + self._key, model, int(chunk.get("created") or time.time()))
        return [
            self._event("response.created", {"response": self._response}),
            self._event("response.in_progress", {"response": self._response}),
        ]

    def _delta(self, delta: JSON) -> list[bytes]:
        out: list[bytes] = []
        if delta.get("reasoning_content"):
            self._reasoning.append(delta["reasoning_content"])
        if delta.get("content"):
            if self._open is None or self._open["type"] != "message":
                out += self._close()
                out += self._add(_message_item("msg_" + self._key, "", "in_progress"))
                part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
                out.append(
                    self._event("response.content_part.added", {**self._where(), "content_index": 0, "part": part})
                )
            assert self._open is not None
            self._open["content"][0]["text"] += delta["content"]
            out.append(
                self._event(
                    "response.output_text.delta",
                    {**self._where(), "content_index": 0, "delta": delta["content"], "logprobs": []},
                )
            )
        for call in delta.get("tool_calls") or []:
            function = call.get("function") or {}
            index = call.get("index", 0)
            if self._open_call != index:
                out += self._close()
                out += self._add(_call_item(call, function.get("name"), "", "in_progress"))
                self._open_call = index
            if function.get("arguments"):
                assert self._open is not None
                self._open["arguments"] += function["arguments"]
                out.append(
                    self._event(
                        "response.function_call_arguments.delta", {**self._where(), "delta": function["arguments"]}
                    )
                )
        return out

    def _where(self) -> JSON:
        assert self._open is not None and self._response is not None
        return {"item_id": self._open["id"], "output_index": len(self._response["output"]) - 1}

    def _add(self, item: JSON) -> list[bytes]:
        assert self._response is not None
        self._response["output"].append(item)
        self._open = item
        return [
            self._event("response.output_item.added", {"output_index": len(self._response["output"]) - 1, "item": item})
        ]

    def _close(self) -> list[bytes]:
        item = self._open
        if item is None:
            return []
        where = self._where()
        out: list[bytes] = []
        if item["type"] == "message":
            part = item["content"][0]
            text = part["text"]
            out.append(
                self._event("response.output_text.done", {**where, "content_index": 0, "text": text, "logprobs": []})
            )
            out.append(self._event("response.content_part.done", {**where, "content_index": 0, "part": part}))
        else:
            done = {**where, "name": item["name"], "arguments": item["arguments"]}
            out.append(self._event("response.function_call_arguments.done", done))
        item["status"] = "completed"
        out.append(self._event("response.output_item.done", {"output_index": where["output_index"], "item": item}))
        self._open, self._open_call = None, None
        return out

    def finish(self) -> list[bytes]:
        self._chat.finish()  # raises if the upstream's stream ended early
        out = [*self._start({}), *self._close()]
        assert self._response is not None
        if self._reasoning:  # reasoning came as deltas: given whole, first, as a Response has it
            summary = [{"type": "summary_text", "text": "".join(self._reasoning)}]
            self._response["output"].insert(0, {"type": "reasoning", "id": "rs_" + self._key, "summary": summary})
        _finish(self._response, self._finish_reason, self.usage)
        out.append(self._event("response.completed", {"response": self._response}))
        return out
