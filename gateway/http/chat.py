"""`POST /v1/chat/completions` as a plain ASGI endpoint: the hot path, without framework overhead."""

from __future__ import annotations

import asyncio
import logging

from gateway.auth import KeyTable, key_from_headers
from gateway.errors import GatewayError
from gateway.http.asgi import JSON_HEADERS, SSE_HEADERS, RequestIds, read_body, send_bytes, send_error
from gateway.observability.content import Transcript
from gateway.relay import Exchange, Exchanges, Relay, Stream
from gateway.request import parse_chat_request
from gateway.types import Receive, Scope, Send

log = logging.getLogger("gateway.http")

_INTERNAL = GatewayError("The gateway failed to handle the request.", status=500, type="server_error")
ENDPOINT = "chat.completions"


class ChatCompletions:
    def __init__(
        self,
        keys: KeyTable,
        relay: Relay,
        exchanges: Exchanges,
        max_body_bytes: int,
        request_ids: RequestIds,
        log_content: bool = False,
    ) -> None:
        self._request_id = request_ids
        self._keys = keys
        self._relay = relay
        self._exchanges = exchanges
        self._limit = max_body_bytes
        self._log_content = log_content

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
        exchange = self._exchanges.open(rid.decode(), ENDPOINT)
        started = False
        try:
            if scope["method"] != "POST":
                raise GatewayError(
                    "Use POST for /v1/chat/completions.",
                    status=405,
                    type="invalid_request_error",
                    headers=[(b"allow", b"POST")],
                )
            principal = self._keys.authenticate(
                key_from_headers(_text(authorization), _text(api_key), _text(x_api_key))
            )
            exchange.key_name = principal.name
            request = parse_chat_request(await read_body(receive, self._limit, length))
            exchange.model, exchange.stream, exchange.sess_id = request.model, request.stream, request.ext.sess_id
            transcript = Transcript(exchange, request.body) if self._log_content else None
            if not request.stream:
                reply = await self._relay.complete(exchange, principal, request)
                if transcript is not None:
                    transcript.reply(reply.body)
                await send_bytes(send, 200, reply.body, [*JSON_HEADERS, (b"x-request-id", rid), *reply.headers])
                return
            stream = await self._relay.stream(exchange, principal, request)
            started = True
            await self._send_stream(stream, exchange, rid, receive, send, transcript)
        except GatewayError as exc:
            exchange.fail(exc)
            if not started:
                await send_error(send, exc, rid)
        except Exception:
            log.exception("request failed")
            exchange.fail(_INTERNAL)
            if not started:
                await send_error(send, _INTERNAL, rid)
        finally:
            exchange.finish()

    async def _send_stream(
        self,
        stream: Stream,
        exchange: Exchange,
        rid: bytes,
        receive: Receive,
        send: Send,
        transcript: Transcript | None,
    ) -> None:
        headers = [*SSE_HEADERS, (b"x-request-id", rid), *stream.headers]
        watcher: _DisconnectWatcher | None = None
        try:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            async for events, more in stream.events():
                if transcript is not None:
                    transcript.events(events)
                await send({"type": "http.response.body", "body": events, "more_body": more})
                if more and watcher is None:
                    watcher = _DisconnectWatcher(receive)
            if watcher is not None:
                watcher.stop()
        except asyncio.CancelledError:
            if watcher is None or not watcher.fired:
                raise
            # The client went away: closing the stream below closes the upstream; the usage so far is recorded.
            exchange.client_disconnected = True
            log.info("client disconnected mid-stream")
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
        finally:
            if watcher is not None:
                watcher.stop()
            await stream.aclose()


class _DisconnectWatcher:
    """Cancels the current task when the client disconnects, until stopped."""

    def __init__(self, receive: Receive) -> None:
        self.fired = False
        self._stopped = False
        self._target = asyncio.current_task()
        self._task = asyncio.create_task(self._watch(receive))

    async def _watch(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
        if self._target is not None and not self._stopped:
            self.fired = True
            self._target.cancel()

    def stop(self) -> None:
        self._stopped = True
        self._task.cancel()


def _text(value: bytes | None) -> str | None:
    # Header values are bytes; latin-1 maps every byte, so this cannot fail.
    return value.decode("latin-1").strip() if value is not None else None
