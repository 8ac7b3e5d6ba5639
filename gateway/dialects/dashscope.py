"""OpenAI chat completions <-> DashScope's own protocol (Qwen on Alibaba Cloud Model Studio).

Qwen also has an OpenAI-compatible endpoint (the `openai` dialect, vendor `qwen`); this protocol is
what returns the web search sources (`output.search_info`), which the compatible one documents it
does not. POST {base_url}/api/v1/services/aigc/text-generation/generation:

request   {model, input: {messages}, parameters: {result_format: "message", incremental_output (streams),
          ...the qwen profile's fields: enable_thinking, thinking_budget, enable_search, search_options,
          max_tokens, response_format, tools, temperature, ...}}
reply     {request_id, output: {choices: [{message, finish_reason}], search_info: {search_results}},
          usage: {input_tokens, output_tokens, total_tokens, prompt_tokens_details.cached_tokens,
          output_tokens_details.reasoning_tokens, plugins.search.count}}
stream    SSE `id:`/`event:result`/`:HTTP_STATUS/200`/`data:` events of the same shape, each message
          the increment; finish_reason "null" until the last; usage cumulative; no [DONE].
          `event:error` carries {code, message, request_id}.
errors    non-2xx with {code, message, request_id}
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from gateway.dialects import normalize
from gateway.dialects.base import (
    DecodedReply,
    Target,
    UpstreamRequest,
    Usage,
    decode_error,
    embedded_error,
)
from gateway.dialects.citations import Citations
from gateway.dialects.normalize import token_count
from gateway.dialects.openai import DONE_EVENT, json_object, openai_headers, sse_event
from gateway.dialects.sse import SSEParser
from gateway.dialects.vendors import PROFILES, write_request
from gateway.errors import UpstreamProtocolError
from gateway.request import ChatRequest
from gateway.types import JSON

PATH = "/api/v1/services/aigc/text-generation/generation"
_DELTA_FIELDS = ("content", "reasoning_content", "tool_calls")


class DashScopeDialect:
    def build_request(self, request: ChatRequest, target: Target) -> UpstreamRequest:
        upstream = target.upstream
        parameters, dropped = write_request(request, PROFILES["qwen"], target.options)
        messages = parameters.pop("messages")
        for name in ("model", "stream", "stream_options"):
            parameters.pop(name, None)
        parameters["result_format"] = "message"
        headers = openai_headers(upstream, request.stream)
        if request.stream:
            parameters["incremental_output"] = True
            headers["x-dashscope-sse"] = "enable"
        body = {"model": target.model, "input": {"messages": messages}, "parameters": parameters}
        url = f"{upstream.base_url or ''}{PATH}"
        return UpstreamRequest("POST", url, headers, orjson.dumps(body), upstream.name, tuple(dropped))

    def decode_reply(self, body: bytes, request: ChatRequest) -> DecodedReply:
        obj = json_object(body, "reply")
        output = _output(obj)
        reply: JSON = {
            "id": _completion_id(obj),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.model,
            "choices": [
                {"index": i, "message": choice.get("message"), "finish_reason": _finish(choice)}
                for i, choice in enumerate(_choices(output))
            ],
        }
        usage_obj = openai_usage(obj.get("usage"))
        if usage_obj is not None:
            reply["usage"] = usage_obj
        usage = normalize.completion(reply, request.model)
        citations = Citations()
        citations.from_search_info(output.get("search_info"))
        citations.attach(reply)
        return DecodedReply(orjson.dumps(reply), usage)

    def stream_decoder(self, request: ChatRequest) -> DashScopeStreamDecoder:
        return DashScopeStreamDecoder(request.model, request.include_usage)

    decode_error = staticmethod(decode_error)


class DashScopeStreamDecoder:
    """DashScope's incremental events -> OpenAI chunks: role first, then each increment, the finish
    chunk, and the usage chunk if the client asked; `citations` on the last of them."""

    def __init__(self, model: str, include_usage: bool) -> None:
        self._parser = SSEParser()
        self._model = model
        self._include_usage = include_usage
        self._id: str | None = None
        self._created = int(time.time())
        self._started = False
        self._finished = False
        self._usage_obj: JSON | None = None
        self._citations = Citations()
        self.usage: Usage | None = None
        self.text_chars = 0

    def feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        for event in self._parser.feed(data):
            obj = json_object(event.data, "stream event")
            output = _output(obj)
            if self._id is None:
                self._id = _completion_id(obj)
            usage_obj = openai_usage(obj.get("usage"))
            if usage_obj is not None:
                self._usage_obj = usage_obj
                self.usage = normalize.usage_of(usage_obj)
            self._citations.from_search_info(output.get("search_info"))
            for i, choice in enumerate(_choices(output)):
                message = choice.get("message")
                delta = {k: message[k] for k in _DELTA_FIELDS if isinstance(message, dict) and message.get(k)}
                if not self._started:
                    self._started = True
                    delta["role"] = "assistant"
                finish = _finish(choice)
                if not delta and finish is None:
                    continue
                chunk = self._chunk([{"index": i, "delta": delta, "logprobs": None, "finish_reason": finish}])
                normalize.chunk(chunk, self._model, self._stream_id, self._created)
                self.text_chars += normalize.text_length(chunk["choices"][0]["delta"])
                if finish is not None:
                    self._finished = True
                    if not self._include_usage:
                        self._citations.attach(chunk)
                out.append(sse_event(chunk))
        return out

    def finish(self) -> list[bytes]:
        self._parser.finish()
        if not self._finished:
            raise UpstreamProtocolError("The upstream closed the stream before the reply was complete.")
        out = []
        if self._include_usage:
            chunk = self._chunk([])
            chunk["usage"] = self._usage_obj or {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
            self._citations.attach(chunk)
            out.append(sse_event(chunk))
        out.append(DONE_EVENT)
        return out

    def _stream_id(self) -> str:
        if self._id is None:
            self._id = normalize.completion_id()
        return self._id

    def _chunk(self, choices: list[JSON]) -> JSON:
        return {
            "id": self._stream_id(),
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "choices": choices,
        }


def openai_usage(usage: Any) -> JSON | None:
    """OpenAI usage from DashScope's; the web searches it counts are `billed_units`."""
    if not isinstance(usage, dict):
        return None
    prompt = token_count(usage.get("input_tokens"))
    completion = token_count(usage.get("output_tokens"))
    out: JSON = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": token_count(usage.get("total_tokens")) or prompt + completion,
    }
    cached = token_count(_field(usage, "prompt_tokens_details", "cached_tokens"))
    if cached:
        out["prompt_tokens_details"] = {"cached_tokens": cached}
    reasoning = token_count(_field(usage, "output_tokens_details", "reasoning_tokens"))
    if reasoning:
        out["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    plugins = usage.get("plugins")
    searches = token_count(_field(plugins, "search", "count")) if isinstance(plugins, dict) else 0
    if searches:
        out["billed_units"] = searches
    return out


def _field(obj: JSON, outer: str, inner: str) -> Any:
    value = obj.get(outer)
    return value.get(inner) if isinstance(value, dict) else None


def _output(obj: JSON) -> JSON:
    output = obj.get("output")
    if isinstance(output, dict):
        return output
    if "code" in obj or "message" in obj:
        raise embedded_error(obj)
    raise UpstreamProtocolError("The upstream sent a reply without `output`.")


def _choices(output: JSON) -> list[JSON]:
    choices = output.get("choices")
    if isinstance(choices, list):
        return [c for c in choices if isinstance(c, dict)]
    if isinstance(output.get("text"), str):  # result_format "text", which an upstream may answer anyway
        return [
            {"message": {"role": "assistant", "content": output["text"]}, "finish_reason": output.get("finish_reason")}
        ]
    return []


def _finish(choice: JSON) -> str | None:
    reason = choice.get("finish_reason")
    return None if reason in (None, "null", "") else str(reason)


def _completion_id(obj: JSON) -> str:
    request_id = obj.get("request_id")
    return f"chatcmpl-{request_id}" if isinstance(request_id, str) and request_id else normalize.completion_id()
