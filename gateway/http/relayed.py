"""The relayed client APIs as plain ASGI endpoints, the hot path without framework overhead:
`POST /v1/chat/completions`, `POST /v1/messages` (Anthropic's Messages API) and `POST /v1/responses`
(OpenAI's Responses API), buffered or streamed.
What differs between them is a `ClientApi`: how a body is checked, how errors are written."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from gateway.accounting.keys import Keys, key_from_headers
from gateway.accounting.limits import Limiter, estimate_tokens
from gateway.dialects.openai import error_events
from gateway.dialects.registry import CHAT, MESSAGES, RESPONSES
from gateway.errors import ClientDisconnected, GatewayError, ShuttingDown
from gateway.http.asgi import JSON_HEADERS, SSE_HEADERS, RequestIds, read_body, send_bytes, send_error
from gateway.observability.content import Transcript
from gateway.protocol import messages, responses
from gateway.protocol.messages import parse_messages_request
from gateway.protocol.responses import parse_responses_request
from gateway.relay import Exchange, Exchanges, Relay, Stream
from gateway.request import parse_chat_request
from gateway.types import Message, Receive, Scope, Send

log = logging.getLogger("gateway.http")

_INTERNAL = GatewayError("The gateway failed to handle the request.", status=500, type="server_error")
_SHUTTING_DOWN = ShuttingDown(
    "The gateway stopped before the request could finish; send it again.", headers=[(b"retry-after", b"1")]
)


@dataclass(frozen=True, slots=True)
class ClientApi:
    name: str  # the exchange's endpoint, and the translators' client API (`dialects/registry.py`)
    path: str
    parse: Callable[[bytes], Any]  # a checked request with `model`, `stream`, `body` and `ext`
    error_body: Callable[[GatewayError], bytes]
    stream_error: Callable[[GatewayError], bytes]  # the end of a stream that failed after it started


CHAT_API = ClientApi(CHAT, "/v1/chat/completions", parse_chat_request, GatewayError.to_json, error_events)
MESSAGES_API = ClientApi(MESSAGES, "/v1/messages", parse_messages_request, messages.error_body, messages.error_events)


RESPONSES_API = ClientApi(
    RESPONSES, "/v1/responses", parse_responses_request, GatewayError.to_json, responses.error_events
)


class RelayedEndpoint:
    def __init__(
        self,
        api: ClientApi,
        keys: Keys,
        relay: Relay,
        exchanges: Exchanges,
        max_body_bytes: int,
        request_ids: RequestIds,
        log_content: bool = False,
        limiter: Limiter | None = None,
    ) -> None:
        self._api = api
        self._limiter = limiter
        self._request_id = request_ids
        self._keys = keys
        self._relay = relay
        self._exchanges = exchanges
        self._limit = max_body_bytes
        self._log_content = log_content
        self._watchers = _Watchers()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        authorization = api_key = x_api_key = length = presented_id = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value
            elif name == b"content-length":
                length = value
            elif name == b"api-key":
                api_key = value
            elif name == b"x-api-key":
                x_api_key = value
            elif name == b"x-request-id":
                presented_id = value
        rid = self._request_id(presented_id)
        api = self._api
        exchange = self._exchanges.open(rid.decode(), api.name)
        started = False
        watcher: _DisconnectWatcher | None = None
        try:
            if scope["method"] != "POST":
                raise GatewayError(
                    f"Use POST for {api.path}.",
                    status=405,
                    type="invalid_request_error",
                    headers=[(b"allow", b"POST")],
                )
            principal = await self._keys.authenticate(
                key_from_headers(_text(authorization), _text(api_key), _text(x_api_key))
            )
            exchange.key_name, exchange.team = principal.name, principal.team
            body = await read_body(scope, receive, self._limit, length)
            request = api.parse(body)
            exchange.model, exchange.stream, exchange.sess_id = request.model, request.stream, request.ext.sess_id
            exchange.prompt_estimate = estimate_tokens(len(body))
            if request.ext.metadata:
                exchange.metadata = request.ext.metadata
            if principal.limited and self._limiter is not None:
                choices = request.body.get("n")
                exchange.admission = await self._limiter.admit(
                    principal,
                    request.model,
                    exchange.prompt_estimate,
                    request.ext.max_output,
                    choices if isinstance(choices, int) else 1,
                )
            transcript = Transcript(exchange, request.body) if self._log_content else None
            # From here on, a client that goes away cancels the work done for it, upstream call included.
            watcher = _DisconnectWatcher(receive, self._watchers)
            if not request.stream:
                reply = await self._relay.complete(exchange, principal, request, api.name)
                watcher.stop()
                if transcript is not None:
                    transcript.reply(reply.body)
                exchange.status = 200
                headers = [*JSON_HEADERS, (b"x-request-id", rid), *reply.headers]
                if exchange.admission is not None:
                    headers += exchange.admission.headers
                await send_bytes(send, 200, reply.body, headers)
                return
            stream = await self._relay.stream(exchange, principal, request, api.name)
            started = True
            if scope.get("http_version") == "1.0":
                # HTTP/1.0 has no chunked encoding (the only way uvicorn streams): the whole stream,
                # collected, goes out with its length.
                send = _Collected(send)
            await self._send_stream(stream, exchange, rid, send, transcript, watcher)
        except ClientDisconnected as exc:
            exchange.fail(exc)  # nothing to send: the client is gone
        except GatewayError as exc:
            exchange.fail(exc)
            if not started:
                await send_error(send, exc, rid, api.error_body)
        except asyncio.CancelledError:
            _uncancel()
            if watcher is not None and watcher.fired:  # the client left before the reply: nobody to answer
                exchange.fail(ClientDisconnected("The client closed the connection before the reply."))
            else:  # uvicorn cancels what still runs when its shutdown timeout is over: say so, end quietly
                exchange.fail(_SHUTTING_DOWN)
                if not started:
                    await _quietly(send_error(send, _SHUTTING_DOWN, rid, api.error_body))
        except Exception:
            log.exception("request failed")
            exchange.fail(_INTERNAL)
            if not started:
                await send_error(send, _INTERNAL, rid, api.error_body)
        finally:
            if watcher is not None:
                watcher.stop()
            exchange.finish()

    async def _send_stream(
        self,
        stream: Stream,
        exchange: Exchange,
        rid: bytes,
        send: Send,
        transcript: Transcript | None,
        watcher: _DisconnectWatcher,
    ) -> None:
        headers = [*SSE_HEADERS, (b"x-request-id", rid), *stream.headers]
        if exchange.admission is not None:
            headers += exchange.admission.headers
        opened = False
        try:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            exchange.status, opened = 200, True
            async for events, more in stream.events():
                if transcript is not None:
                    transcript.events(events)
                if not more:
                    watcher.stop()  # the last write: from now on the client may go, nothing is lost
                await send({"type": "http.response.body", "body": events, "more_body": more})
        except asyncio.CancelledError:
            _uncancel()
            if watcher.fired:
                # The client went away: closing the stream below closes the upstream; the usage so far is recorded.
                exchange.client_disconnected = True
                log.info("client disconnected mid-stream")
            else:
                # The process is stopping and its shutdown timeout is over: end the stream as an upstream
                # failure would, so that the client sees an error rather than a stream cut short.
                exchange.fail(_SHUTTING_DOWN)
                if opened:
                    tail = self._api.stream_error(_SHUTTING_DOWN)
                    await _quietly(send({"type": "http.response.body", "body": tail, "more_body": False}))
                else:
                    await _quietly(send_error(send, _SHUTTING_DOWN, rid, self._api.error_body))
        finally:
            watcher.stop()
            await stream.aclose()


class _Collected:
    """A `send` that holds a response's body and sends it whole, with a `content-length`."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._start: Message | None = None
        self._body: list[bytes] = []

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self._start = message
            return
        self._body.append(message.get("body", b""))
        if not message.get("more_body", False) and self._start is not None:
            body = b"".join(self._body)
            headers = [*self._start["headers"], (b"content-length", str(len(body)).encode())]
            await self._send({**self._start, "headers": headers})
            await self._send({"type": "http.response.body", "body": body, "more_body": False})


def _uncancel() -> None:
    """Take back the cancellation that was just caught, so the task can finish its reply."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()


async def _quietly(sending: Awaitable[None]) -> None:
    """A last message to a client that may be gone already; failing to send it changes nothing."""
    try:
        await sending
    except Exception as exc:
        log.debug("could not send the last message: %s", type(exc).__name__)


class _DisconnectWatcher:
    """Cancels the current task when the client disconnects, until stopped.

    The watch starts only once the request has run for `WATCH_AFTER` to twice that (`_Watchers`): a
    request answered sooner has nothing worth cancelling. A client that leaves is noticed within that.
    """

    __slots__ = ("_receive", "_stopped", "_target", "_task", "_watchers", "fired")

    def __init__(self, receive: Receive, watchers: _Watchers) -> None:
        self.fired = False
        self._stopped = False
        self._receive = receive
        self._target = asyncio.current_task()
        self._task: asyncio.Task[None] | None = None
        self._watchers = watchers
        watchers.add(self)

    def start(self) -> None:
        if not self._stopped:
            self._task = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                break
        if self._target is not None and not self._stopped:
            self.fired = True
            self._target.cancel()

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._watchers.discard(self)
        if self._task is not None:
            self._task.cancel()


class _Watchers:
    """One timer for every request's disconnect watch, rather than one per request (a timer set and
    cancelled costs about 2 us). Each tick starts the watches that were already waiting at the tick
    before."""

    WATCH_AFTER = 0.05

    def __init__(self) -> None:
        self._waiting: set[_DisconnectWatcher] = set()  # since before the last tick
        self._new: set[_DisconnectWatcher] = set()  # since the last tick
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def add(self, watcher: _DisconnectWatcher) -> None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # an app may outlive its first loop (in tests): that loop's watches are over
            self._loop, self._timer = loop, None
            self._waiting, self._new = set(), set()
        self._new.add(watcher)
        if self._timer is None:
            self._timer = loop.call_later(self.WATCH_AFTER, self._tick)

    def discard(self, watcher: _DisconnectWatcher) -> None:
        self._new.discard(watcher)
        self._waiting.discard(watcher)

    def _tick(self) -> None:
        due, self._waiting, self._new = self._waiting, self._new, set()
        for watcher in due:
            watcher.start()
        self._timer = asyncio.get_running_loop().call_later(self.WATCH_AFTER, self._tick) if self._waiting else None


def _text(value: bytes | None) -> str | None:
    # Header values are bytes; latin-1 maps every byte, so this cannot fail.
    return value.decode("latin-1").strip() if value is not None else None
