"""OpenAI chat completions <-> the Anthropic Messages API (POST /v1/messages).

Request: system messages lifted to `system`; content parts to blocks (images as base64 or URL
sources); tool calls and results to `tool_use` / `tool_result` blocks; thinking as `enabled` with a
budget (Claude up to 4.5) or `adaptive` with an effort (4.6 and later), chosen per model in config;
JSON mode as a forced tool where forcing is allowed. Reply: text joined into `content`, thinking into
`reasoning_content` (blocks with their signatures kept in `thinking_blocks`, so a client can send
them back on the next turn), `tool_use` into `tool_calls`, usage with cache reads and writes added
into `prompt_tokens` (Anthropic's `input_tokens` excludes them).
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from gateway.config import UpstreamConfig
from gateway.dialects.anthropic_helper import JSON_TOOL, anthropic_error, finish_reason, openai_usage
from gateway.dialects.anthropic_stream import AnthropicStreamDecoder
from gateway.dialects.base import DecodedReply, Target, UpstreamRequest, decode_error
from gateway.dialects.citations import Citations
from gateway.dialects.openai import json_object
from gateway.dialects.vendors import EFFORT_BUDGET, budget_for, clamp_effort, effort_for_budget
from gateway.errors import InvalidRequest
from gateway.extensions import Search
from gateway.request import ChatRequest
from gateway.types import JSON

API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096
MIN_BUDGET = 1024
WEB_SEARCH_TOOL = "web_search_20250305"
ADAPTIVE_EFFORTS = ("low", "medium", "high", "max")

# OpenAI parameters with no Messages API equivalent, and the values that mean "not used".
_NO_EQUIVALENT: dict[str, tuple[Any, ...]] = {
    "n": (1,),
    "seed": (),
    "logprobs": (False,),
    "top_logprobs": (0,),
    "frequency_penalty": (0, 0.0),
    "presence_penalty": (0, 0.0),
    "logit_bias": ({},),
}
# Taken as they are (top_k is Anthropic's own).
_PASSED = ("top_p", "top_k")
# Handled below from the body.
_MAPPED = frozenset({"model", "messages", "tools", "tool_choice", "parallel_tool_calls", "stop", "user", "temperature"})


def anthropic_headers(upstream: UpstreamConfig, stream: bool) -> dict[str, str]:
    """The headers of a request to an Anthropic upstream: its key as `x-api-key`, the API version."""
    headers = {
        "content-type": "application/json",
        "accept": "text/event-stream" if stream else "application/json",
        "anthropic-version": API_VERSION,
    }
    if upstream.api_key is not None:
        headers["x-api-key"] = upstream.api_key.get_secret_value()
    headers.update(upstream.headers)
    return headers


def messages_url(base_url: str) -> str:
    """The Messages endpoint under `base_url`, given with `/v1` or, as Anthropic's SDKs take it, without."""
    base = base_url.rstrip("/")
    return f"{base}/messages" if base.endswith("/v1") else f"{base}/v1/messages"


class AnthropicDialect:
    def build_request(self, request: ChatRequest, target: Target) -> UpstreamRequest:
        body, dropped = messages_body(request, target)
        upstream = target.upstream
        url = messages_url(upstream.base_url or "")
        headers = anthropic_headers(upstream, request.stream)
        return UpstreamRequest("POST", url, headers, orjson.dumps(body), upstream.name, tuple(dropped))

    def decode_reply(self, body: bytes, request: ChatRequest) -> DecodedReply:
        obj = json_object(body, "reply")
        if obj.get("type") == "error":
            raise anthropic_error(obj)
        return decode_message(obj, request)

    def stream_decoder(self, request: ChatRequest) -> AnthropicStreamDecoder:
        return AnthropicStreamDecoder(request.model, request.include_usage, json_tool_name(request))

    decode_error = staticmethod(decode_error)


# --- request -----------------------------------------------------------------------------------


def messages_body(request: ChatRequest, target: Target) -> tuple[JSON, list[str]]:
    """The Messages API body for a chat request, and the client parameters it could not carry."""
    src = request.body
    ext = request.ext
    options = target.options
    dropped: list[str] = []
    system, messages = convert_messages(src["messages"])
    max_tokens = ext.max_output or options.max_tokens or DEFAULT_MAX_TOKENS
    body: JSON = {"model": target.model, "max_tokens": max_tokens, "messages": messages}

    for name, neutral in _NO_EQUIVALENT.items():
        if name in src and src[name] is not None and src[name] not in neutral:
            dropped.append(name)
    for name in _PASSED:
        if src.get(name) is not None:
            body[name] = src[name]
    for name in src:
        if name not in _MAPPED and name not in _NO_EQUIVALENT and name not in _PASSED:
            dropped.append(name)
    if ext.metadata is not None:  # Anthropic's `metadata` holds only `user_id`, which comes from `user`
        dropped.append("metadata")
    if src.get("temperature") is not None:
        body["temperature"] = min(1.0, float(src["temperature"]))  # Anthropic's range is 0 to 1
    stop = src.get("stop")
    if stop:
        body["stop_sequences"] = [stop] if isinstance(stop, str) else stop
    if isinstance(src.get("user"), str):
        body["metadata"] = {"user_id": src["user"]}
    if request.stream:
        body["stream"] = True

    thinking = _thinking(request, target, max_tokens, dropped)
    if thinking:
        body.update(thinking)
        for name in ("temperature", "top_p", "top_k"):  # not allowed with thinking on
            if body.pop(name, None) is not None:
                dropped.append(name)
    tools = [_tool(t) for t in src.get("tools") or [] if _is_function_tool(t, dropped)]
    tool_choice = _tool_choice(src.get("tool_choice"), src.get("parallel_tool_calls"))
    fmt = ext.response_format
    if fmt is not None and fmt.get("type") in ("json_object", "json_schema"):
        schema = (fmt.get("json_schema") or {}).get("schema") if fmt["type"] == "json_schema" else None
        if thinking:
            # A forced tool is not allowed while thinking is on: ask in the system prompt instead.
            system.append({"type": "text", "text": _json_instruction(schema)})
        else:
            tools.append(
                {
                    "name": JSON_TOOL,
                    "description": "Respond with a JSON object.",
                    "input_schema": schema or {"type": "object"},
                }
            )
            tool_choice = {"type": "tool", "name": JSON_TOOL}
    if ext.search is not None:
        _web_search(ext.search, options.search, tools, dropped)
    if tools:
        body["tools"] = tools
    if tool_choice is not None and (tools or tool_choice["type"] == "none"):
        body["tool_choice"] = tool_choice
    if system:
        body["system"] = system
    return body, dropped


def _web_search(search: Search, allowed: bool | None, tools: list[JSON], dropped: list[str]) -> None:
    """Anthropic's server-side web search tool; its results come back as `citations`."""
    if allowed is False:
        dropped.append("enable_search")
        return
    tools.append({"type": WEB_SEARCH_TOOL, "name": "web_search"})
    if search.engine:
        dropped.append("search_config.engine")
    if search.deep:
        dropped.append("search_config.deepable")


def json_tool_name(request: ChatRequest) -> str | None:
    """The JSON-mode tool's name when the client asked for JSON (a call to it is the JSON answer)."""
    fmt = request.ext.response_format
    if fmt is None or fmt.get("type") not in ("json_object", "json_schema"):
        return None
    return JSON_TOOL


def _thinking(request: ChatRequest, target: Target, max_tokens: int, dropped: list[str]) -> JSON:
    reasoning = request.ext.reasoning
    if not reasoning.on:
        return {}
    options = target.options
    if options.thinking == "adaptive":
        out: JSON = {"thinking": {"type": "adaptive"}}
        effort = reasoning.effort or (effort_for_budget(reasoning.budget_tokens) if reasoning.budget_tokens else None)
        if effort:
            out["output_config"] = {"effort": clamp_effort(effort, options.efforts or ADAPTIVE_EFFORTS)}
        return out
    if max_tokens <= MIN_BUDGET:
        # A budget must be at least 1024 and below max_tokens: with this cap there is no room.
        dropped.append("thinking")
        return {}
    low, high = options.budget_range or (MIN_BUDGET, max_tokens - 1)
    if reasoning.budget_tokens is None and reasoning.effort is None:
        budget = max(low, min(high, max_tokens - 1, EFFORT_BUDGET["medium"]))
    else:
        budget = budget_for(request, max(low, MIN_BUDGET), min(high, max_tokens - 1))
    return {"thinking": {"type": "enabled", "budget_tokens": budget}}


def _json_instruction(schema: JSON | None) -> str:
    text = "Respond with a single JSON object and nothing else."
    if schema:
        text += " It must match this JSON schema: " + orjson.dumps(schema).decode()
    return text


def convert_messages(messages: list[JSON]) -> tuple[list[JSON], list[JSON]]:
    """OpenAI messages -> (Anthropic system blocks, Anthropic messages, same roles merged)."""
    system: list[JSON] = []
    out: list[JSON] = []
    for i, message in enumerate(messages):
        role = message["role"]
        content = message.get("content")
        if role in ("system", "developer"):
            system += _text_blocks(content)
            continue
        if role in ("tool", "function"):
            block: JSON = {
                "type": "tool_result",
                "tool_use_id": str(message.get("tool_call_id") or message.get("name")),
                "content": _tool_result_content(content),
            }
            blocks, role = [block], "user"
        elif role == "assistant":
            blocks = _assistant_blocks(message, i)
        else:
            blocks = _user_blocks(content, i)
        if not blocks:
            continue
        if out and out[-1]["role"] == role:
            out[-1]["content"] += blocks
        else:
            out.append({"role": role, "content": blocks})
    return system, out


def _text_blocks(content: Any) -> list[JSON]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks = []
    for part in content or []:
        if part.get("type") == "text" and part.get("text"):
            block: JSON = {"type": "text", "text": part["text"]}
            if "cache_control" in part:
                block["cache_control"] = part["cache_control"]
            blocks.append(block)
    return blocks


def _user_blocks(content: Any, index: int) -> list[JSON]:
    if isinstance(content, str) or content is None:
        return _text_blocks(content)
    blocks: list[JSON] = []
    for j, part in enumerate(content):
        kind = part.get("type")
        if kind == "text":
            blocks += _text_blocks([part])
        elif kind == "image_url":
            url = (part.get("image_url") or {}).get("url")
            if not isinstance(url, str):
                raise InvalidRequest("An image part needs `image_url.url`.", param=f"messages[{index}].content[{j}]")
            blocks.append({"type": "image", "source": _source(url)})
        elif kind == "file" and isinstance((part.get("file") or {}).get("file_data"), str):
            blocks.append({"type": "document", "source": _source(part["file"]["file_data"])})
    return blocks


def _source(url: str) -> JSON:
    if url.startswith("data:"):
        header, _, data = url.partition(",")
        media_type = header[5:].split(";")[0] or "application/octet-stream"
        return {"type": "base64", "media_type": media_type, "data": data}
    return {"type": "url", "url": url}


def _assistant_blocks(message: JSON, index: int) -> list[JSON]:
    blocks: list[JSON] = []
    thinking_blocks = message.get("thinking_blocks")
    if isinstance(thinking_blocks, list):
        reasoning = message.get("reasoning_content")
        for block in thinking_blocks:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "redacted_thinking":
                blocks.append({"type": "redacted_thinking", "data": block.get("data", "")})
            elif block.get("signature"):
                # Streamed blocks carry only the signature; the text is the message's reasoning_content.
                text = block.get("thinking") or (reasoning if len(thinking_blocks) == 1 else "") or ""
                blocks.append({"type": "thinking", "thinking": text, "signature": block["signature"]})
    blocks += _text_blocks(message.get("content"))
    for j, call in enumerate(message.get("tool_calls") or []):
        function = call.get("function") or {}
        try:
            arguments = orjson.loads(function.get("arguments") or "{}")
        except orjson.JSONDecodeError:
            raise InvalidRequest(
                "Tool call arguments must be a JSON object.",
                param=f"messages[{index}].tool_calls[{j}].function.arguments",
            ) from None
        blocks.append({"type": "tool_use", "id": call.get("id"), "name": function.get("name"), "input": arguments})
    return blocks


def _tool_result_content(content: Any) -> Any:
    if isinstance(content, list):
        return _text_blocks(content)
    return "" if content is None else str(content)


def _is_function_tool(tool: JSON, dropped: list[str]) -> bool:
    if tool.get("type") == "function":
        return True
    dropped.append(f"tools[type={tool.get('type')}]")
    return False


def _tool(tool: JSON) -> JSON:
    function = tool["function"]
    out: JSON = {"name": function["name"], "input_schema": function.get("parameters") or {"type": "object"}}
    if function.get("description"):
        out["description"] = function["description"]
    return out


def _tool_choice(choice: Any, parallel: Any) -> JSON | None:
    out: JSON | None
    if choice is None:
        out = None
    elif choice == "auto":
        out = {"type": "auto"}
    elif choice == "required":
        out = {"type": "any"}
    elif choice == "none":
        out = {"type": "none"}
    else:
        out = {"type": "tool", "name": ((choice.get("function") or {}).get("name"))}
    if parallel is False:
        out = {**(out or {"type": "auto"}), "disable_parallel_tool_use": True}
    return out


# --- reply -------------------------------------------------------------------------------------


def decode_message(obj: JSON, request: ChatRequest) -> DecodedReply:
    json_tool = json_tool_name(request)
    texts: list[str] = []
    reasoning: list[str] = []
    thinking_blocks: list[JSON] = []
    tool_calls: list[JSON] = []
    citations = Citations()
    for block in obj.get("content") or []:
        citations.from_anthropic_block(block)
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text", ""))
        elif kind == "thinking":
            reasoning.append(block.get("thinking", ""))
            thinking_blocks.append(
                {"type": "thinking", "thinking": block.get("thinking", ""), "signature": block.get("signature")}
            )
        elif kind == "redacted_thinking":
            thinking_blocks.append({"type": "redacted_thinking", "data": block.get("data")})
        elif kind == "tool_use" and block.get("name") == json_tool:
            texts.append(orjson.dumps(block.get("input") or {}).decode())
        elif kind == "tool_use":
            tool_calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {
                        "name": block.get("name"),
                        "arguments": orjson.dumps(block.get("input") or {}).decode(),
                    },
                }
            )
    message: JSON = {
        "role": "assistant",
        "content": "".join(texts) if texts or not tool_calls else None,
        "refusal": None,
    }
    if reasoning or thinking_blocks:
        message["reasoning_content"] = "".join(reasoning)
        message["thinking_blocks"] = thinking_blocks
    if tool_calls:
        message["tool_calls"] = tool_calls
    finish = finish_reason(obj.get("stop_reason"), json_tool is not None and not tool_calls)
    usage_obj, usage = openai_usage(obj.get("usage") or {})
    reply = {
        "id": obj.get("id") or "msg_unknown",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": obj.get("model") or request.model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": usage_obj,
    }
    citations.attach(reply)
    return DecodedReply(orjson.dumps(reply), usage)
