"""The record of one request through the gateway, from its arrival to its one finish.

An endpoint opens an `Exchange` when a request arrives and fills in who asked for what; the relay
appends an `Attempt` per upstream try and sets the outcome; the endpoint finishes it exactly once,
in a `finally`, however the request ends. Observers (the ledger, metrics, the access log, later
limits and budgets) read the finished record: nothing else records usage or counts requests.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.dialects.base import Usage
from gateway.errors import ClientDisconnected, GatewayError, UpstreamError

if TYPE_CHECKING:
    from gateway.accounting.limits_script import Admission
    from gateway.accounting.prices import PriceTable

log = logging.getLogger("gateway.exchange")

# The id of the request the running task serves: every log line about a request carries it.
request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


@dataclass(slots=True)
class Attempt:
    """One try of one deployment. Times are seconds since the attempt started."""

    upstream: str  # the upstream's config name
    model: str  # the model name sent upstream
    started: float  # perf_counter
    status: int | None = None  # the upstream's HTTP status, once its headers came
    outcome: str = "pending"  # ok, or how it failed: see `UpstreamError.outcome`; `cancelled`
    headers_after: float | None = None
    first_token_after: float | None = None
    duration: float | None = None
    cooldown: float = 0.0  # seconds of the cooldown this attempt's failure started on its deployment

    def answered(self, status: int) -> None:
        self.status = status
        self.headers_after = time.perf_counter() - self.started

    def first_token(self) -> None:
        self.first_token_after = time.perf_counter() - self.started

    def end(self, outcome: str) -> None:
        """Set the outcome and the duration, once; later calls change nothing."""
        if self.duration is None:
            self.outcome = outcome
            self.duration = time.perf_counter() - self.started


class Observer:
    """Reads exchanges as they start, start streaming and finish. Must not raise."""

    def started(self, exchange: Exchange) -> None:
        return None

    def streaming(self, exchange: Exchange) -> None:
        return None

    def finished(self, exchange: Exchange) -> None:
        return None

    def flush(self) -> None:
        """Write out what is held back; called every second and when the process stops."""
        return None

    def close(self) -> None:
        """The process is stopping."""
        self.flush()


Hook = Callable[["Exchange"], None]


@dataclass(frozen=True, slots=True)
class Hooks:
    """The observers' hooks an exchange calls, only those that do something: found once, not per request."""

    started: tuple[Hook, ...] = ()
    streaming: tuple[Hook, ...] = ()
    finished: tuple[Hook, ...] = ()

    @classmethod
    def of(cls, observers: Sequence[Observer]) -> Hooks:
        def overriding(name: str) -> tuple[Hook, ...]:
            base = getattr(Observer, name)
            return tuple(getattr(o, name) for o in observers if getattr(type(o), name) is not base)

        return cls(overriding("started"), overriding("streaming"), overriding("finished"))


NO_HOOKS = Hooks()


class Exchange:
    """One request: who asked for what, each attempt, and how it ended."""

    __slots__ = (
        "_hooks",
        "_prices",
        "_token",
        "admission",
        "at",
        "attempts",
        "client_disconnected",
        "content",
        "cost",
        "duration",
        "endpoint",
        "error_code",
        "error_type",
        "finished",
        "first_byte_after",
        "key_name",
        "metadata",
        "model",
        "prompt_estimate",
        "replied",
        "request_id",
        "route",
        "served_model",
        "sess_id",
        "started",
        "status",
        "stream",
        "team",
        "usage",
    )

    def __init__(
        self,
        request_id: str,
        endpoint: str,
        hooks: Hooks = NO_HOOKS,
        prices: PriceTable | None = None,
    ) -> None:
        self.request_id = request_id
        self.endpoint = endpoint  # a fixed name such as `chat.completions`, never a raw path
        self.started = time.perf_counter()
        self.at = time.time()
        self.key_name: str | None = None  # the caller's key name, once authenticated
        self.team: str | None = None  # the caller key's team
        self.metadata: dict[str, object] | None = None  # the client's `metadata` field, as sent
        self.model: str | None = None  # the model the client asked for
        self.route: str | None = None  # the config entry that matched it (a name or a glob)
        self.served_model: str | None = None  # the model that answered: `model`, or a fallback
        self.stream = False
        self.sess_id: str | None = None
        self.attempts: list[Attempt] = []
        self.status = 0  # the HTTP status sent to the client (0: none was sent)
        self.replied = False  # an upstream's reply (or the start of its stream) is going to the client
        self.error_code: str | None = None  # set when the request ended in an error, even mid-stream
        self.error_type: str | None = None
        self.usage: Usage | None = None
        self.prompt_estimate = 0  # the prompt's tokens as estimated from the body, before any upstream counted
        self.cost = 0.0  # set at finish from the price table: what the reply cost
        self.client_disconnected = False
        self.first_byte_after: float | None = None  # streams: seconds until the first events went out
        self.duration: float | None = None
        self.content: dict[str, object] | None = None  # prompt and completion, only when logging them is on
        self.admission: Admission | None = None  # what the key's rate limits counted for it
        self.finished = False
        self._token: contextvars.Token[str | None] | None = None
        self._hooks = hooks
        self._prices = prices
        for hook in hooks.started:
            _notify(hook, self)

    def attempt(self, upstream: str, model: str) -> Attempt:
        attempt = Attempt(upstream, model, time.perf_counter())
        self.attempts.append(attempt)
        return attempt

    @property
    def upstream(self) -> str | None:
        """The upstream of the last attempt."""
        return self.attempts[-1].upstream if self.attempts else None

    def streaming(self) -> None:
        """The first events of a stream are ready to go out."""
        self.replied = True
        self.first_byte_after = time.perf_counter() - self.started
        for hook in self._hooks.streaming:
            _notify(hook, self)

    def fail(self, error: GatewayError) -> None:
        """The request ended in `error`: its status is the client's, unless a response had started."""
        if not self.status:
            self.status = error.status
        if isinstance(error, ClientDisconnected):
            self.client_disconnected = True
        self.error_code = error.code or error.type
        self.error_type = error.type
        if self.attempts and isinstance(error, UpstreamError):
            self.attempts[-1].end(error.outcome)

    def finish(self) -> None:
        """Close the record and hand it to the observers; only the first call does anything."""
        if self.finished:
            return
        self.finished = True
        self.duration = time.perf_counter() - self.started
        if self._token is not None:
            try:  # noqa: SIM105 - contextlib.suppress costs a context manager per request
                request_id.reset(self._token)
            except ValueError:  # finished in another context than it was opened in
                pass
        for attempt in self.attempts:
            attempt.end("cancelled")  # an attempt still open now was cut off (client gone, shutdown)
        model = self.served_model or self.model
        if self.replied and self._prices is not None and model is not None:
            self.cost = self._prices.cost(model, self.usage)
        for hook in self._hooks.finished:
            _notify(hook, self)


def _notify(hook: Callable[[Exchange], None], exchange: Exchange) -> None:
    try:
        hook(exchange)
    except Exception:
        # An observer's bug must never fail or hang a request that is otherwise fine.
        log.exception("exchange observer failed")


class Exchanges:
    """Opens exchanges, each with the observers every request has, and knows how many are open."""

    def __init__(self, observers: Sequence[Observer], prices: PriceTable | None = None) -> None:
        self.observers = tuple(observers)
        self.prices = prices
        self._open = _OpenCount()
        self._hooks = Hooks.of((self._open, *self.observers))

    def open(self, request_id_: str, endpoint: str) -> Exchange:
        """A new exchange; the running task's log lines carry its request id until it is finished."""
        token = request_id.set(request_id_)
        exchange = Exchange(request_id_, endpoint, self._hooks, self.prices)
        exchange._token = token
        return exchange

    @property
    def open_count(self) -> int:
        return self._open.count

    async def wait_finished(self, seconds: float) -> bool:
        """Wait until every open exchange is finished, at most `seconds`; True if they all are."""
        try:
            await asyncio.wait_for(self._open.idle.wait(), seconds)
        except TimeoutError:
            return False
        return True


class _OpenCount(Observer):
    def __init__(self) -> None:
        self.count = 0
        self.idle = asyncio.Event()
        self.idle.set()

    def started(self, exchange: Exchange) -> None:
        self.count += 1
        if self.count == 1:
            self.idle.clear()

    def finished(self, exchange: Exchange) -> None:
        self.count -= 1
        if not self.count:
            self.idle.set()
