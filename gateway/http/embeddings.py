"""`POST /v1/embeddings`: the same key check, limits, routing, retries, ledger, metrics and access log
as chat, through the relay with the embeddings translator."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from gateway.accounting.keys import Principal
from gateway.accounting.limits import estimate_tokens
from gateway.dialects.registry import EMBEDDINGS
from gateway.errors import GatewayError
from gateway.http.asgi import read_body
from gateway.http.routes import caller, exchange_of
from gateway.protocol.embeddings import parse_embeddings_request
from gateway.runtime import Runtime

router = APIRouter(tags=["embeddings"])

_EXAMPLE = {"model": "text-embedding-3-small", "input": ["The food was delicious.", "The waiter was kind."]}


# The body is read and checked by the endpoint itself (limits, field-named 400s); this documents it.
_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["model", "input"],
                "properties": {
                    "model": {"type": "string"},
                    "input": {
                        "anyOf": [
                            {"type": "string"},
                            {"type": "array", "items": {"type": "string"}},
                            {"type": "array", "items": {"type": "integer"}},
                            {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}},
                        ]
                    },
                    "dimensions": {"type": "integer", "minimum": 1},
                    "encoding_format": {"type": "string", "enum": ["float", "base64"]},
                    "user": {"type": "string"},
                },
            },
            "example": _EXAMPLE,
        }
    },
}


@router.post("/v1/embeddings", openapi_extra={"requestBody": _BODY})
async def create_embeddings(request: Request, principal: Annotated[Principal, Depends(caller)]) -> Response:
    """Embeddings from OpenAI-compatible upstreams: `input` as a string, strings, or token ids;
    `dimensions` and `encoding_format` (`float`, `base64`) pass through; usage goes to the ledger."""
    runtime: Runtime = request.app.state.runtime
    exchange = exchange_of(request)
    if exchange is None:
        raise GatewayError("The gateway failed to handle the request.", status=500, type="server_error")
    exchange.team = principal.team
    length = request.headers.get("content-length")
    raw = await read_body(
        request.scope, request.receive, runtime.settings.max_body_bytes, length.encode() if length else None
    )
    body = parse_embeddings_request(raw)
    exchange.model = body.model
    exchange.prompt_estimate = estimate_tokens(len(raw))
    if principal.limited and runtime.limiter is not None:
        exchange.admission = await runtime.limiter.admit(principal, body.model, exchange.prompt_estimate, 0)
    reply = await runtime.relay.complete(exchange, principal, body, EMBEDDINGS)
    headers = [*reply.headers, *(exchange.admission.headers if exchange.admission is not None else [])]
    return Response(
        reply.body,
        media_type="application/json",
        headers={name.decode(): value.decode() for name, value in headers},
    )
