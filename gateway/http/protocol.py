"""The HTTP/1.1 connection: uvicorn's httptools protocol with the limits it lacks.

uvicorn's httptools protocol has no limit on the size of a request's head (request line and
headers), no timeout for reading it, none for a body that stops arriving, and answers malformed
HTTP with a plain-text 400. This subclass adds, per connection:

- a head size limit: a longer request line is answered 414, longer headers 431, before more than
  the limit is buffered;
- a head timeout, from the connection's opening (or a later request's first byte) to the end of its
  headers: 408;
- a body timeout, for the gap between pieces of a body still arriving: the body's reader is told
  and answers 408 (`asgi.read_body`); a body nobody reads (the app answered without it), which
  uvicorn would otherwise keep receiving for as long as it trickles, closes the connection;
- the keep-alive timeout (uvicorn's) kept with one timer per connection, which looks at when the
  connection went idle, rather than a timer set after every response and cancelled by the next
  request (about 2 us a request);
- malformed HTTP (a control byte in a header, a bad chunk size, `Content-Length` with
  `Transfer-Encoding`, a duplicated or non-numeric `Content-Length`) answered 400.

Each of these answers is an OpenAI-shaped error with an `x-request-id`, closes the connection, and
is counted in `gateway_http_refused_total`. One found in a head is answered here and logged; one in
a body that the app is reading is answered by the app (so its access log has it).

Timers are armed only for a head or body that is still incomplete after a read, so a
request that arrives in one piece costs nothing extra.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import httptools
import orjson
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from gateway.errors import BodyTimeout, GatewayError, InvalidRequest
from gateway.http.asgi import BODY_ERROR, RequestIds
from gateway.observability import metrics
from gateway.relay.exchange import request_id
from gateway.settings import Settings

log = logging.getLogger("gateway")

# How long a body's reader has to answer once told its body will not come, before the connection
# is closed.
_ANSWER_MARGIN = 5.0


@dataclass(frozen=True)
class ConnectionLimits:
    max_head_bytes: int = 64 * 1024
    head_timeout: float = 10.0
    body_timeout: float = 30.0


def connection_limits(settings: Settings) -> ConnectionLimits:
    return ConnectionLimits(settings.max_header_bytes, settings.header_timeout, settings.body_timeout)


class ServerConfig(Config):
    """uvicorn's `Config` with the connection limits; pickled as it is into worker processes."""

    def __init__(self, app: Any, *, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(app, http=GatewayProtocol, ws="none", **kwargs)
        self.limits = limits


class GatewayProtocol(HttpToolsProtocol):
    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        limits: ConnectionLimits = getattr(config, "limits", None) or ConnectionLimits()
        self._max_head = limits.max_head_bytes
        self._head_timeout = limits.head_timeout
        self._body_timeout = limits.body_timeout
        self._reading_head = True  # the next bytes belong to a request line and headers
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_at = 0.0
        self._idle_since: float | None = None  # when the last response ended, if nothing came since
        self._idle_timer: asyncio.TimerHandle | None = None
        self._broken = False  # the parser failed: this connection reads nothing more

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # A connection that never sends a byte is held no longer than a slow head would be.
        self._head_timer = self.loop.call_later(self._head_timeout, self._head_too_slow)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        if self._broken:  # the parser failed earlier in this request's body: nothing more is read
            return
        if self._reading_head:
            room = self._max_head - self._head_bytes
            self._head_bytes += len(data)
            if len(data) > room:
                # Feed only what the limit allows: the head must end within it.
                if not self._feed(data[:room]) or self.transport.is_closing():
                    return
                if self._reading_head:
                    self._refuse_long_head()
                    return
                data = data[room:]
        if not self._feed(data) or self.transport.is_closing():
            return
        if self._reading_head:
            if self._head_bytes and self._head_timer is None:
                self._head_timer = self.loop.call_later(self._head_timeout, self._head_too_slow)
        elif self.cycle is not None and self.cycle.more_body:
            self._body_at = self.loop.time()
            if self._body_timer is None:
                self._body_timer = self.loop.call_later(self._body_timeout, self._body_stalled)

    def _feed(self, data: bytes) -> bool:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            reason = str(exc).rstrip(".") or "malformed request"
            message = f"The request is not valid HTTP/1.1: {reason}."
            if self._reading_head:
                self._refuse(400, "invalid_http_request", message)
            else:  # in the body (a bad chunk size, say): its reader answers
                self._broken = True
                metrics.CONNECTIONS_REFUSED.labels("invalid_http_request").inc()
                self._fail_body(InvalidRequest(message, code="invalid_http_request", headers=_CLOSE))
            return False
        except httptools.HttpParserUpgrade:
            # No protocol upgrade is served: the request goes on as plain HTTP (uvicorn's behaviour).
            self._unsupported_upgrade_warning()
        return True

    # Parser callbacks (uvicorn's, plus the head and body bookkeeping)

    def on_headers_complete(self) -> None:
        self._reading_head = False
        self._head_bytes = 0
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().on_headers_complete()
        if self.cycle is not None:
            self.cycle.transport = _HeadHeld(self.transport, self.loop)  # type: ignore[assignment]

    def on_message_complete(self) -> None:
        self._reading_head = True
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        super().on_message_complete()

    def on_response_complete(self) -> None:
        if self.pipeline or self.transport.is_closing():
            super().on_response_complete()  # starts the next pipelined request; arms no timer
            return
        # uvicorn's, but for its keep-alive timer: the connection is idle from now on.
        self.server_state.total_requests += 1
        self._unset_keepalive_if_required()
        self.flow.resume_reading()
        self._idle_since = self.loop.time()
        if self._idle_timer is None:
            self._idle_timer = self.loop.call_later(self.timeout_keep_alive, self._idle_check)

    def _unset_keepalive_if_required(self) -> None:
        # Called by uvicorn whenever bytes arrive: the connection is not idle.
        self._idle_since = None
        super()._unset_keepalive_if_required()

    # Timers

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if not self._reading_head or self.transport.is_closing():
            return
        if not self._head_bytes and self.cycle is not None:
            # Idle after a response: uvicorn's keep-alive timer is in charge (or a response is
            # still going out on this connection).
            return
        message = f"The request's headers did not arrive within {self._head_timeout:g} seconds."
        self._refuse(408, "request_timeout", message)

    def _idle_check(self) -> None:
        """Close the connection when idle for the keep-alive timeout; else look again when it would be."""
        self._idle_timer = None
        if self._idle_since is None or self.transport.is_closing():
            return  # a request is in progress: its response's end arms the timer again
        idle = self.loop.time() - self._idle_since
        if idle >= self.timeout_keep_alive:
            self.transport.close()
        else:
            self._idle_timer = self.loop.call_later(self.timeout_keep_alive - idle, self._idle_check)

    def _body_stalled(self) -> None:
        self._body_timer = None
        if self._reading_head or self.transport.is_closing() or self.cycle is None:
            return
        idle = self.loop.time() - self._body_at
        if idle < self._body_timeout:
            self._body_timer = self.loop.call_later(self._body_timeout - idle, self._body_stalled)
            return
        metrics.CONNECTIONS_REFUSED.labels("body_timeout").inc()
        self._fail_body(BodyTimeout(self._body_timeout))

    def _fail_body(self, error: GatewayError) -> None:
        """The body of the request in progress will not come: tell its reader (`asgi.read_body`),
        which answers with `error`; close the connection if nobody answers in time."""
        self._cancel_timers()
        state = self.scope.get("state")
        if self.cycle is None or self.cycle.response_started or state is None:
            # The app answered without reading the body: nobody to tell.
            self.transport.close()
            return
        state[BODY_ERROR] = error
        self.cycle.message_event.set()  # the reader wakes to an empty piece, and finds the error
        self._body_timer = self.loop.call_later(_ANSWER_MARGIN, self._close_unanswered)

    def _close_unanswered(self) -> None:
        self._body_timer = None
        if self.cycle is not None and not self.cycle.response_complete and not self.transport.is_closing():
            log.warning("closing a connection whose request body failed and was not answered")
            self.transport.close()

    def _cancel_timers(self) -> None:
        for timer in (self._head_timer, self._body_timer, self._idle_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = self._idle_timer = None

    # Answers of the connection itself

    def _refuse_long_head(self) -> None:
        if not self.headers:  # no header yet: the request line alone is too long
            self._refuse(414, "request_line_too_long", f"The request line is longer than {self._max_head} bytes.")
        else:
            message = f"The request's headers are larger than {self._max_head} bytes."
            self._refuse(431, "request_headers_too_large", message)

    def _refuse(self, status: int, code: str, message: str) -> None:
        """Answer a request whose head the app never saw, and close the connection."""
        self._cancel_timers()
        self._reading_head = False
        self._broken = True
        rid = RequestIds()(None)
        metrics.CONNECTIONS_REFUSED.labels(code).inc()
        token = request_id.set(rid.decode())
        try:
            log.warning("refused a request before it reached the app: %d %s", status, message)
        finally:
            request_id.reset(token)
        if self.cycle is not None and not self.cycle.response_complete:
            # An earlier request's response is still going out on this connection (pipelining):
            # writing another into it would corrupt it.
            self.transport.close()
            return
        body = orjson.dumps(
            {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
        )
        head = [
            b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status]),
            *(b"%s: %s\r\n" % pair for pair in self.server_state.default_headers),
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"x-request-id: %s\r\n" % rid,
            # Sending the same bytes again changes nothing; a timeout may go better another time.
            b"" if status == 408 else b"x-should-retry: false\r\n",
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        self.transport.close()


class _HeadHeld:
    """A response's view of its connection: the first write (the response's head) is held until the
    next one or the end of this turn of the event loop, so that a reply whose body is sent at once
    goes out in one write (one system call and one segment instead of two)."""

    __slots__ = ("_held", "_loop", "_started", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._started = False
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        if not self._started:
            self._started = True
            self._held = data
            self._loop.call_soon(self._flush)
        elif self._held is not None:
            held, self._held = self._held, None
            self._transport.write(held + data)
        else:
            self._transport.write(data)

    def _flush(self) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()


_CLOSE = [(b"connection", b"close")]
_REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
}
