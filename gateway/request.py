"""Checking a chat completion request body, pure and fast: plain dicts, no pydantic on the hot path.

Known fields are checked for type and range so that a client mistake gets a 400 naming the field
instead of an upstream error; unknown fields pass through for the upstream to judge.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.checks import bad_type, bad_value, json_object_body, missing, optional_bool, optional_int, required_model
from gateway.errors import InvalidRequest
from gateway.extensions import Extensions, extract, passthrough
from gateway.types import JSON

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
TOOL_CHOICES = frozenset({"none", "auto", "required"})
RESPONSE_FORMATS = frozenset({"text", "json_object", "json_schema"})


# How deep JSON can nest and still be written out again (orjson's limit); parsing takes deeper.
MAX_DEPTH = 254


@dataclass(slots=True)
class ChatRequest:
    """A checked request: the canonical extension values, and the rest of the body to pass through."""

    body: JSON  # the fields the gateway does not interpret (see extensions.CONSUMED)
    model: str
    stream: bool
    include_usage: bool
    ext: Extensions


def parse_chat_request(raw: bytes) -> ChatRequest:
    body = json_object_body(raw)
    return check_chat_body(body)


def check_chat_body(body: JSON) -> ChatRequest:
    model = required_model(body)
    _check_messages(body.get("messages"))
    stream = optional_bool(body, "stream") or False
    include_usage = False
    options = body.get("stream_options")
    if options is not None:
        if not stream:
            raise InvalidRequest(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                param="stream_options",
            )
        if not isinstance(options, dict):
            raise bad_type("stream_options", "an object", options)
        include_usage = optional_bool(options, "include_usage", "stream_options.") or False

    # Only the fields present are checked (most requests carry few), in the order the client sent them.
    for name in body:
        check = _OPTIONAL_FIELDS.get(name)
        if check is not None:
            check(body, name)
    return ChatRequest(
        body=passthrough(body), model=model, stream=stream, include_usage=include_usage, ext=extract(body)
    )


def _check_messages(messages: Any) -> None:
    if messages is None:
        raise missing("messages")
    if not isinstance(messages, list):
        raise bad_type("messages", "an array", messages)
    if not messages:
        raise InvalidRequest("'messages' must contain at least one message.", param="messages")
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise bad_type(where, "an object", message)
        role = message.get("role")
        if role is None:
            raise missing(f"{where}.role")
        if not isinstance(role, str):
            raise bad_type(f"{where}.role", "a string", role)
        if role not in ROLES:
            raise bad_value(f"{where}.role", role, ", ".join(sorted(ROLES)))
        content = message.get("content")
        if content is None:
            if role not in ("assistant", "function") and "content" not in message:
                raise missing(f"{where}.content")
        elif isinstance(content, list):
            for j, part in enumerate(content):
                if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                    raise bad_type(f"{where}.content[{j}]", "an object with a string 'type'", part)
        elif not isinstance(content, str):
            raise bad_type(f"{where}.content", "a string or an array of content parts", content)
        tool_calls = message.get("tool_calls")
        if tool_calls is not None and not isinstance(tool_calls, list):
            raise bad_type(f"{where}.tool_calls", "an array", tool_calls)


def _check_stop(stop: Any) -> None:
    if stop is None or isinstance(stop, str):
        return
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise bad_type("stop", "a string or an array of strings", stop)
    if len(stop) > 4:
        raise InvalidRequest("'stop' may hold at most 4 sequences.", param="stop")


def _check_tools(tools: Any) -> None:
    if tools is None:
        return
    if not isinstance(tools, list):
        raise bad_type("tools", "an array", tools)
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise bad_type(where, "an object", tool)
        kind = tool.get("type")
        if not isinstance(kind, str):
            raise missing(f"{where}.type") if kind is None else bad_type(f"{where}.type", "a string", kind)
        if kind != "function":
            continue
        function = tool.get("function")
        if not isinstance(function, dict):
            if function is None:
                raise missing(f"{where}.function")
            raise bad_type(f"{where}.function", "an object", function)
        name = function.get("name")
        if not isinstance(name, str) or not name:
            if name is None:
                raise missing(f"{where}.function.name")
            raise bad_type(f"{where}.function.name", "a non-empty string", name)
        params = function.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise bad_type(f"{where}.function.parameters", "an object", params)


def _check_tool_choice(choice: Any) -> None:
    if choice is None:
        return
    if isinstance(choice, str):
        if choice not in TOOL_CHOICES:
            raise bad_value("tool_choice", choice, "'none', 'auto', 'required', or an object naming a tool")
        return
    if not isinstance(choice, dict) or not isinstance(choice.get("type"), str):
        raise bad_type("tool_choice", "a string or an object with a 'type'", choice)


def _check_response_format(fmt: Any) -> None:
    if fmt is None:
        return
    if not isinstance(fmt, dict):
        raise bad_type("response_format", "an object", fmt)
    kind = fmt.get("type")
    if not isinstance(kind, str):
        raise missing("response_format.type") if kind is None else bad_type("response_format.type", "a string", kind)
    if kind not in RESPONSE_FORMATS:
        raise bad_value("response_format.type", kind, "'text', 'json_object', 'json_schema'")
    if kind == "json_schema" and not isinstance(fmt.get("json_schema"), dict):
        raise missing("response_format.json_schema")


def _optional_number(obj: JSON, name: str, low: float, high: float) -> None:
    value = obj.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad_type(name, "a number", value)
    if not low <= value <= high:
        raise InvalidRequest(f"Invalid value for '{name}': {value} is outside the range {low} to {high}.", param=name)


# A check of one optional field: called with the body and the field's name, only when it is present.
FieldCheck = Callable[[JSON, str], object]


def _number(low: float, high: float) -> FieldCheck:
    return lambda body, name: _optional_number(body, name, low, high)


def _int(low: int | None, high: int | None = None) -> FieldCheck:
    return lambda body, name: optional_int(body, name, low, high)


def _of_type(kind: type, expected: str) -> FieldCheck:
    def check(body: JSON, name: str) -> None:
        value = body[name]
        if value is not None and not isinstance(value, kind):
            raise bad_type(name, expected, value)

    return check


def _value(check: Callable[[Any], None]) -> FieldCheck:
    return lambda body, name: check(body[name])


_OPTIONAL_FIELDS: dict[str, FieldCheck] = {
    "temperature": _number(0, 2),
    "top_p": _number(0, 1),
    "presence_penalty": _number(-2, 2),
    "frequency_penalty": _number(-2, 2),
    "max_tokens": _int(1),
    "max_completion_tokens": _int(1),
    "n": _int(1, 128),
    "seed": _int(None),
    "top_logprobs": _int(0, 20),
    "logprobs": optional_bool,
    "parallel_tool_calls": optional_bool,
    "store": optional_bool,
    "user": _of_type(str, "a string"),
    "stop": _value(_check_stop),
    "tools": _value(_check_tools),
    "tool_choice": _value(_check_tool_choice),
    "response_format": _value(_check_response_format),
    "logit_bias": _of_type(dict, "an object"),
    "metadata": _of_type(dict, "an object"),
}


def deepest_field(body: JSON) -> str:
    """The top-level field under which `body` nests deepest: named in the error for a too-deep request.

    Only called once writing the body failed, so the walk costs nothing on the usual path.
    """

    def depth(value: Any) -> int:
        deepest, level, todo = 0, 0, [(value, 1)]
        while todo:
            value, level = todo.pop()
            deepest = max(deepest, level)
            if isinstance(value, dict):
                todo.extend((v, level + 1) for v in value.values())
            elif isinstance(value, list):
                todo.extend((v, level + 1) for v in value)
        return deepest

    return max(body, key=lambda name: depth(body[name]), default="")
