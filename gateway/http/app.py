"""The ASGI application: the chat hot route dispatched directly, everything else through FastAPI."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from gateway import __version__
from gateway.config import GatewayConfig, load_config
from gateway.errors import GatewayError, InvalidRequest
from gateway.gateway import Gateway
from gateway.http.asgi import RequestIds
from gateway.http.chat import ChatCompletions
from gateway.http.routes import router
from gateway.settings import Settings
from gateway.types import Receive, Scope, Send

CHAT_PATH = "/v1/chat/completions"


class GatewayApp:
    """Routes the chat path to the plain ASGI endpoint and the rest to FastAPI."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        request_ids = RequestIds()
        self.api = _fastapi(gateway, request_ids)
        self._chat = ChatCompletions(gateway.keys, gateway.relay, gateway.settings.max_body_bytes, request_ids)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == CHAT_PATH:
            await self._chat(scope, receive, send)
        else:
            await self.api(scope, receive, send)


def create_app(settings: Settings, config: GatewayConfig) -> GatewayApp:
    return GatewayApp(Gateway.build(settings, config))


def app_from_env() -> GatewayApp:
    """Factory for `uvicorn --factory` and worker processes: settings and config path from the environment."""
    settings = Settings()
    if settings.config is None:
        raise SystemExit("GATEWAY_CONFIG is not set: give the path of the config file")
    return create_app(settings, load_config(settings.config))


def _fastapi(gateway: Gateway, request_ids: RequestIds) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()

    api = FastAPI(title="LLM gateway", version=__version__, lifespan=lifespan)
    api.state.gateway = gateway
    api.include_router(router)
    api.add_middleware(RequestIdMiddleware, request_ids=request_ids)

    @api.exception_handler(GatewayError)
    async def _gateway_error(_: Request, exc: GatewayError) -> Response:
        return _error_response(exc)

    @api.exception_handler(HTTPException)
    async def _http_error(_: Request, exc: HTTPException) -> Response:
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        code = "not_found" if exc.status_code == 404 else None
        return _error_response(GatewayError(str(exc.detail), status=exc.status_code, type=kind, code=code))

    @api.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        param = ".".join(str(p) for p in first["loc"][1:]) or None
        return _error_response(InvalidRequest(str(first["msg"]), param=param))

    return api


def _error_response(exc: GatewayError) -> Response:
    headers = {k.decode(): v.decode() for k, v in exc.response_headers()}
    return Response(exc.to_json(), status_code=exc.status, media_type="application/json", headers=headers)


class RequestIdMiddleware:
    """Gives every FastAPI response an `x-request-id` (the hot route sets its own)."""

    def __init__(self, app: object, request_ids: RequestIds) -> None:
        self.app = app
        self._request_id = request_ids

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)  # type: ignore[operator]
            return
        presented = next((v for k, v in scope["headers"] if k == b"x-request-id"), None)
        rid = self._request_id(presented)

        async def send_with_id(message: dict[str, object]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid)]  # type: ignore[misc]
            await send(message)

        await self.app(scope, receive, send_with_id)  # type: ignore[operator]
