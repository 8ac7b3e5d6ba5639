"""Small helpers for plain ASGI responses on the hot path."""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Callable

from gateway.errors import BodyTooLarge, ClientDisconnected, GatewayError
from gateway.types import Headers, Receive, Scope, Send

JSON_HEADERS: Headers = [(b"content-type", b"application/json")]
SSE_HEADERS: Headers = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")


class RequestIds:
    """Request ids: the caller's `x-request-id` when it is sane, else a new one.

    New ids are a random per-app prefix and a counter: unique across processes without a
    system call per request.
    """

    def __init__(self) -> None:
        self._prefix = b"req_" + os.urandom(8).hex().encode()
        self._counter = itertools.count(1)

    def __call__(self, presented: bytes | None) -> bytes:
        if presented and _REQUEST_ID.match(presented):
            return presented
        return b"%s%08x" % (self._prefix, next(self._counter))


# Set in a request's `scope["state"]` by the connection (http/protocol.py) when the body will not
# come (it stopped arriving, or is malformed): the error to answer with. The connection then wakes
# the body's reader.
BODY_ERROR = "gateway.body_error"


async def read_body(scope: Scope, receive: Receive, limit: int, declared: bytes | None) -> bytes:
    """The whole request body, at most `limit` bytes; the connection's error when it says the body
    will not come."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"The request body is larger than the limit of {limit} bytes.")
    message = await receive()
    if message["type"] == "http.disconnect":
        raise ClientDisconnected("The client closed the connection before the request body was complete.")
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        if len(body) > limit:
            raise BodyTooLarge(f"The request body is larger than the limit of {limit} bytes.")
        return body
    parts = [body]
    size = len(body)
    state = scope.get("state", {})  # the server's own dict (the connection writes to it), even when empty
    while message.get("more_body", False):
        if (error := state.get(BODY_ERROR)) is not None:
            raise error
        message = await receive()
        if message["type"] == "http.disconnect":
            # What came may parse as a whole request: it must not be sent upstream (or billed).
            raise ClientDisconnected("The client closed the connection before the request body was complete.")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"The request body is larger than the limit of {limit} bytes.")
        parts.append(chunk)
    return b"".join(parts)


async def send_bytes(send: Send, status: int, body: bytes, headers: Headers) -> None:
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def send_error(
    send: Send, error: GatewayError, rid: bytes, body: Callable[[GatewayError], bytes] | None = None
) -> None:
    """The error in the OpenAI shape, or in the shape `body` writes (another client API's)."""
    headers = [*JSON_HEADERS, (b"x-request-id", rid), *error.response_headers()]
    await send_bytes(send, error.status, error.to_json() if body is None else body(error), headers)
