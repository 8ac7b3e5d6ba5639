"""The admin API under `/admin/`: managed keys and usage. Guarded by `GATEWAY_ADMIN_TOKEN` (compared in
constant time), which is not a client key; without it the admin API answers 404."""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse

from gateway.accounting.keys import Principal
from gateway.accounting.keyspec import KeyChanges, NewKey, key_view
from gateway.accounting.keystore import KeyExists, KeyStore
from gateway.accounting.ledger.base import UsageQuery
from gateway.errors import AuthenticationFailed, GatewayError
from gateway.http.usage import DayParam, parse_day
from gateway.runtime import Runtime


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


async def _admin(request: Request, authorization: Annotated[str | None, Header()] = None) -> None:
    token = _runtime(request).settings.admin_token
    secret = token.get_secret_value() if token is not None else ""
    if not secret:
        raise GatewayError(
            "The admin API is off: set GATEWAY_ADMIN_TOKEN to turn it on.",
            status=404,
            type="invalid_request_error",
            code="not_found",
        )
    presented = (authorization or "").removeprefix("Bearer ").strip().encode()
    if not hmac.compare_digest(hashlib.sha256(presented).digest(), hashlib.sha256(secret.encode()).digest()):
        raise AuthenticationFailed("The admin API wants the admin token as `Authorization: Bearer <token>`.")


router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(_admin)])


def _store(request: Request) -> KeyStore:
    store = _runtime(request).keys.store
    if store is None:
        raise GatewayError(
            "Managed keys are kept in Redis: set redis_url in the config file.",
            status=503,
            type="server_error",
            code="key_store_not_configured",
        )
    return store


@router.post("/keys", status_code=201)
async def create_key(request: Request, body: NewKey) -> JSONResponse:
    """Make a key. The answer holds the key itself, shown this once; only its digest is stored."""
    if body.name in _runtime(request).keys.table.names():
        raise KeyExists(f"A key named `{body.name}` is in the config file.", param="name")
    principal = Principal.from_dict({"name": body.name, **body.record_fields()})
    key, record = await _store(request).create(principal)
    return JSONResponse({"key": key, **key_view(record)}, status_code=201)


@router.get("/keys")
async def list_keys(request: Request) -> dict[str, Any]:
    """Every managed key (config-file keys are not listed)."""
    return {"object": "list", "data": [key_view(record) for record in await _store(request).list()]}


@router.get("/keys/{name}")
async def show_key(request: Request, name: str) -> dict[str, Any]:
    return key_view(await _store(request).get(name))


@router.patch("/keys/{name}")
async def update_key(request: Request, name: str, body: KeyChanges) -> dict[str, Any]:
    """Change the given fields; every replica uses the change within `GATEWAY_KEY_CACHE_SECONDS`."""
    return key_view(await _store(request).update(name, body.record_fields()))


@router.post("/keys/{name}/revoke")
async def revoke_key(request: Request, name: str) -> dict[str, Any]:
    """Refuse the key from now on (within `GATEWAY_KEY_CACHE_SECONDS` on every replica); its record stays."""
    return key_view(await _store(request).revoke(name))


@router.get("/usage")
async def usage(
    request: Request,
    key: str | None = None,
    team: str | None = None,
    model: str | None = None,
    since: DayParam = None,
    until: DayParam = None,
) -> dict[str, Any]:
    """Usage per key, model and UTC day, from Redis, or from this process's memory without Redis."""
    query = UsageQuery(key, team, model, parse_day(since, "since"), parse_day(until, "until"))
    return {"object": "list", "data": await _runtime(request).ledger.rows(query)}


@router.get("/usage/requests")
async def request_log(request: Request, key: str, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict[str, Any]:
    """The key's latest requests, newest first: one entry each, with every usage field and its cost."""
    return {"object": "list", "data": await _runtime(request).ledger.requests(key, limit)}
