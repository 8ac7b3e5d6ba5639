"""Anthropic Messages in, to an Anthropic upstream: the body goes through as sent (the model name
replaced), the reply and its events come back as sent, read only for usage and the text relayed."""

from __future__ import annotations

from typing import Any

import orjson

from gateway.dialects.anthropic import anthropic_headers, messages_url
from gateway.dialects.anthropic_helper import anthropic_error, openai_usage
from gateway.dialects.base import (
    DecodedReply,
    Target,
    UpstreamRequest,
    Usage,
    decode_error,
)
from gateway.dialects.openai import json_object
from gateway.dialects.sse import SSEParser
from gateway.errors import UpstreamProtocolError
from gateway.protocol.messages import MessagesRequest
from gateway.types import JSON


class AnthropicPassthrough:
    def build_request(self, request: MessagesRequest, target: Target) -> UpstreamRequest:
        upstream = target.upstream
        body = orjson.dumps({**request.body, "model": target.model})
        headers = anthropic_headers(upstream, request.stream)
        return UpstreamRequest("POST", messages_url(upstream.base_url or ""), headers, body, upstream.name)

    def decode_reply(self, body: bytes, request: MessagesRequest) -> DecodedReply:
        obj = json_object(body, "reply")
        if obj.get("type") == "error":
            raise anthropic_error(obj)
        usage = obj.get("usage")
        return DecodedReply(body, openai_usage(usage)[1] if isinstance(usage, dict) else None)

    def stream_decoder(self, request: MessagesRequest) -> PassthroughDecoder:
        return PassthroughDecoder()

    decode_error = staticmethod(decode_error)


class PassthroughDecoder:
    """Relays Anthropic events as they come; reads `message_start` and `message_delta` for usage."""

    def __init__(self) -> None:
        self._parser = SSEParser()
        self._usage: JSON = {}
        self._stopped = False
        self.text_chars = 0

    @property
    def usage(self) -> Usage | None:
        return openai_usage(self._usage)[1] if self._usage else None

    def feed(self, data: bytes) -> list[bytes]:
        out = []
        for event in self._parser.feed(data):
            obj = json_object(event.data, "stream event")
            kind = obj.get("type", event.event)
            if kind == "error":
                raise anthropic_error(obj)
            self._read(kind, obj)
            name = event.event or kind
            out.append(b"event: " + str(name).encode() + b"\ndata: " + event.data + b"\n\n")
        return out

    def _read(self, kind: Any, obj: JSON) -> None:
        if kind == "message_start":
            message = obj.get("message")
            if isinstance(message, dict) and isinstance(message.get("usage"), dict):
                self._usage.update(message["usage"])
        elif kind == "message_delta":
            usage = obj.get("usage")
            if isinstance(usage, dict):
                self._usage.update({k: v for k, v in usage.items() if v is not None})
        elif kind == "content_block_delta":
            delta = obj.get("delta")
            if isinstance(delta, dict):
                for name in ("text", "thinking", "partial_json"):
                    if isinstance(delta.get(name), str):
                        self.text_chars += len(delta[name])
        elif kind == "message_stop":
            self._stopped = True

    def finish(self) -> list[bytes]:
        self._parser.finish()
        if not self._stopped:
            raise UpstreamProtocolError("The upstream closed the stream before the reply was complete.")
        return []
