"""The OpenAI chat completions wire format, spoken by OpenAI and most vendors' compatible endpoints.

Replies pass through, parsed only as far as usage capture and the spec's required fields need.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from gateway.config import UpstreamConfig
from gateway.dialects import kimi_search, normalize
from gateway.dialects.base import (
    DecodedReply,
    Target,
    UpstreamRequest,
    Usage,
    added,
    embedded_error,
    error_parts,
    upstream_status_error,
)
from gateway.dialects.citations import Citations
from gateway.dialects.sse import SSEParser
from gateway.dialects.vendors import VendorProfile, write_request
from gateway.errors import GatewayError, UpstreamProtocolError, UpstreamStatusError
from gateway.request import ChatRequest
from gateway.types import JSON

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
        self._search_rounds = profile.search == "moonshot"  # the gateway answers Kimi's $web_search

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
        turn = None
        if self._search_rounds and request.ext.search is not None and obj["choices"]:
            message = obj["choices"][0]["message"]
            turn = kimi_search.answer(message.get("content"), message.get("tool_calls") or [])
        return DecodedReply(orjson.dumps(obj), usage, turn)

    def stream_decoder(self, request: ChatRequest) -> OpenAIStreamDecoder:
        rounds = self._search_rounds and request.ext.search is not None
        return OpenAIStreamDecoder(request.model, request.include_usage, rounds)

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
        "_round",
        "_saw_done",
        "_spent",
        "search_rounds",
        "text_chars",
        "usage",
    )

    def __init__(self, model: str, include_usage: bool, search_rounds: bool = False) -> None:
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
        self.search_rounds = search_rounds  # the gateway may run further rounds (`take_turn`)
        self._round = _SearchRound() if search_rounds else None
        self._spent: Usage | None = None  # the usage of the rounds before this one

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
                if self._spent is not None:  # a later round: the client is told every round's usage
                    self.usage = added(self._spent, usage)
                    obj["usage"] = normalize.usage_object(self.usage or usage)
                else:
                    self.usage = usage
            if self._round is not None and self._round.holds(obj):
                continue
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
        if self._round is not None and self._round.turn is not None:
            return []  # another round follows (`take_turn`)
        if not (self._saw_done or self._finished):
            raise UpstreamProtocolError("The upstream closed the stream before the reply was complete.")
        return [DONE_EVENT]

    def take_turn(self) -> list[JSON] | None:
        turn = self._round.turn if self._round is not None else None
        if turn is not None:
            self._round = _SearchRound(self._round.id if self._round else None)
            self._parser = SSEParser()
            self._saw_done = self._finished = False
            self._spent = self.usage
        return turn


class _SearchRound:
    """One round of a stream whose Kimi `$web_search` calls the gateway answers: those calls are kept
    out of the client's stream and gathered, and when the round ends on them (finish_reason
    tool_calls, no client tool called) its finish and usage chunks are held back too."""

    __slots__ = ("calls", "client_calls", "id", "text", "turn")

    def __init__(self, stream_id: str | None = None) -> None:
        self.id = stream_id  # every round's chunks carry the first round's id
        self.calls: dict[Any, JSON] = {}  # tool call index -> the $web_search call, arguments gathered
        self.client_calls = False
        self.text: list[str] = []
        self.turn: list[JSON] | None = None

    def holds(self, obj: JSON) -> bool:
        """Whether this chunk stays with the gateway (after its search calls were taken out)."""
        if self.id is None:
            self.id = obj["id"]
        obj["id"] = self.id
        if self.turn is not None:
            return True  # the round's usage chunk: counted, not relayed
        if not obj["choices"]:
            return False
        empty = True
        for choice in obj["choices"]:
            delta = choice["delta"]
            content = delta.get("content")
            if type(content) is str:
                self.text.append(content)
            calls = delta.get("tool_calls")
            if type(calls) is list and calls:
                kept = [call for call in calls if not self._gathered(call)]
                if kept:
                    delta["tool_calls"] = kept
                    self.client_calls = True
                else:
                    del delta["tool_calls"]
            if choice.get("finish_reason") == "tool_calls" and self.calls and not self.client_calls:
                calls_in_order = [self.calls[i] for i in sorted(self.calls, key=str)]
                self.turn = kimi_search.answer("".join(self.text) or None, calls_in_order)
                return True
            empty = empty and not delta and not choice.get("finish_reason")
        return empty

    def _gathered(self, call: Any) -> bool:
        if type(call) is not dict:
            return False
        index = call.get("index")
        entry = self.calls.get(index)
        if entry is None:
            if not kimi_search.is_search_call(call):
                return False
            entry = self.calls[index] = {
                "id": call.get("id"),
                "type": call.get("type") or "builtin_function",
                "function": {"name": kimi_search.NAME, "arguments": ""},
            }
        function = call.get("function")
        arguments = function.get("arguments") if type(function) is dict else None
        if type(arguments) is str:
            entry["function"]["arguments"] += arguments
        return True


def json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise UpstreamProtocolError(f"The upstream sent a {what} that is not JSON.") from None
    if not isinstance(obj, dict):
        raise UpstreamProtocolError(f"The upstream sent a {what} that is not a JSON object.")
    return obj
