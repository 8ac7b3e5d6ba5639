"""One chat completion through the gateway: route, build, send, decode, record.

Retries across deployments happen only before the first byte has gone to the client. Once a
stream has started, an error becomes an SSE `error` event followed by `[DONE]`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from gateway.auth import Principal
from gateway.config import UpstreamConfig
from gateway.dialects import dialect_for
from gateway.dialects.base import Dialect, StreamDecoder, Target, UpstreamRequest, Usage, redact
from gateway.dialects.openai import DONE_EVENT
from gateway.errors import GatewayError, InvalidRequest, ModelNotFound, UpstreamError
from gateway.ledger import Ledger, UsageRecord
from gateway.request import ChatRequest
from gateway.routing import Deployment, Router
from gateway.upstream.base import Transport, UpstreamResponse

log = logging.getLogger("gateway.relay")
T = TypeVar("T")


class NoUsableDeployment(GatewayError):
    status = 503
    type = "upstream_error"
    code = "upstream_not_configured"


@dataclass(slots=True)
class Stream:
    """A stream that has produced its first events.

    `rest` yields the following events (each item one or more whole SSE events) and never raises;
    when it ends, `tail` holds the final events, to go out with the end of the body. `rest` is None
    when the upstream had already finished and `first` is the whole stream.
    """

    first: bytes
    rest: AsyncIterator[bytes] | None = None
    tail: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


@dataclass(slots=True)
class Reply:
    body: bytes
    headers: list[tuple[bytes, bytes]]


class Relay:
    def __init__(
        self,
        router: Router,
        transports: Mapping[str, Transport],
        ledger: Ledger,
        max_attempts: int,
        max_client_retries: int = 3,
        retry_backoff: float = 0.25,
    ) -> None:
        self._router = router
        self._transports = transports
        self._ledger = ledger
        self._max_attempts = max_attempts
        self._max_client_retries = max_client_retries
        self._backoff = retry_backoff

    def _deployments(self, principal: Principal, request: ChatRequest) -> list[Deployment]:
        route = self._router.match(request.model)
        if route is None or not principal.may_use(request.model):
            raise ModelNotFound(request.model)
        deployments = self._router.order(route, sticky=request.ext.sess_id)
        if not deployments:
            raise NoUsableDeployment(
                f"The model `{request.model}` is served only by upstreams without credentials configured.",
                headers=[(b"x-should-retry", b"false")],
            )
        retries = request.ext.retries
        if retries is None:
            return deployments[: self._max_attempts]
        # The client's `retries`, capped: attempts cycle through the deployments in order.
        attempts = 1 + min(retries, self._max_client_retries)
        return [deployments[i % len(deployments)] for i in range(attempts)]

    async def complete(self, principal: Principal, request: ChatRequest) -> Reply:
        """A buffered reply: the OpenAI chat.completion body."""
        return await self._in_order(
            self._deployments(principal, request), lambda d: self._complete_once(principal, request, d)
        )

    async def _complete_once(self, principal: Principal, request: ChatRequest, deployment: Deployment) -> Reply:
        upstream = deployment.upstream
        dialect, built = _build(request, deployment)
        response = await self._transports[upstream.name].open(built)
        body = await response.read()
        try:
            if response.status >= 300:
                raise dialect.decode_error(response.status, body, response.headers, upstream)
            reply = dialect.decode_reply(body, request)
        except UpstreamError as exc:
            exc.message = redact(exc.message, upstream)
            raise
        self._record(principal, request, reply.usage)
        return Reply(reply.body, _reply_headers(built))

    async def stream(self, principal: Principal, request: ChatRequest) -> Stream:
        """Open a stream on the first deployment that produces output; raises `GatewayError` before that."""
        return await self._in_order(
            self._deployments(principal, request), lambda d: self._stream_once(principal, request, d)
        )

    async def _in_order(self, attempts: list[Deployment], once: Callable[[Deployment], Awaitable[T]]) -> T:
        """Try each attempt until one succeeds; only retryable upstream errors move on.

        A deployment tried again (the client asked for more retries than there are deployments)
        is tried after a growing pause.
        """
        tried: set[int] = set()
        for attempt, deployment in enumerate(attempts, 1):
            if id(deployment) in tried:
                await asyncio.sleep(min(2.0, self._backoff * 2 ** (attempt - len(tried) - 1)))
            tried.add(id(deployment))
            try:
                return await once(deployment)
            except UpstreamError as exc:
                if not exc.retryable or attempt == len(attempts):
                    raise
                log.info("upstream %s failed, trying again: %s", deployment.upstream.name, exc.message)
        raise AssertionError("no deployments")

    async def _stream_once(self, principal: Principal, request: ChatRequest, deployment: Deployment) -> Stream:
        upstream = deployment.upstream
        dialect, built = _build(request, deployment)
        response = await self._transports[upstream.name].open(built)
        if response.status >= 300:
            raise dialect.decode_error(response.status, await response.read(), response.headers, upstream)
        decoder = dialect.stream_decoder(request)
        chunks = response.iter_chunks()
        first: list[bytes] = []
        try:
            async for data in chunks:
                first = decoder.feed(data)
                if first:
                    break
            else:
                first = decoder.finish()
        except UpstreamError as exc:
            response.close()
            exc.message = redact(exc.message, upstream)
            raise
        except BaseException:
            response.close()
            raise
        if first and first[-1] == DONE_EVENT:
            self._record(principal, request, decoder.usage)
            return Stream(b"".join(first), headers=_reply_headers(built))
        stream = Stream(b"".join(first), headers=_reply_headers(built))
        stream.rest = self._relay_rest(stream, principal, request, response, chunks, decoder, upstream)
        return stream

    async def _relay_rest(
        self,
        stream: Stream,
        principal: Principal,
        request: ChatRequest,
        response: UpstreamResponse,
        chunks: AsyncIterator[bytes],
        decoder: StreamDecoder,
        upstream: UpstreamConfig,
    ) -> AsyncIterator[bytes]:
        try:
            # Everything one upstream read completes goes out at once: no event waits, fewer writes.
            async for data in chunks:
                events = decoder.feed(data)
                if events:
                    yield b"".join(events)
            stream.tail = b"".join(decoder.finish())
        except GatewayError as exc:
            response.close()
            exc.message = redact(exc.message, upstream)
            log.warning("stream from %s failed after the first byte: %s", upstream.name, exc.message)
            stream.tail = b"data: " + exc.to_json() + b"\n\n" + DONE_EVENT
        finally:
            # Also reached when the client went away and the generator was closed.
            response.close()
            self._record(principal, request, decoder.usage)

    def _record(self, principal: Principal, request: ChatRequest, usage: Usage | None) -> None:
        self._ledger.record(UsageRecord(principal.name, request.model, usage or Usage(), sess_id=request.ext.sess_id))


def _reply_headers(built: UpstreamRequest) -> list[tuple[bytes, bytes]]:
    if not built.dropped:
        return []
    return [(b"x-gateway-dropped-params", ",".join(built.dropped).encode())]


def _build(request: ChatRequest, deployment: Deployment) -> tuple[Dialect, UpstreamRequest]:
    """The dialect and the upstream request; applies the upstream's policy on parameters it cannot take."""
    upstream = deployment.upstream
    dialect = dialect_for(upstream)
    built = dialect.build_request(request, Target(upstream, deployment.model_for(request.model), deployment.options))
    if built.dropped and upstream.unsupported_params == "reject":
        param = built.dropped[0]
        raise InvalidRequest(
            f"The parameter `{param}` is not supported by the upstream serving `{request.model}`.",
            param=param,
            code="unsupported_parameter",
        )
    return dialect, built
