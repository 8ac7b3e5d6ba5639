"""`POST /v1/messages` (Anthropic's Messages API) bodies, checked, and errors in Anthropic's shape."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.checks import bad_type, bad_value, json_object_body, missing, optional_bool, optional_int, required_model
from gateway.errors import GatewayError
from gateway.extensions import sess_id_of
from gateway.protocol.hints import Hints
from gateway.types import JSON

ROLES = ("user", "assistant")
# Anthropic's error types by HTTP status; what a client SDK maps to its exception classes.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


@dataclass(slots=True)
class MessagesRequest:
    body: JSON  # as sent, the gateway's own fields removed: it goes upstream with the model replaced
    model: str
    stream: bool = False
    include_usage: bool = True
    ext: Hints = field(default_factory=Hints)
    translated: Any = None  # the chat request it becomes for an OpenAI-compatible upstream, made once


def parse_messages_request(raw: bytes) -> MessagesRequest:
    body = json_object_body(raw)
    model = required_model(body)
    max_tokens = optional_int(body, "max_tokens", 1)
    if max_tokens is None:
        raise missing("max_tokens")
    check_messages(body.get("messages"))
    system = body.get("system")
    if system is not None and not isinstance(system, str | list):
        raise bad_type("system", "a string or an array of content blocks", system)
    stream = optional_bool(body, "stream") or False
    for name in ("tools", "stop_sequences"):
        if body.get(name) is not None and not isinstance(body[name], list):
            raise bad_type(name, "an array", body[name])
    for name in ("metadata", "thinking", "tool_choice"):
        if body.get(name) is not None and not isinstance(body[name], dict):
            raise bad_type(name, "an object", body[name])
    metadata = body.get("metadata")
    hints = Hints(
        sess_id_of(body.pop("sess_id", None)),
        optional_int(body, "retries", 0, 10),
        max_tokens,
        {"user_id": str(metadata["user_id"])} if isinstance(metadata, dict) and "user_id" in metadata else None,
    )
    body.pop("retries", None)  # the gateway's own field: upstreams would refuse it
    return MessagesRequest(body, model, stream, ext=hints)


def check_messages(messages: Any) -> None:
    if messages is None:
        raise missing("messages")
    if not isinstance(messages, list):
        raise bad_type("messages", "an array", messages)
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise bad_type(f"messages[{i}]", "an object", message)
        if message.get("role") not in ROLES:
            raise bad_value(f"messages[{i}].role", message.get("role"), "'user', 'assistant'")
        content = message.get("content")
        if not isinstance(content, str | list):
            raise bad_type(f"messages[{i}].content", "a string or an array of content blocks", content)


def text_of(content: Any) -> str:
    """The text of a `system`, message or tool result `content`: a string, or its text blocks joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(b.get("text", "")) for b in content if isinstance(b, dict) and b.get("type") == "text")
    return ""


def error_body(error: GatewayError) -> bytes:
    """An error as Anthropic answers it: `{"type": "error", "error": {"type", "message"}}`."""
    kind = _ERROR_TYPES.get(error.status, "api_error" if error.status >= 500 else "invalid_request_error")
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": error.message}})


def error_events(error: GatewayError) -> bytes:
    """How a Messages stream that has started ends in an error: an `error` event."""
    return b"event: error\ndata: " + error_body(error) + b"\n\n"
