"""Errors the gateway answers with, always rendered in OpenAI shape.

    GatewayError
    ├── InvalidRequest          400 invalid_request_error
    ├── BodyTooLarge            413 invalid_request_error
    ├── BodyTimeout             408 invalid_request_error
    ├── AuthenticationFailed    401 invalid_api_key
    ├── ModelNotFound           404 model_not_found
    ├── ClientDisconnected      499 the client left before its request was complete (nothing is sent)
    ├── ShuttingDown            503 the process stopped before the request could finish
    └── UpstreamError           status decided by what the upstream did
        ├── UpstreamStatusError     the upstream answered with an error status
        ├── UpstreamConnectError    502, could not connect
        ├── UpstreamTimeout         504, no answer in time
        └── UpstreamProtocolError   502, dropped or garbled reply

Messages never contain credentials or upstream URLs: upstreams are named by their config name.
"""

from __future__ import annotations

import orjson


class GatewayError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        status: int | None = None,
        type: str | None = None,
        code: str | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if status is not None:
            self.status = status
        if type is not None:
            self.type = type
        if code is not None:
            self.code = code
        self.headers = headers or []

    def body(self) -> dict[str, object]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def to_json(self) -> bytes:
        return orjson.dumps(self.body())

    def response_headers(self) -> list[tuple[bytes, bytes]]:
        """The error's own headers, plus `x-should-retry: false` on a client mistake (sending it
        again changes nothing, and the openai SDK would otherwise retry some statuses)."""
        client_mistake = self.status < 500 and self.status not in (408, 409, 429)
        if client_mistake and all(name != b"x-should-retry" for name, _ in self.headers):
            return [*self.headers, (b"x-should-retry", b"false")]
        return self.headers

    @property
    def retryable(self) -> bool:
        """Whether another deployment may succeed where this one failed."""
        return False


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class BodyTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class BodyTimeout(GatewayError):
    """The request body stopped arriving: the connection is closed with the answer, as the rest of the
    body may still come and could not be told from the next request."""

    status = 408
    type = "invalid_request_error"
    code = "request_timeout"

    def __init__(self, seconds: float) -> None:
        message = f"The request body stopped arriving: nothing came for {seconds:g} seconds."
        super().__init__(message, headers=[(b"connection", b"close")])


class AuthenticationFailed(GatewayError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class ModelNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"

    def __init__(self, model: str) -> None:
        shown = model if len(model) <= 200 else model[:200] + "..."
        super().__init__(f"The model `{shown}` does not exist or you do not have access to it.", param="model")


class ClientDisconnected(GatewayError):
    """The client went away before its request body was complete: nothing is sent, nothing upstream."""

    status = 499  # nginx's "client closed request": never sent, only recorded
    type = "invalid_request_error"
    code = "client_disconnected"


class ShuttingDown(GatewayError):
    """The process stopped (its shutdown timeout ran out) while the request was in progress."""

    status = 503
    type = "server_error"
    code = "shutting_down"


class UpstreamError(GatewayError):
    status = 502
    type = "upstream_error"
    # How an attempt on an upstream ended, for metrics and logs: a small fixed set of words.
    outcome: str = "error"
    # Whether the upstream said the input is longer than the model's context window.
    context_too_long: bool = False

    @property
    def retryable(self) -> bool:
        return True


class UpstreamStatusError(UpstreamError):
    """The upstream answered with a non-2xx status (kept in `upstream_status`)."""

    upstream_status: int = 0

    @property
    def outcome(self) -> str:  # type: ignore[override]
        status = self.upstream_status
        if status == 429:
            return "rate_limited"
        if status in (401, 403):
            return "auth_failed"
        return "client_error" if status < 500 else "server_error"

    @property
    def context_too_long(self) -> bool:  # type: ignore[override]
        if self.upstream_status not in (400, 413):
            return False
        text = f"{self.code or ''} {self.message}".lower()
        return any(sign in text for sign in _CONTEXT_TOO_LONG)

    @property
    def retryable(self) -> bool:
        # Another deployment may well succeed after throttling, a server fault, refused credentials or
        # a wrong address (a 404 that is not about the model).
        if self.code == "upstream_endpoint_not_found":
            return True
        return self.upstream_status in (401, 403, 408, 409, 429) or self.upstream_status >= 500


# How vendors word "the input does not fit the model's context window".
_CONTEXT_TOO_LONG = (
    "context_length_exceeded",
    "context length",
    "context window",
    "maximum context",
    "prompt is too long",
    "input is too long",
)


class UpstreamConnectError(UpstreamError):
    status = 502
    code = "upstream_unreachable"
    outcome = "connect_error"


class UpstreamTimeout(UpstreamError):
    status = 504
    type = "timeout_error"
    code = "upstream_timeout"
    outcome = "timeout"


class UpstreamProtocolError(UpstreamError):
    status = 502
    code = "upstream_protocol_error"
    outcome = "protocol_error"
