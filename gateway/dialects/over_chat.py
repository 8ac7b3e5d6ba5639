"""A client API translated to chat completions: the request becomes a chat request, which the chat
translator of the upstream's vendor then writes as it writes any chat request, and its errors are
decoded by that translator too. Subclasses say how a body becomes chat, and how chat comes back."""

from __future__ import annotations

from typing import Any

from gateway.config import UpstreamConfig
from gateway.dialects.base import Target, UpstreamRequest
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
