"""The OpenAI chat completions wire format, spoken by OpenAI and most vendors' compatible endpoints.

Replies pass through, parsed only as far as usage capture and the spec's required fields need.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from gateway.config import UpstreamConfig
from gateway.dialects import normalize
from gateway.dialects.base import (
    DecodedReply,
    Target,
    UpstreamRequest,
    Usage,
    embedded_error,
    error_parts,
    upstream_status_error,
)
from gateway.dialects.citations import Citations
from gateway.dialects.sse import SSEParser
from gateway.dialects.vendors import VendorProfile, write_request
from gateway.errors import GatewayError, UpstreamProtocolError, UpstreamStatusError
from gateway.request import ChatRequest

DONE_EVENT = b"data: [DONE]\n\n"


def sse_event(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def error_events(error: GatewayError) -> bytes:
    """How a stream that has started ends in an error: the error as an event, then `[DONE]`."""
    return b"data: " + error.to_json() + b"\n\n" + DONE_EVENT


def openai_headers(upstream: UpstreamConfig, stream: bool) -> dict[str, str]:
    """The headers of a request to an OpenAI-compatible upstream: its key as a bearer token, its own."""
    headers = {"content-type": "application/json", "accept": "text/event-stream" if stream else "application/json"}
    if upstream.api_key is not None:
        headers["authorization"] = "Bearer " + upstream.api_key.get_secret_value()
    headers.update(upstream.headers)
    return headers


class OpenAIDialect:
    """One per vendor profile: the wire format is shared, the request fields differ."""

    def __init__(self, profile: VendorProfile) -> None:
        self.profile = profile

    def build_request(self, request: ChatRequest, target: Target) -> UpstreamRequest:
        upstream = target.upstream
        body, dropped = write_request(request, self.profile, target.options)
        body["model"] = target.model
        return UpstreamRequest(
            method="POST",
            url=f"{upstream.base_url or ''}/chat/completions",
            headers=openai_headers(upstream, request.stream),
            body=orjson.dumps(body),
            upstream=upstream.name,
            dropped=tuple(dropped),
        )

    def decode_reply(self, body: bytes, request: ChatRequest) -> DecodedReply:
        obj = json_object(body, "reply")
        if "error" in obj and "choices" not in obj:
            raise embedded_error(obj)
        usage = normalize.completion(obj, request.model)
        citations = Citations()
        citations.from_chat(obj, "message")
        citations.attach(obj)
        return DecodedReply(orjson.dumps(obj), usage)

    def stream_decoder(self, request: ChatRequest) -> OpenAIStreamDecoder:
        return OpenAIStreamDecoder(request.model, request.include_usage)

    def decode_error(
        self, status: int, body: bytes, headers: dict[str, str], upstream: UpstreamConfig
    ) -> UpstreamStatusError:
        return upstream_status_error(status, error_parts(body), headers, upstream)


class OpenAIStreamDecoder:
    """Relays an OpenAI event stream chunk by chunk, capturing usage and fixing what the spec requires."""

    __slots__ = (
        "_citations",
        "_created",
        "_finished",
        "_id",
        "_include_usage",
        "_model",
        "_parser",
        "_saw_done",
        "text_chars",
        "usage",
    )

    def __init__(self, model: str, include_usage: bool) -> None:
        self._parser = SSEParser()
        self._model = model
        self._include_usage = include_usage
        self._id: str | None = None
        self._created = int(time.time())
        self._saw_done = False
        self._finished = False
        self.usage: Usage | None = None
        self.text_chars = 0
        self._citations = Citations()

    def feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        for event in self._parser.feed(data):
            if event.data == b"[DONE]":
                self._saw_done = True
                continue
            obj = json_object(event.data, "stream event")
            if "error" in obj and "choices" not in obj:
                raise embedded_error(obj)
            usage = normalize.chunk(obj, self._model, self._stream_id, self._created)
            if usage is not None:
                self.usage = usage
            citations = self._citations
            citations.from_chat(obj, "delta")
            last = "usage" in obj  # the usage chunk, or a finish chunk, may be the stream's last
            if last and not self._include_usage:
                del obj["usage"]
                if not obj["choices"] and not citations.pending():
                    continue  # the usage-only chunk the gateway asked for on its own behalf
            for choice in obj["choices"]:
                self.text_chars += normalize.text_length(choice["delta"])
                if choice.get("finish_reason"):
                    self._finished = last = True
            if last:
                citations.attach(obj)
            out.append(sse_event(obj))
        return out

    def _stream_id(self) -> str:
        if self._id is None:
            self._id = normalize.completion_id()
        return self._id

    def finish(self) -> list[bytes]:
        self._parser.finish()
        if not (self._saw_done or self._finished):
            raise UpstreamProtocolError("The upstream closed the stream before the reply was complete.")
        return [DONE_EVENT]


def json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise UpstreamProtocolError(f"The upstream sent a {what} that is not JSON.") from None
    if not isinstance(obj, dict):
        raise UpstreamProtocolError(f"The upstream sent a {what} that is not a JSON object.")
    return obj
