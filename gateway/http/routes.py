"""Everything but the chat hot route: models, health, readiness and metrics."""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from gateway.accounting.keys import Principal, key_from_headers
from gateway.dialects.registry import APIS, translator_for
from gateway.errors import AuthenticationFailed, GatewayError, ModelNotFound
from gateway.observability.metrics import multiprocess_dir, render
from gateway.relay import Exchange
from gateway.routing import Route
from gateway.runtime import Runtime

router = APIRouter()


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def exchange_of(request: Request) -> Exchange | None:
    """The request's exchange, opened by the middleware (none for probes and scrapes)."""
    exchange: Exchange | None = request.scope.get("gateway.exchange")
    return exchange


async def caller(
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
    api_key: Annotated[str | None, Header(alias="api-key")] = None,
    x_api_key: Annotated[str | None, Header(alias="x-api-key")] = None,
) -> Principal:
    principal = await _runtime(request).keys.authenticate(key_from_headers(authorization, api_key, x_api_key))
    exchange = exchange_of(request)
    if exchange is not None:
        exchange.key_name = principal.name
    return principal


def _model(model_id: str, route: Route, created: int) -> dict[str, Any]:
    owners = sorted({d.upstream.name for d in route.usable})
    # Which client APIs the model serves: those some usable deployment's upstream has a translator for.
    endpoints = [api for api in APIS if any(translator_for(api, d.upstream) for d in route.usable)]
    return {"id": model_id, "object": "model", "created": created, "owned_by": ",".join(owners), "endpoints": endpoints}


@router.get("/v1/models")
def list_models(request: Request, principal: Annotated[Principal, Depends(caller)]) -> dict[str, Any]:
    """The exact model names this key may use and that have a usable upstream.

    Glob entries are not listed (a pattern is not a model id); any name they match can be
    looked up with `GET /v1/models/{model}` and used in requests.
    """
    runtime = _runtime(request)
    created = runtime.started_at
    data = [
        _model(route.name, route, created)
        for route in runtime.router.exact_routes
        if route.usable and principal.may_use(route.name)
    ]
    return {"object": "list", "data": data}


@router.get("/v1/models/{model_id:path}")
def retrieve_model(model_id: str, request: Request, principal: Annotated[Principal, Depends(caller)]) -> dict[str, Any]:
    runtime = _runtime(request)
    route = runtime.router.match(model_id)
    if route is None or not route.usable or not principal.may_use(model_id):
        raise ModelNotFound(model_id)
    return _model(model_id, route, runtime.started_at)


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """Whether to send traffic here: 200 whenever requests can be served; 503 once draining (SIGTERM).

    A usage store (Redis) that cannot be reached does not make the gateway unready: requests are
    still served and their usage waits in memory until Redis is back. Taking every replica out of
    the Service because Redis is down would turn a bookkeeping outage into a full one. The answer
    says `degraded` so that a look at it explains the ledger alerts.
    """
    runtime = _runtime(request)
    if runtime.draining:
        error = GatewayError("Not ready: the gateway is shutting down.", status=503, code="draining")
        return JSONResponse({**error.body(), "status": "draining"}, status_code=503)
    ledger_ok = await runtime.ledger.ready()
    checks = {"config": "ok", "ledger": "ok" if ledger_ok else "unreachable"}
    degraded = not ledger_ok
    if runtime.limiter is not None:
        checks["limits"] = "unreachable" if runtime.limiter.degraded else "ok"
        degraded = degraded or runtime.limiter.degraded
    status = "degraded" if degraded else "ok"
    return JSONResponse({"status": status, "checks": checks, "ledger_backlog": runtime.ledger.backlog})


@router.get("/metrics")
async def metrics(request: Request, authorization: Annotated[str | None, Header()] = None) -> Response:
    """Prometheus metrics (of every worker, with several); 404 when `GATEWAY_METRICS=false`.

    Open unless `GATEWAY_METRICS_TOKEN` is set: the metrics name keys and their usage, so either keep
    the port on the internal network or set a token (Prometheus sends it with `authorization`).
    """
    settings = _runtime(request).settings
    token = settings.metrics_token.get_secret_value() if settings.metrics_token is not None else ""
    if token:
        presented = (authorization or "").removeprefix("Bearer ").strip().encode()
        if not hmac.compare_digest(hashlib.sha256(presented).digest(), hashlib.sha256(token.encode()).digest()):
            raise AuthenticationFailed("/metrics wants the metrics token as `Authorization: Bearer <token>`.")
    if not settings.metrics:
        raise GatewayError(
            "Metrics are turned off (GATEWAY_METRICS=false).",
            status=404,
            type="invalid_request_error",
            code="not_found",
        )
    _runtime(request).flush_observers()  # this worker's latest sums; other workers' are at most a second old
    # Several workers: reading their files is I/O, kept off the event loop.
    body, content_type = await run_in_threadpool(render) if multiprocess_dir() else render()
    return Response(body, media_type=content_type)
