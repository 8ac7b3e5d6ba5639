"""`POST /v1/responses` (OpenAI's Responses API) bodies, checked. State (`store: true`,
`previous_response_id`) is allowed here; only an upstream with the API of its own can keep it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.checks import bad_type, json_object_body, missing, optional_bool, optional_int, required_model
from gateway.errors import GatewayError, InvalidRequest
from gateway.extensions import sess_id_of
from gateway.protocol.hints import Hints
from gateway.types import JSON


@dataclass(slots=True)
class ResponsesRequest:
    body: JSON
    model: str
    stream: bool = False
    include_usage: bool = True
    ext: Hints = field(default_factory=Hints)
    translated: Any = None  # the chat request it becomes, made once


def parse_responses_request(raw: bytes) -> ResponsesRequest:
    body = json_object_body(raw)
    model = required_model(body)
    value = body.get("input")
    if value is None:
        raise missing("input")
    if not isinstance(value, str | list):
        raise bad_type("input", "a string or an array of items", value)
    if body.get("instructions") is not None and not isinstance(body["instructions"], str):
        raise bad_type("instructions", "a string", body["instructions"])
    if body.get("previous_response_id") is not None and not isinstance(body["previous_response_id"], str):
        raise bad_type("previous_response_id", "a string", body["previous_response_id"])
    optional_bool(body, "store")
    for name in ("tools",):
        if body.get(name) is not None and not isinstance(body[name], list):
            raise bad_type(name, "an array", body[name])
    for name in ("reasoning", "text", "metadata"):
        if body.get(name) is not None and not isinstance(body[name], dict):
            raise bad_type(name, "an object", body[name])
    for name in _ECHOED:
        if isinstance(body.get(name), dict | list):
            _writable(body[name], name)
    stream = optional_bool(body, "stream") or False
    hints = Hints(
        sess_id_of(body.pop("sess_id", None)),
        optional_int(body, "retries", 0, 10),
        optional_int(body, "max_output_tokens", 1),
        body.get("metadata"),
    )
    body.pop("retries", None)
    return ResponsesRequest(body, model, stream, ext=hints)


# Fields a Response repeats from its request: what the gateway writes back must be writable.
_ECHOED = ("text", "reasoning", "metadata", "tools", "tool_choice", "instructions")


def _writable(value: Any, name: str) -> None:
    try:
        orjson.dumps(value)
    except orjson.JSONEncodeError:  # parsing takes 1,024 levels of nesting, writing JSON only 254
        raise InvalidRequest(f"`{name}` is nested too deeply.", param=name, code="nested_too_deeply") from None


def error_events(error: GatewayError) -> bytes:
    """How a Responses stream that has started ends in an error: an `error` event."""
    data = {"type": "error", "code": error.code, "message": error.message, "param": error.param, "sequence_number": 0}
    return b"event: error\ndata: " + orjson.dumps(data) + b"\n\n"
