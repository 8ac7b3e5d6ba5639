"""One request through the gateway: route, build, send, decode; each attempt on the exchange.

The relay knows attempts, not APIs: what a request means for an upstream is its translator's, found
by (client API, upstream kind) in `dialects/registry.py`. A deployment whose upstream has no
translator for the request's API is not tried.

Retries across deployments happen only before the first byte has gone to the client. Once a
stream has started, an error becomes an SSE `error` event followed by `[DONE]`. The relay records
nothing itself: what happened goes on the request's `Exchange`, whose finish feeds the ledger,
metrics and the access log.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol, TypeVar
from urllib.parse import urlsplit

import orjson

from gateway.accounting.keys import Principal
from gateway.config import Timeouts, UpstreamConfig
from gateway.dialects import kimi_search
from gateway.dialects.base import (
    ENDPOINT_NOT_FOUND,
    DecodedReply,
    Target,
    UpstreamRequest,
    added,
    redact,
)
from gateway.dialects.openai import DONE_EVENT
from gateway.dialects.registry import CHAT, RESPONSES, STREAM_ERRORS, Translator, native_responses, translator_for
from gateway.errors import (
    GatewayError,
    InvalidRequest,
    ModelNotFound,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamTimeout,
)
from gateway.relay.attempts import pause
from gateway.relay.exchange import Attempt, Exchange
from gateway.relay.stream import Stream, decoding, estimated_usage, reply_text_length
from gateway.request import MAX_DEPTH, deepest_field
from gateway.routing import Deployment, DeploymentHealth, Route, Router
from gateway.types import JSON, Headers
from gateway.upstream.base import Transport, UpstreamResponse

log = logging.getLogger("gateway.relay")
T = TypeVar("T")


class NoUsableDeployment(GatewayError):
    status = 503
    type = "upstream_error"
    code = "upstream_not_configured"


class _Hints(Protocol):
    @property
    def sess_id(self) -> str | None: ...

    @property
    def retries(self) -> int | None: ...


class RelayedRequest(Protocol):
    """What the relay reads of any client request; the rest is its translator's."""

    @property
    def model(self) -> str: ...

    @property
    def body(self) -> JSON: ...

    @property
    def ext(self) -> _Hints: ...


class StreamedRequest(RelayedRequest, Protocol):
    @property
    def stream(self) -> bool: ...


class Reply:
    __slots__ = ("body", "headers")

    def __init__(self, body: bytes, headers: Headers) -> None:
        self.body = body
        self.headers = headers


class Relay:
    def __init__(
        self,
        router: Router,
        transports: Mapping[str, Transport],
        max_attempts: int,
        max_client_retries: int = 3,
        retry_backoff: float = 0.25,
        retry_after_cap: float = 10.0,
        health: DeploymentHealth | None = None,
        rng: random.Random | None = None,
        timeouts: Timeouts | None = None,
    ) -> None:
        self._router = router
        self._transports = transports
        self._max_attempts = max_attempts
        self._max_client_retries = max_client_retries
        self._backoff = retry_backoff
        self._retry_after_cap = retry_after_cap
        self._health = health or DeploymentHealth()
        self._rng = rng or random.Random()
        self._timeouts = timeouts or Timeouts()  # the defaults under every deployment's own
        self._resolved: dict[int, Timeouts] = {}  # id(deployment) -> its timeouts, resolved once

    async def complete(
        self, exchange: Exchange, principal: Principal, request: RelayedRequest, api: str = CHAT
    ) -> Reply:
        """A buffered reply: the client API's reply body (for chat, the OpenAI chat.completion)."""
        return await self._run(
            exchange, principal, request, api, lambda d, m: self._complete_once(exchange, request, api, d, m)
        )

    async def stream(
        self, exchange: Exchange, principal: Principal, request: StreamedRequest, api: str = CHAT
    ) -> Stream:
        """Open a stream on the first deployment that produces output; raises `GatewayError` before that."""
        return await self._run(
            exchange, principal, request, api, lambda d, m: self._stream_once(exchange, request, api, d, m)
        )

    async def _run(
        self,
        exchange: Exchange,
        principal: Principal,
        request: RelayedRequest,
        api: str,
        once: Callable[[Deployment, str], Awaitable[T]],
    ) -> T:
        """The model's deployments; when they all fail, its fallback models' (a context-length error
        goes to its context fallbacks), each in turn. The first success is the reply."""
        route = self._router.match(request.model)
        if route is None or not principal.may_use(request.model):
            raise ModelNotFound(request.model)
        exchange.route = route.name
        if api != CHAT and not any(translator_for(api, d.upstream) for d in route.deployments):
            raise InvalidRequest(
                f"The model `{request.model}` does not serve {api}: its upstreams do not have that API.",
                param="model",
                code="unsupported_endpoint",
            )
        attempts = self._attempts(route, request, api)
        error: UpstreamError | None = None
        if attempts:
            try:
                return await self._in_order(exchange, request.model, attempts, once)
            except UpstreamError as exc:
                error = exc
        fallbacks = route.fallbacks
        if error is not None:
            fallbacks = route.context_fallbacks if error.context_too_long else route.fallbacks
            if not error.retryable and not (error.context_too_long and fallbacks):
                raise error
        for name in fallbacks:
            fallback = self._router.match(name)
            if fallback is None or not principal.may_use(name):
                continue
            deployments = self._serving(
                api, self._health.order(self._router.order(fallback), name, time.monotonic()), request
            )
            if not deployments:
                continue
            log.warning("model %s failed, falling back to %s", request.model, name)
            try:
                return await self._in_order(exchange, name, deployments[: self._max_attempts], once)
            except UpstreamError as exc:
                if not (exc.retryable or exc.context_too_long):
                    raise
                error = exc
        if error is None:
            raise NoUsableDeployment(
                f"The model `{request.model}` is served only by upstreams without credentials configured.",
                headers=[(b"x-should-retry", b"false")],
            )
        raise error

    @staticmethod
    def _serving(api: str, deployments: list[Deployment], request: RelayedRequest) -> list[Deployment]:
        if api == CHAT:  # every upstream serves chat
            return deployments
        serving = [d for d in deployments if translator_for(api, d.upstream) is not None]
        if api == RESPONSES and (request.body.get("store") is True or request.body.get("previous_response_id")):
            # State lives only with an upstream that has the API itself; without one, the translation
            # refuses it with a 400 naming the field.
            return [d for d in serving if native_responses(d.upstream)] or serving
        return serving

    def _attempts(self, route: Route, request: RelayedRequest, api: str) -> list[Deployment]:
        """The deployments to try, in order: healthy first; as many as allowed, or as the client asked."""
        ordered = self._router.order(route, sticky=request.ext.sess_id)
        deployments = self._serving(api, self._health.order(ordered, request.model, time.monotonic()), request)
        if not deployments:
            return []
        retries = request.ext.retries
        if retries is None:
            return deployments[: self._max_attempts]
        # The client's `retries`, capped: attempts cycle through the deployments in order.
        attempts = 1 + min(retries, self._max_client_retries)
        return [deployments[i % len(deployments)] for i in range(attempts)]

    async def _in_order(
        self,
        exchange: Exchange,
        model: str,
        attempts: list[Deployment],
        once: Callable[[Deployment, str], Awaitable[T]],
    ) -> T:
        """Try each attempt until one succeeds; only retryable upstream errors move on.

        A deployment tried again (the client asked for more retries than there are deployments)
        is tried after the pause the upstream asked for, or a growing one (`attempts.pause`).
        """
        tries: dict[int, int] = {}
        error: UpstreamError | None = None
        for attempt, deployment in enumerate(attempts, 1):
            tried = tries.get(id(deployment), 0)
            if tried and error is not None:
                await asyncio.sleep(pause(error, tried, self._backoff, self._retry_after_cap, self._rng))
            tries[id(deployment)] = tried + 1
            try:
                result = await once(deployment, model)
            except UpstreamError as exc:
                error = exc
                self._failed(exchange, deployment, model, exc)
                if not exc.retryable or attempt == len(attempts):
                    raise
                log.info("upstream %s failed, trying again: %s", deployment.upstream.name, exc.message)
                continue
            self._health.succeeded(deployment, model)
            exchange.served_model = model
            return result
        raise AssertionError("no deployments")

    def _failed(self, exchange: Exchange, deployment: Deployment, model: str, error: UpstreamError) -> None:
        if exchange.attempts:
            exchange.attempts[-1].end(error.outcome)
        if not (error.retryable or error.outcome == "server_error"):
            return  # the client's mistake, not the deployment's
        cooldown = self._health.failed(deployment, model, time.monotonic())
        if cooldown:
            if exchange.attempts:
                exchange.attempts[-1].cooldown = cooldown
            log.warning(
                "deployment %s/%s cools down for %.0f s after failing (%s)",
                deployment.upstream.name,
                deployment.model_for(model),
                cooldown,
                error.outcome,
            )

    def _timeouts_of(self, deployment: Deployment) -> Timeouts:
        timeouts = self._resolved.get(id(deployment))
        if timeouts is None:
            timeouts = self._resolved[id(deployment)] = deployment.timeouts.over(self._timeouts)
        return timeouts

    async def _open(
        self, exchange: Exchange, request: RelayedRequest, api: str, deployment: Deployment, model: str
    ) -> tuple[Translator, UpstreamRequest, Attempt, UpstreamResponse]:
        upstream = deployment.upstream
        dialect, built = _build(request, api, deployment, model)
        timeouts = self._timeouts_of(deployment)
        built.connect_timeout, built.read_timeout = timeouts.connect, timeouts.idle
        attempt = exchange.attempt(upstream.name, deployment.model_for(model))
        # The idle timeout bounds the wait for the headers too (their read is a read): a timer of
        # our own is needed only for a shorter limit.
        opening = self._transports[upstream.name].open(built)
        if not _shorter(timeouts.headers, timeouts.idle):
            response = await opening  # no timer at all: even an unarmed one costs per request
        else:
            try:
                async with asyncio.timeout(timeouts.headers):
                    response = await opening
            except TimeoutError:
                raise UpstreamTimeout(
                    f"The upstream `{upstream.name}` sent no response headers within {timeouts.headers:g} s."
                ) from None
        attempt.answered(response.status)
        return dialect, built, attempt, response

    async def _complete_once(
        self, exchange: Exchange, request: RelayedRequest, api: str, deployment: Deployment, model: str
    ) -> Reply:
        upstream = deployment.upstream
        dialect, built, attempt, response = await self._open(exchange, request, api, deployment, model)
        total = self._timeouts_of(deployment).total
        try:
            body = await _read_or_close(response, None if total is None else attempt.started + total, upstream.name)
            if response.status >= 300:
                raise _status_error(dialect, response, body, built, upstream)
            reply = decoding(upstream, dialect.decode_reply, body, request)
            if reply.turn is not None:
                reply = await self._more_rounds(exchange, request, dialect, built, upstream, reply, attempt, total)
        except UpstreamError as exc:
            exc.message = redact(exc.message, upstream)
            raise
        attempt.end("ok")
        exchange.replied = True
        # Added to what failed attempts' finished rounds already used (usually nothing).
        exchange.usage = added(exchange.usage, reply.usage or estimated_usage(exchange, reply_text_length(reply.body)))
        return Reply(reply.body, _reply_headers(built, request, model))

    async def _more_rounds(
        self,
        exchange: Exchange,
        request: RelayedRequest,
        dialect: Translator,
        built: UpstreamRequest,
        upstream: UpstreamConfig,
        reply: DecodedReply,
        attempt: Attempt,
        total: float | None,
    ) -> DecodedReply:
        """Further rounds with the upstream while its reply asks for one (`DecodedReply.turn`); the reply
        is the last round's, its usage every round's. When a later round fails, the rounds before it
        were served: their usage stays on the exchange."""
        rounds = _Rounds(self._transports[upstream.name], dialect, built, upstream)
        deadline = None if total is None else attempt.started + total
        while reply.turn is not None:
            try:
                response = await rounds.open(reply.turn)
                body = await _read_or_close(response, deadline, upstream.name)
                spent = reply.usage
                reply = decoding(upstream, dialect.decode_reply, body, request)
            except UpstreamError:
                exchange.usage = added(exchange.usage, reply.usage)
                raise
            reply.usage = added(spent, reply.usage)
            reply.body = kimi_search.with_usage(reply.body, reply.usage)
        return reply

    async def _stream_once(
        self, exchange: Exchange, request: StreamedRequest, api: str, deployment: Deployment, model: str
    ) -> Stream:
        upstream = deployment.upstream
        dialect, built, attempt, response = await self._open(exchange, request, api, deployment, model)
        if response.status >= 300:
            raise _status_error(dialect, response, await response.read(), built, upstream)
        decoder = dialect.stream_decoder(request)
        timeouts = self._timeouts_of(deployment)
        first: list[bytes] = []

        async def first_events() -> list[bytes]:
            while data := await response.read_chunk():
                events: list[bytes] = decoding(upstream, decoder.feed, data)
                if events:
                    return events
            ended: list[bytes] = decoding(upstream, decoder.finish)
            return ended

        try:
            if not _shorter(timeouts.first_token, timeouts.idle):
                first = await first_events()
            else:
                async with asyncio.timeout(timeouts.first_token):
                    first = await first_events()
        except TimeoutError:
            response.close()
            raise UpstreamTimeout(
                f"The upstream `{upstream.name}` sent no first event within {timeouts.first_token:g} s."
            ) from None
        except UpstreamError as exc:
            response.close()
            exc.message = redact(exc.message, upstream)
            raise
        except BaseException:
            response.close()
            raise
        attempt.first_token()
        exchange.streaming()
        headers = _reply_headers(built, request, model)
        if first and first[-1] == DONE_EVENT:
            attempt.end("ok")
            exchange.usage = decoder.usage
            return Stream(b"".join(first), headers, exchange, attempt, decoder, error_tail=STREAM_ERRORS[api])
        deadline = None if timeouts.total is None else attempt.started + timeouts.total
        stream = Stream(
            b"".join(first),
            headers,
            exchange,
            attempt,
            decoder,
            response,
            upstream,
            deadline,
            error_tail=STREAM_ERRORS[api],
        )
        if getattr(decoder, "search_rounds", False):
            stream.rounds = _Rounds(self._transports[upstream.name], dialect, built, upstream)
        return stream


class _Rounds:
    """The further rounds of one request with its upstream (see `DecodedReply.turn`), buffered or
    streamed: each is the last request with the turn's messages added, on the same upstream, at most
    `kimi_search.MAX_ROUNDS` of them."""

    def __init__(
        self, transport: Transport, dialect: Translator, built: UpstreamRequest, upstream: UpstreamConfig
    ) -> None:
        self._transport = transport
        self._dialect = dialect
        self._built = built
        self._upstream = upstream
        self.left = kimi_search.MAX_ROUNDS

    async def open(self, turn: list[JSON]) -> UpstreamResponse:
        """The next round's response, its status a success (an error status raises)."""
        if not self.left:
            raise UpstreamProtocolError(
                f"The upstream `{self._upstream.name}` still called its search tool "
                f"after {kimi_search.MAX_ROUNDS} rounds."
            )
        self.left -= 1
        self._built = kimi_search.next_round(self._built, turn)
        response = await self._transport.open(self._built)
        if response.status >= 300:
            try:
                body = await response.read()
            except BaseException:
                response.close()
                raise
            raise _status_error(self._dialect, response, body, self._built, self._upstream)
        return response


def _shorter(limit: float | None, idle: float | None) -> bool:
    return limit is not None and (idle is None or limit < idle)


async def _read_or_close(response: UpstreamResponse, deadline: float | None, upstream: str) -> bytes:
    """The whole body, by the deadline (`time.perf_counter`); when the wait is cancelled (the client
    left) or too long, the upstream connection is closed."""
    try:
        if deadline is None or response.complete:
            # Nothing to wait for, so no timer: entering `asyncio.timeout` costs about 10 us a request.
            return await response.read()
        async with asyncio.timeout(max(0.0, deadline - time.perf_counter())):
            return await response.read()
    except TimeoutError:
        response.close()
        raise UpstreamTimeout(
            f"The upstream `{upstream}` did not finish its reply in the total time allowed."
        ) from None
    except asyncio.CancelledError:
        response.close()
        raise


def _status_error(
    dialect: Translator, response: UpstreamResponse, body: bytes, built: UpstreamRequest, upstream: UpstreamConfig
) -> UpstreamStatusError:
    error = dialect.decode_error(response.status, body, response.headers, upstream)
    if error.code == ENDPOINT_NOT_FOUND:
        # The operator's mistake: say where, in the log (the client is told only that it is not theirs).
        log.warning("upstream %s answered 404 for %s: check its base_url", built.upstream, urlsplit(built.url).path)
    return error


def _reply_headers(built: UpstreamRequest, request: RelayedRequest, model: str) -> Headers:
    headers: Headers = []
    if built.dropped:
        headers.append((b"x-gateway-dropped-params", ",".join(built.dropped).encode()))
    if model != request.model:  # a fallback answered: a model of the config, so a plain header value
        headers.append((b"x-gateway-model", model.encode()))
    return headers


def _build(request: RelayedRequest, api: str, deployment: Deployment, model: str) -> tuple[Translator, UpstreamRequest]:
    """The translator and the upstream request for `model` (the client's, or a fallback); applies the
    upstream's policy on parameters it cannot take."""
    upstream = deployment.upstream
    dialect = translator_for(api, upstream)
    assert dialect is not None  # deployments without one are not tried
    target = Target(upstream, deployment.model_for(model), deployment.options)
    try:
        built = dialect.build_request(request, target)
    except orjson.JSONEncodeError:  # parsing takes 1,024 levels of nesting, writing JSON only 254
        field = deepest_field(request.body)
        raise InvalidRequest(
            f"The request is nested too deeply to send on (at most {MAX_DEPTH} levels): see `{field}`.",
            param=field,
            code="nested_too_deeply",
        ) from None
    if built.dropped and upstream.unsupported_params == "reject":
        param = built.dropped[0]
        raise InvalidRequest(
            f"The parameter `{param}` is not supported by the upstream serving `{model}`.",
            param=param,
            code="unsupported_parameter",
        )
    return dialect, built
