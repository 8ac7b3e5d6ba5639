"""Building the 400s of request checking: one wording for every field."""

from __future__ import annotations

from typing import Any

import orjson

from gateway.errors import InvalidRequest
from gateway.types import JSON


def missing(param: str) -> InvalidRequest:
    return InvalidRequest(f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")


def bad_type(param: str, expected: str, value: Any) -> InvalidRequest:
    return InvalidRequest(
        f"Invalid type for '{param}': expected {expected}, but got {type_name(value)}.",
        param=param,
        code="invalid_type",
    )


def bad_value(param: str, value: Any, allowed: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid value for '{param}': {show(value)}. Supported values are: {allowed}.", param=param)


def json_object_body(raw: bytes) -> JSON:
    """A request body that must be a JSON object, as every API's body is."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    return body


def required_model(body: JSON) -> str:
    model = body.get("model")
    if model is None:
        raise missing("model")
    if not isinstance(model, str) or not model:
        raise bad_type("model", "a non-empty string", model)
    return model


def optional_int(obj: JSON, name: str, low: int | None, high: int | None = None, prefix: str = "") -> int | None:
    value = obj.get(name)
    if value is None:
        return None
    param = prefix + name
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_type(param, "an integer", value)
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"at least {low}" if high is None else f"between {low} and {high}"
        raise InvalidRequest(f"Invalid value for '{param}': {value}; it must be {bounds}.", param=param)
    return value


def optional_bool(obj: JSON, name: str, prefix: str = "") -> bool | None:
    value = obj.get(name)
    if value is not None and not isinstance(value, bool):
        raise bad_type(prefix + name, "a boolean", value)
    return value


def type_name(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array"}
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "an object"
    return names.get(type(value), type(value).__name__)


def show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
