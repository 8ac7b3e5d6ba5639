"""OpenAI's Responses API in, to an upstream that has it (OpenAI, Volcengine Ark, ...: the vendor
profile's `responses`, or the upstream's `responses_api`): the body goes through as sent (the model
name replaced) to `POST {base_url}/responses`, and the reply and its typed events come back as sent,
read only for usage and the text relayed. State (`store`, `previous_response_id`) is the upstream's.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.dialects.base import (
    DecodedReply,
    Target,
    UpstreamRequest,
    Usage,
    decode_error,
    embedded_error,
)
from gateway.dialects.normalize import token_count
from gateway.dialects.openai import json_object, openai_headers
from gateway.dialects.sse import SSEParser
from gateway.errors import UpstreamProtocolError
from gateway.protocol.responses import ResponsesRequest

# The events that end a Response stream; each carries the whole Response, usage included.
_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})


class ResponsesPassthrough:
    def build_request(self, request: ResponsesRequest, target: Target) -> UpstreamRequest:
        upstream = target.upstream
        body = orjson.dumps({**request.body, "model": target.model})
        headers = openai_headers(upstream, request.stream)
        return UpstreamRequest("POST", f"{upstream.base_url or ''}/responses", headers, body, upstream.name)

    def decode_reply(self, body: bytes, request: ResponsesRequest) -> DecodedReply:
        obj = json_object(body, "reply")
        if obj.get("object") != "response" and obj.get("error"):
            raise embedded_error(obj)
        return DecodedReply(body, usage_of(obj.get("usage")))

    def stream_decoder(self, request: ResponsesRequest) -> PassthroughEvents:
        return PassthroughEvents()

    decode_error = staticmethod(decode_error)


class PassthroughEvents:
    """Relays Responses events as they come; the terminal event's Response gives the usage."""

    def __init__(self) -> None:
        self._parser = SSEParser()
        self._ended = False
        self.usage: Usage | None = None
        self.text_chars = 0

    def feed(self, data: bytes) -> list[bytes]:
        out = []
        for event in self._parser.feed(data):
            if event.data == b"[DONE]":
                continue
            obj = json_object(event.data, "stream event")
            kind = obj.get("type", event.event)
            if kind == "error":
                raise embedded_error(obj)
            if kind in _TERMINAL:
                self._ended = True
                response = obj.get("response")
                if isinstance(response, dict):
                    self.usage = usage_of(response.get("usage"))
            elif kind in ("response.output_text.delta", "response.function_call_arguments.delta"):
                delta = obj.get("delta")
                if isinstance(delta, str):
                    self.text_chars += len(delta)
            out.append(b"event: " + str(event.event or kind).encode() + b"\ndata: " + event.data + b"\n\n")
        return out

    def finish(self) -> list[bytes]:
        self._parser.finish()
        if not self._ended:
            raise UpstreamProtocolError("The upstream closed the stream before the response was complete.")
        return []


def usage_of(usage: Any) -> Usage | None:
    """Token counts from a Response's usage (`input_tokens` includes the cached ones)."""
    if not isinstance(usage, dict):
        return None
    prompt = token_count(usage.get("input_tokens"))
    completion = token_count(usage.get("output_tokens"))
    inputs = usage.get("input_tokens_details")
    outputs = usage.get("output_tokens_details")
    inputs = inputs if isinstance(inputs, dict) else {}
    outputs = outputs if isinstance(outputs, dict) else {}
    return Usage(
        prompt,
        completion,
        token_count(usage.get("total_tokens")) or prompt + completion,
        token_count(inputs.get("cached_tokens")),
        token_count(outputs.get("reasoning_tokens")),
        cache_write_tokens=token_count(inputs.get("cache_write_tokens")),
    )
