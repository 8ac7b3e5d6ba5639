"""A client API translated to chat completions: the request becomes a chat request, which the chat
translator of the upstream's vendor then writes as it writes any chat request, and its errors are
decoded by that translator too. Subclasses say how a body becomes chat, and how chat comes back."""

from __future__ import annotations

from typing import Any

import orjson

from gateway.config import UpstreamConfig
from gateway.dialects.base import Target, UpstreamRequest, Usage
from gateway.errors import UpstreamStatusError
from gateway.request import ChatRequest, check_chat_body
from gateway.types import JSON


class OverChat:
    def __init__(self, chat: Any) -> None:
        self._chat = chat

    @staticmethod
    def chat_body(src: JSON) -> JSON:
        """The client body as a chat completions body (raises `InvalidRequest` naming a field)."""
        raise NotImplementedError

    def chat_request(self, request: Any) -> ChatRequest:
        """The checked chat request a client request becomes, made once (kept on `request.translated`)."""
        if request.translated is None:
            request.translated = check_chat_body(self.chat_body(request.body))
        translated: ChatRequest = request.translated
        return translated

    def build_request(self, request: Any, target: Target) -> UpstreamRequest:
        return self._chat.build_request(self.chat_request(request), target)  # type: ignore[no-any-return]

    def decode_error(
        self, status: int, body: bytes, headers: dict[str, str], upstream: UpstreamConfig
    ) -> UpstreamStatusError:
        return self._chat.decode_error(status, body, headers, upstream)  # type: ignore[no-any-return]


class ChatEvents:
    """Turns a chat stream into another API's events. Fed upstream bytes, the vendor's chat decoder
    makes normalized chunks; each goes to `_start` (the first) and its deltas to `_delta`. Usage and
    the text relayed are the chat decoder's."""

    def __init__(self, chat: Any) -> None:
        self._chat = chat
        self._finish_reason: str | None = None  # the chat finish_reason, once one came

    @property
    def usage(self) -> Usage | None:
        return self._chat.usage  # type: ignore[no-any-return]

    @property
    def text_chars(self) -> int:
        return self._chat.text_chars  # type: ignore[no-any-return]

    def feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        # The chat decoder's events are one `data:` line each; an element of its list may hold several.
        for chunk in b"".join(self._chat.feed(data)).split(b"\n\n"):
            if not chunk.startswith(b"data: {"):
                continue  # [DONE], or the empty piece after the last event: the other API has its own end
            obj = orjson.loads(chunk[6:])
            out += self._start(obj)
            for choice in obj.get("choices") or []:
                out += self._delta(_text_only(choice.get("delta")))
                if choice.get("finish_reason"):
                    self._finish_reason = choice["finish_reason"]
        return out

    def _start(self, chunk: JSON) -> list[bytes]:
        """The events that open the stream, on its first chunk (then nothing)."""
        raise NotImplementedError

    def _delta(self, delta: JSON) -> list[bytes]:
        raise NotImplementedError


def _text_only(delta: Any) -> JSON:
    """A chat delta with only text where the other APIs want text: fields of other types (an upstream's
    mistake) are left out, calls without an object to read are dropped."""
    if type(delta) is not dict:
        return {}
    out: JSON = {name: value for name in ("content", "reasoning_content") if type(value := delta.get(name)) is str}
    calls = delta.get("tool_calls")
    if type(calls) is list:
        kept = []
        for call in calls:
            if type(call) is not dict:
                continue
            function = call.get("function")
            function = function if type(function) is dict else {}
            kept.append({**call, "function": {k: v for k, v in function.items() if type(v) is str}})
        out["tool_calls"] = kept
    return out
