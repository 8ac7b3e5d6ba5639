"""`POST /v1/messages/count_tokens`: the input tokens a Messages request would use. A model served by
an Anthropic upstream is counted by that upstream (its own `count_tokens`, which is free); any other
model, or an Anthropic upstream that cannot answer, gets the gateway's estimate (about four characters
of text a token; images at Anthropic's ~1,600). `x-gateway-token-count` says which: `upstream` or
`estimate`. Nothing is billed."""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request, Response

from gateway.accounting.keys import Principal
from gateway.checks import json_object_body, required_model
from gateway.dialects.anthropic import anthropic_headers, messages_url
from gateway.dialects.base import UpstreamRequest, error_parts, upstream_status_error
from gateway.errors import InvalidRequest, ModelNotFound, UpstreamError
from gateway.http.asgi import read_body
from gateway.http.routes import caller
from gateway.protocol.messages import check_messages, text_of
from gateway.routing import Deployment
from gateway.runtime import Runtime
from gateway.types import JSON

router = APIRouter(tags=["messages"])
log = logging.getLogger("gateway.count_tokens")
IMAGE_TOKENS = 1600
COUNT_TIMEOUT = 5.0  # seconds an upstream count may take before the estimate answers instead
# What Anthropic's count takes; it refuses the rest of a Messages body (`max_tokens`, `stream`, ...),
# which clients often send to count exactly what they are about to send.
COUNTED_FIELDS = frozenset({"messages", "system", "tools", "tool_choice", "thinking", "mcp_servers"})


@router.post("/v1/messages/count_tokens")
async def count_tokens(request: Request, principal: Annotated[Principal, Depends(caller)]) -> Response:
    """`{"input_tokens": N}`, counted by an Anthropic upstream or estimated from the system prompt,
    messages and tools."""
    runtime: Runtime = request.app.state.runtime
    length = request.headers.get("content-length")
    raw = await read_body(
        request.scope, request.receive, runtime.settings.max_body_bytes, length.encode() if length else None
    )
    body = json_object_body(raw)
    model = required_model(body)
    check_messages(body.get("messages"))
    route = runtime.router.match(model)
    if route is None or not principal.may_use(model):
        raise ModelNotFound(model)
    counted = None
    anthropic = next((d for d in runtime.router.order(route) if d.upstream.dialect == "anthropic"), None)
    if anthropic is not None:
        counted = await _upstream_count(runtime, anthropic, model, body)
    how = b"estimate" if counted is None else b"upstream"
    tokens = estimate(body) if counted is None else counted
    return Response(orjson.dumps({"input_tokens": tokens}), media_type="application/json",
                    headers={"x-gateway-token-count": how.decode()})  # fmt: skip


async def _upstream_count(runtime: Runtime, deployment: Deployment, model: str, body: JSON) -> int | None:
    """The Anthropic upstream's own count; None when it could not give one (it failed or is slow),
    so that the estimate answers. A client mistake the upstream caught is the client's 4xx."""
    upstream = deployment.upstream
    try:
        counted = {k: v for k, v in body.items() if k in COUNTED_FIELDS}
        payload = orjson.dumps({**counted, "model": deployment.model_for(model)})
    except orjson.JSONEncodeError:  # parsing takes 1,024 levels of nesting, writing JSON only 254
        raise InvalidRequest("The request is nested too deeply.", code="nested_too_deeply") from None
    built = UpstreamRequest(
        "POST",
        messages_url(upstream.base_url or "") + "/count_tokens",
        anthropic_headers(upstream, stream=False),
        payload,
        upstream.name,
        connect_timeout=COUNT_TIMEOUT,
        read_timeout=COUNT_TIMEOUT,
    )
    response = None
    try:
        async with asyncio.timeout(COUNT_TIMEOUT):
            response = await runtime.transports[upstream.name].open(built)
            reply = await response.read()
    except (UpstreamError, TimeoutError) as exc:
        if response is not None:
            response.close()
        log.warning("count_tokens from %s failed, estimating: %s", upstream.name, exc)
        return None
    except asyncio.CancelledError:
        if response is not None:
            response.close()
        raise
    if 400 <= response.status < 500 and response.status not in (401, 403, 404, 408, 429):
        raise upstream_status_error(response.status, error_parts(reply), response.headers, upstream)
    try:
        tokens = orjson.loads(reply).get("input_tokens") if response.status == 200 else None
    except (orjson.JSONDecodeError, AttributeError):
        tokens = None
    if not isinstance(tokens, int) or isinstance(tokens, bool):
        log.warning("count_tokens from %s gave no count (HTTP %d), estimating", upstream.name, response.status)
        return None
    return tokens


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
