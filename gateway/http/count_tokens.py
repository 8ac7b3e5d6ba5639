"""`POST /v1/messages/count_tokens`: the input tokens a Messages request would use, estimated by the
gateway for every model (about four characters of text a token; images at Anthropic's ~1,600). No
upstream is called and nothing is billed."""

from __future__ import annotations

import math
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request

from gateway.accounting.keys import Principal
from gateway.checks import json_object_body, required_model
from gateway.errors import InvalidRequest, ModelNotFound
from gateway.http.asgi import read_body
from gateway.http.routes import caller
from gateway.protocol.messages import check_messages, text_of
from gateway.runtime import Runtime

router = APIRouter(tags=["messages"])
IMAGE_TOKENS = 1600


@router.post("/v1/messages/count_tokens")
async def count_tokens(request: Request, principal: Annotated[Principal, Depends(caller)]) -> dict[str, Any]:
    """`{"input_tokens": N}`, estimated from the system prompt, messages and tools."""
    runtime: Runtime = request.app.state.runtime
    length = request.headers.get("content-length")
    raw = await read_body(
        request.scope, request.receive, runtime.settings.max_body_bytes, length.encode() if length else None
    )
    body = json_object_body(raw)
    model = required_model(body)
    check_messages(body.get("messages"))
    if runtime.router.match(model) is None or not principal.may_use(model):
        raise ModelNotFound(model)
    return {"input_tokens": estimate(body)}


def estimate(body: dict[str, Any]) -> int:
    chars = len(text_of(body.get("system")))
    images = 0
    for message in body["messages"]:
        content = message.get("content")
        chars += len(text_of(content))
        if isinstance(content, list):
            images += sum(1 for b in content if isinstance(b, dict) and b.get("type") == "image")
            chars += sum(_size(b.get("input") or b.get("content") or "", "messages") for b in content
                         if isinstance(b, dict) and b.get("type") in ("tool_use", "tool_result"))  # fmt: skip
    if body.get("tools"):
        chars += _size(body["tools"], "tools")
    return max(1, math.ceil(chars / 4)) + images * IMAGE_TOKENS


def _size(value: Any, param: str) -> int:
    try:
        return len(orjson.dumps(value))
    except orjson.JSONEncodeError:  # parsing takes 1,024 levels of nesting, writing JSON only 254
        raise InvalidRequest(f"`{param}` is nested too deeply.", param=param, code="nested_too_deeply") from None
