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
    decode_error,
    embedded_error,
)
from gateway.dialects.chunk_shape import ChunkShape
from gateway.dialects.citations import Citations
from gateway.dialects.sse import SSEParser
from gateway.dialects.vendors import VendorProfile, write_request
from gateway.errors import GatewayError, UpstreamProtocolError
from gateway.request import ChatRequest
from gateway.types import JSON

DONE_EVENT = b"data: [DONE]\n\n"
# Tries per stream at taking the shape of its text chunks (`chunk_shape`): enough for first texts
# written with escapes, a change from reasoning to content, and a few more. A stream whose chunks
# each have other bytes around their text stops trying.
_SHAPES = 8


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
        turn = None
        if request.ext.search is not None:
            citations = Citations()
            citations.from_chat(obj, "message")
            citations.attach(obj)
            if self._search_rounds and obj["choices"]:
                turn = kimi_search.turn_of(obj["choices"][0])
        return DecodedReply(orjson.dumps(obj), usage, turn)

    def stream_decoder(self, request: ChatRequest) -> OpenAIStreamDecoder:
        search = request.ext.search is not None
        return OpenAIStreamDecoder(request.model, request.include_usage, search, search and self._search_rounds)

    decode_error = staticmethod(decode_error)


class OpenAIStreamDecoder:
    """Relays an OpenAI event stream chunk by chunk, capturing usage and fixing what the spec requires.

    Usage a vendor puts in a chunk with choices (Kimi, GLM) goes out in a usage-only chunk of its own,
    as OpenAI sends it, and only to a client that asked. With web search on, the sources go on the
    stream's last chunk: the usage chunk when the client asked for usage, else the finish chunk."""

    __slots__ = (
        "_citations",
        "_created",
        "_finished",
        "_id",
        "_include_usage",
        "_model",
        "_parser",
        "_plain",
        "_round",
        "_saw_done",
        "_shape",
        "_shapes_left",
        "_spent",
        "search_rounds",
        "text_chars",
        "usage",
    )

    def __init__(self, model: str, include_usage: bool, search: bool = False, search_rounds: bool = False) -> None:
        self._parser = SSEParser()
        self._model = model
        self._include_usage = include_usage
        self._id: str | None = None
        self._created = int(time.time())
        self._saw_done = False
        self._finished = False
        self.usage: Usage | None = None
        self.text_chars = 0
        self._citations = Citations() if search else None
        self.search_rounds = search_rounds  # the gateway may run further rounds (`take_turn`)
        self._round = _SearchRound() if search_rounds else None
        self._spent: Usage | None = None  # the usage of the rounds before this one
        self._plain = not search  # nothing to gather, no rounds: chunks may go out unchanged
        self._shape: ChunkShape | None = None  # of the text chunks last seen: those need no parsing
        self._shapes_left = _SHAPES  # tries at taking a shape: a stream whose chunks all differ stops trying

    def feed(self, data: bytes) -> list[bytes]:
        shape = self._shape
        if shape is not None and self._parser.idle:
            # One event a read, as a paced stream comes: a text chunk of the shape goes out as it is.
            text = shape.event_text(data)
            if text is not None:
                self.text_chars += text
                return [data]
        found = self._parser.data_only(data) if self._plain else None
        if found is None:
            return self._events([event.data for event in self._parser.feed(data)])
        pieces, events = found
        # Most chunks need no change: each is parsed and checked, and goes out as the upstream's
        # bytes. Those kept are sent as slices of `events`, a run of them as one.
        out: list[bytes] = []
        kept = at = 0  # events[kept:at] go out as they came; pieces[i] is the event at `at`
        i, count = 0, len(pieces)
        while i < count:
            if shape is not None:
                end, size, chars = shape.run(pieces, i)
                if end > i:
                    self.text_chars += chars
                    i, at = end, at + size
                    continue
            piece = pieces[i]
            i += 1
            start, at = at, at + len(piece) + 8
            if piece == b"[DONE]":
                self._saw_done = True  # [DONE] goes out from `finish`, not here
                kept = _cut(out, events, kept, start, at)
                continue
            try:
                # Only an object with nothing around it goes out as it came (consumers read `data: {`).
                obj: Any = orjson.loads(piece) if piece[:1] == b"{" and piece[-1:] == b"}" else None
            except orjson.JSONDecodeError:
                obj = None  # the full treatment says what is wrong with it
            text = plain_chunk(obj)
            if text is None:
                kept = _cut(out, events, kept, start, at)
                out += self._events([piece])
                continue
            self.text_chars += text
            choice = obj["choices"][0]
            if choice["finish_reason"] is not None:
                self._finished = True
            elif (
                self._shapes_left
                and ("usage" not in obj or self._include_usage)
                # A text written with escapes in a chunk of the shape is no reason for another one.
                and (shape is None or not shape.frames(piece))
            ):
                self._shapes_left -= 1
                shape = self._shape = ChunkShape.of(piece, choice["delta"]) or shape
            if "usage" in obj and not self._include_usage:  # `"usage": null`, as OpenAI writes it when asked
                kept = _cut(out, events, kept, start, at)
                piece = piece.replace(b',"usage":null', b"", 1)
                if b'"usage"' in piece:
                    del obj["usage"]
                    out.append(sse_event(obj))
                else:
                    out.append(b"data: " + piece + b"\n\n")
        if at > kept:
            out.append(events[kept:at])  # all of `events` itself, not a copy, when every event was kept
        return out

    def _events(self, datas: list[bytes]) -> list[bytes]:
        """Events that take the full treatment: normalized, usage captured, sources gathered."""
        out: list[bytes] = []
        for data in datas:
            if data == b"[DONE]":
                self._saw_done = True
                continue
            obj = json_object(data, "stream event")
            if "error" in obj and "choices" not in obj:
                raise embedded_error(obj)
            usage = normalize.chunk(obj, self._model, self._stream_id, self._created)
            if usage is not None:
                self._count(obj, usage)
            if self._round is not None and self._round.holds(obj):
                continue
            citations = self._citations
            if citations is not None:
                citations.from_chat(obj, "delta")
                obj.pop("citations", None)  # an upstream's own, gathered: they go on the last chunk
                self._id = obj["id"]  # a trailing chunk of sources carries the stream's id
            choices = obj["choices"]
            usage_chunk = None
            if "usage" in obj:
                if not self._include_usage:
                    del obj["usage"]
                    if not choices and (citations is None or not citations.pending()):
                        continue  # the usage-only chunk the gateway asked for on its own behalf
                elif choices and usage is not None:
                    usage_chunk = {**_empty_chunk(obj["id"], obj["created"], obj["model"]), "usage": obj.pop("usage")}
            for choice in choices:
                self.text_chars += normalize.text_length(choice["delta"])
                if choice.get("finish_reason"):
                    self._finished = True
                    if citations is not None and not self._include_usage:
                        citations.attach(obj)
            if citations is not None and not choices:
                citations.attach(obj)
            out.append(sse_event(obj))
            if usage_chunk is not None:
                if citations is not None:
                    citations.attach(usage_chunk)
                out.append(sse_event(usage_chunk))
        return out

    def _count(self, obj: JSON, usage: Usage) -> None:
        if self._spent is None:
            self.usage = usage
            return
        # A later round: the usage is every round's, and the client is told so.
        self.usage = added(self._spent, usage) or usage
        obj["usage"] = normalize.usage_object(self.usage)
        if self._round is not None:
            self._round.reported = True

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
        citations = self._citations
        if citations is not None and citations.pending():  # sources that came after the last chunk
            tail = _empty_chunk(self._stream_id(), self._created, self._model)
            citations.attach(tail)
            return [sse_event(tail), DONE_EVENT]
        return [DONE_EVENT]

    def take_turn(self) -> list[JSON] | None:
        turn = self._round.turn if self._round is not None else None
        if turn is not None:
            assert self._round is not None
            self._round = _SearchRound(self._round.id, self.text_chars)
            self._parser = SSEParser()
            self._saw_done = self._finished = False
            self._spent = self.usage
        return turn

    def end(self) -> None:
        if self._round is None or self._spent is None or self._round.reported:
            return
        chars = self.text_chars - self._round.chars_before
        if not chars:
            return  # a later round that failed before any output: taken as not billed
        # The stream ended inside a later round that never reported its usage, after some of its
        # output: at least the tokens of the rounds before went in again as its prompt.
        prompt = self._spent.prompt_tokens + self._spent.completion_tokens
        completion = -(-chars // 4)
        self.usage = added(self._spent, Usage(prompt, completion, prompt + completion, estimated=True))
        self._round.reported = True


class _SearchRound:
    """One round of a stream whose Kimi `$web_search` calls the gateway answers: those calls are kept
    out of the client's stream (the client's own calls renumbered from 0) and gathered, and when the
    round ends on them (finish_reason tool_calls, no client tool called) its finish and usage chunks
    are held back too."""

    __slots__ = ("calls", "chars_before", "client_index", "id", "reported", "text", "turn")

    def __init__(self, stream_id: str | None = None, chars_before: int = 0) -> None:
        self.id = stream_id  # every round's chunks carry the first round's id
        self.chars_before = chars_before  # text relayed before this round
        self.reported = False  # whether this round's usage came
        self.calls: dict[Any, JSON] = {}  # upstream tool call index -> the $web_search call, arguments gathered
        self.client_index: dict[Any, int] = {}  # upstream tool call index -> the client's
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
                kept = [self._renumbered(call) for call in calls if not self._gathered(call)]
                if kept:
                    delta["tool_calls"] = kept
                else:
                    del delta["tool_calls"]
            if choice.get("finish_reason") == "tool_calls" and self.calls and not self.client_index:
                ordered = sorted(self.calls, key=lambda i: i if type(i) is int else -1)
                self.turn = kimi_search.answer("".join(self.text) or None, [self.calls[i] for i in ordered])
                choice["finish_reason"] = None
                obj.pop("usage", None)  # counted; the client is told the sum at the end
                # Text in the same chunk still goes out; the finish is the next round's.
                return not delta or delta == {"role": "assistant"}
            empty = empty and not delta and not choice.get("finish_reason")
        return empty

    def _renumbered(self, call: Any) -> Any:
        if type(call) is dict:
            index = call.get("index")
            call["index"] = self.client_index.setdefault(index, len(self.client_index))
        return call

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


_PLAIN_DELTA = frozenset({"role", "content", "reasoning_content", "refusal"})


def plain_chunk(obj: Any) -> int | None:
    """The characters of text in a chunk that needs no change for the client (every field the spec
    requires, of its type; one choice with only text in its delta; no usage, error or tool calls):
    None for any other, which then takes the full treatment (`normalize.chunk`)."""
    if type(obj) is not dict or obj.get("object") != "chat.completion.chunk":
        return None
    stream_id, model, choices = obj.get("id"), obj.get("model"), obj.get("choices")
    if type(stream_id) is not str or not stream_id or type(model) is not str or not model:
        return None
    if type(obj.get("created")) is not int or type(choices) is not list or len(choices) != 1:
        return None
    if obj.get("usage") is not None:  # a null usage (OpenAI's on every chunk when asked) needs no change
        return None
    choice = choices[0]
    if type(choice) is not dict or type(choice.get("index")) is not int or "usage" in choice:
        return None
    reason = choice.get("finish_reason", 0)
    delta = choice.get("delta")
    if type(delta) is not dict:
        return None
    if reason is not None and (type(reason) is not str or reason not in normalize.FINISH_REASONS):
        return None
    text = 0
    for name, value in delta.items():
        if name not in _PLAIN_DELTA:
            return None
        if type(value) is str:
            text += len(value) if name != "role" and name != "refusal" else 0
        elif value is not None:
            return None
    return text


def _cut(out: list[bytes], events: bytes, kept: int, start: int, end: int) -> int:
    """The event at events[start:end] does not go out as it came: the kept ones before it go out
    now. Where the next run of kept events starts."""
    if start > kept:
        out.append(events[kept:start])
    return end


def _empty_chunk(stream_id: Any, created: Any, model: Any) -> JSON:
    """A chunk with no choices: for the usage, or for sources that came after the last chunk."""
    return {"id": stream_id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": []}


def json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise UpstreamProtocolError(f"The upstream sent a {what} that is not JSON.") from None
    if not isinstance(obj, dict):
        raise UpstreamProtocolError(f"The upstream sent a {what} that is not a JSON object.")
    return obj
