"""Prompt and completion text for the access log, kept only when `GATEWAY_LOG_CONTENT=true`."""

from __future__ import annotations

from typing import Any

import orjson

from gateway.relay.exchange import Exchange
from gateway.types import JSON


class Transcript:
    """Puts the request's messages and the reply's text on the exchange as the reply goes out."""

    def __init__(self, exchange: Exchange, body: JSON) -> None:
        self._parts: list[str] = []
        self._content: dict[str, object] = {"messages": body.get("messages"), "completion": None}
        exchange.content = self._content

    def reply(self, body: bytes) -> None:
        try:
            choices = orjson.loads(body).get("choices") or []
            self._content["completion"] = _text(choices[0].get("message")) if choices else None
        except (orjson.JSONDecodeError, AttributeError, TypeError):
            return

    def events(self, data: bytes) -> None:
        for line in data.split(b"\n"):
            if not line.startswith(b"data: {"):
                continue
            try:
                choices = orjson.loads(line[6:]).get("choices") or []
            except orjson.JSONDecodeError:
                continue
            if choices and isinstance(choices[0], dict):
                self._parts.append(_text(choices[0].get("delta")) or "")
        self._content["completion"] = "".join(self._parts)


def _text(message: Any) -> str | None:
    if not isinstance(message, dict):
        return None
    content = message.get("content")
    return content if isinstance(content, str) else None
