"""The ASGI application: the lifespan, the chat hot route dispatched directly, the rest through FastAPI."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from gateway import __version__, collector
from gateway.config import GatewayConfig, load_config
from gateway.errors import GatewayError, InvalidRequest
from gateway.http.admin import router as admin_router
from gateway.http.asgi import RequestIds
from gateway.http.count_tokens import router as count_tokens_router
from gateway.http.embeddings import router as embeddings_router
from gateway.http.openapi import openapi_document
from gateway.http.relayed import CHAT_API, MESSAGES_API, RESPONSES_API, RelayedEndpoint
from gateway.http.routes import exchange_of, router
from gateway.http.usage import router as usage_router
from gateway.protocol import messages
from gateway.relay import Exchanges
from gateway.runtime import Runtime
from gateway.settings import Settings
from gateway.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("gateway.http")

# Probes and scrapes are not requests to the API: no exchange, no access log line, no metrics.
_UNRECORDED = frozenset({"/healthz", "/readyz", "/metrics"})


class GatewayApp:
    """Runs the runtime's start-up and shutdown, routes the chat path to the plain ASGI endpoint and
    the rest to FastAPI."""

    def __init__(self, runtime: Runtime, *, serving: bool = False) -> None:
        self.runtime = runtime
        self._serving = serving  # a server process of its own: the collector is set once started
        request_ids = RequestIds()
        self.api = ExchangeMiddleware(_fastapi(runtime), runtime.exchanges, request_ids)
        # The relayed APIs, by path: plain ASGI endpoints, without the framework on the hot path.
        self._relayed = {
            api.path: RelayedEndpoint(
                api,
                runtime.keys,
                runtime.relay,
                runtime.exchanges,
                runtime.settings.max_body_bytes,
                request_ids,
                log_content=runtime.settings.log_content,
                limiter=runtime.limiter,
            )
            for api in (CHAT_API, MESSAGES_API, RESPONSES_API)
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = self._relayed.get(scope["path"]) if scope["type"] == "http" else None
        if endpoint is not None:
            await endpoint(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        else:
            await self.api(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.runtime.start()
                except Exception as exc:
                    log.exception("start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                if self._serving:
                    collector.settle()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    await self.runtime.stop()
                finally:
                    await send({"type": "lifespan.shutdown.complete"})
                return


def create_app(settings: Settings, config: GatewayConfig, *, serving: bool = False) -> GatewayApp:
    """The app; `serving` for a process that exists to serve it (`gateway serve`, its workers)."""
    return GatewayApp(Runtime.build(settings, config), serving=serving)


def app_from_env() -> GatewayApp:
    """Factory for `uvicorn --factory` and worker processes: settings and config path from the environment."""
    settings = Settings()
    if settings.config is None:
        raise SystemExit("GATEWAY_CONFIG is not set: give the path of the config file")
    return create_app(settings, load_config(settings.config), serving=True)


def _fastapi(runtime: Runtime) -> FastAPI:
    api = FastAPI(title="LLM gateway", version=__version__)
    api.state.runtime = runtime
    api.include_router(router)
    api.include_router(embeddings_router)
    api.include_router(count_tokens_router)
    api.include_router(usage_router)
    api.include_router(admin_router)
    api.openapi = lambda: openapi_document(api)  # type: ignore[method-assign]

    @api.exception_handler(GatewayError)
    async def _gateway_error(request: Request, exc: GatewayError) -> Response:
        return _error_response(request, exc)

    @api.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> Response:
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        code = "not_found" if exc.status_code == 404 else None
        return _error_response(request, GatewayError(str(exc.detail), status=exc.status_code, type=kind, code=code))

    @api.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        param = ".".join(str(p) for p in first["loc"][1:]) or None
        return _error_response(request, InvalidRequest(str(first["msg"]), param=param))

    @api.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> Response:
        log.error("request failed", exc_info=exc)
        error = GatewayError("The gateway failed to handle the request.", status=500, type="server_error")
        return _error_response(request, error)

    return api


def _error_response(request: Request, exc: GatewayError) -> Response:
    exchange = exchange_of(request)
    if exchange is not None:
        exchange.fail(exc)
    headers = {k.decode(): v.decode() for k, v in exc.response_headers()}
    # Anthropic clients read errors in Anthropic's shape, on every Messages path.
    body = messages.error_body(exc) if request.url.path.startswith("/v1/messages") else exc.to_json()
    return Response(body, status_code=exc.status, media_type="application/json", headers=headers)


def _endpoint(path: str) -> str:
    """A fixed name for what a path is, for metrics and logs (never the raw path)."""
    if path == "/v1/models" or path.startswith("/v1/models/"):
        return "models"
    if path.startswith("/admin/"):
        return "admin"
    if path == "/v1/usage" or "/dashboard/billing/" in path:
        return "usage"
    if path == "/v1/embeddings":
        return "embeddings"
    if path == "/v1/messages/count_tokens":
        return "messages.count_tokens"
    return "other"


class ExchangeMiddleware:
    """Gives every FastAPI response an `x-request-id` (the hot route sets its own), and every API
    request an exchange, finished when the response has gone out."""

    def __init__(self, app: ASGIApp, exchanges: Exchanges, request_ids: RequestIds) -> None:
        self.app = app
        self._exchanges = exchanges
        self._request_id = request_ids

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        presented = next((v for k, v in scope["headers"] if k == b"x-request-id"), None)
        rid = self._request_id(presented)
        path: str = scope["path"]
        exchange = None
        if path not in _UNRECORDED:
            exchange = scope["gateway.exchange"] = self._exchanges.open(rid.decode(), _endpoint(path))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid)]
                if exchange is not None:
                    exchange.status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if exchange is not None:
                exchange.finish()
