"""Everything but the chat hot route: models, health and readiness."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse

from gateway.auth import Principal, key_from_headers
from gateway.errors import GatewayError, ModelNotFound
from gateway.gateway import Gateway
from gateway.routing import Route

router = APIRouter()


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


def _principal(
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
    api_key: Annotated[str | None, Header(alias="api-key")] = None,
    x_api_key: Annotated[str | None, Header(alias="x-api-key")] = None,
) -> Principal:
    return _gateway(request).keys.authenticate(key_from_headers(authorization, api_key, x_api_key))


def _model(model_id: str, route: Route, created: int) -> dict[str, Any]:
    owners = sorted({d.upstream.name for d in route.usable})
    return {"id": model_id, "object": "model", "created": created, "owned_by": ",".join(owners)}


@router.get("/v1/models")
def list_models(request: Request, principal: Annotated[Principal, Depends(_principal)]) -> dict[str, Any]:
    """The exact model names this key may use and that have a usable upstream.

    Glob entries are not listed (a pattern is not a model id); any name they match can be
    looked up with `GET /v1/models/{model}` and used in requests.
    """
    gateway = _gateway(request)
    created = gateway.started_at
    data = [
        _model(route.name, route, created)
        for route in gateway.router.exact_routes
        if route.usable and principal.may_use(route.name)
    ]
    return {"object": "list", "data": data}


@router.get("/v1/models/{model_id:path}")
def retrieve_model(
    model_id: str, request: Request, principal: Annotated[Principal, Depends(_principal)]
) -> dict[str, Any]:
    gateway = _gateway(request)
    route = gateway.router.match(model_id)
    if route is None or not route.usable or not principal.may_use(model_id):
        raise ModelNotFound(model_id)
    return _model(model_id, route, gateway.started_at)


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """Config loaded, and the usage store reachable when one is configured."""
    gateway = _gateway(request)
    if await gateway.ledger.ready():
        return JSONResponse({"status": "ok", "checks": {"config": "ok", "ledger": "ok"}})
    # Like every error the gateway sends, the 503 carries an OpenAI-shaped `error`.
    error = GatewayError("Not ready: the usage store (Redis) is unreachable.", status=503, code="not_ready")
    body = {**error.body(), "status": "unavailable", "checks": {"config": "ok", "ledger": "unreachable"}}
    return JSONResponse(body, status_code=503)
