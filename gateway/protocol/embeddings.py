"""`POST /v1/embeddings` bodies, checked: every mistake a 400 naming the field."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.checks import bad_type, bad_value, json_object_body, missing, optional_int, required_model
from gateway.errors import InvalidRequest
from gateway.extensions import sess_id_of
from gateway.protocol.hints import Hints
from gateway.types import JSON

# OpenAI's limits: 2,048 inputs per request.
MAX_INPUTS = 2048
ENCODINGS = ("float", "base64")


@dataclass(slots=True)
class EmbeddingsRequest:
    body: JSON  # as sent: it goes upstream with the model name replaced
    model: str
    inputs: int  # how many inputs (strings or token arrays)
    ext: Hints = field(default_factory=Hints)
    stream: bool = False  # embeddings never stream; the relay reads it
    include_usage: bool = False


def parse_embeddings_request(raw: bytes) -> EmbeddingsRequest:
    body = json_object_body(raw)
    model = required_model(body)
    inputs = _check_input(body.get("input"))
    encoding = body.get("encoding_format")
    if encoding is not None and encoding not in ENCODINGS:
        raise bad_value("encoding_format", encoding, "'float', 'base64'")
    optional_int(body, "dimensions", 1)
    if body.get("user") is not None and not isinstance(body["user"], str):
        raise bad_type("user", "a string", body["user"])
    hints = Hints(sess_id_of(body.get("sess_id")), optional_int(body, "retries", 0, 10))
    for name in ("sess_id", "retries"):  # the gateway's own fields: upstreams would refuse them
        body.pop(name, None)
    return EmbeddingsRequest(body, model, inputs, hints)


def _check_input(value: Any) -> int:
    """How many inputs: a string, an array of strings, an array of token ids, or an array of those."""
    if value is None:
        raise missing("input")
    if isinstance(value, str):
        if not value:
            raise InvalidRequest("'input' must not be empty.", param="input")
        return 1
    if not isinstance(value, list):
        raise bad_type("input", "a string or an array", value)
    if not value:
        raise InvalidRequest("'input' must not be an empty array.", param="input")
    if len(value) > MAX_INPUTS:
        raise InvalidRequest(f"'input' has {len(value)} items; at most {MAX_INPUTS} are allowed.", param="input")
    if all(_token(v) for v in value):
        return 1  # one input given as token ids
    for i, item in enumerate(value):
        if isinstance(item, str):
            if not item:
                raise InvalidRequest(f"'input[{i}]' must not be empty.", param=f"input[{i}]")
        elif isinstance(item, list):
            if not item or not all(_token(v) for v in item):
                raise bad_type(f"input[{i}]", "a non-empty array of token ids (integers)", item)
        else:
            raise bad_type(f"input[{i}]", "a string or an array of token ids", item)
    return len(value)


def _token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
