"""A stream that has started: its events, its end, its error after the first byte, its cleanup."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Protocol, TypeVar, cast

import orjson

from gateway.config import UpstreamConfig
from gateway.dialects.base import RoundTrip, StreamDecoder, Usage, redact
from gateway.dialects.normalize import text_length
from gateway.dialects.openai import error_events
from gateway.errors import GatewayError, UpstreamProtocolError, UpstreamTimeout
from gateway.relay.exchange import Attempt, Exchange
from gateway.types import JSON, Headers
from gateway.upstream.base import UpstreamResponse

log = logging.getLogger("gateway.relay")


class Rounds(Protocol):
    """Opens the further rounds of a stream whose decoder asks for them (a `RoundTrip`); raises an
    `UpstreamError` when no more are allowed or the round failed."""

    async def open(self, turn: list[JSON]) -> UpstreamResponse: ...


class Stream:
    """A stream that has produced its first events.

    `events()` yields `(bytes, more)`: one or more whole SSE events, and whether more follow; the
    last pair has `more` False and carries the final events (`[DONE]`, or an error event and
    `[DONE]` when the upstream failed after the first byte). It never raises a `GatewayError`.
    `aclose()` must be called however the stream ends: it closes the upstream and puts the usage
    seen so far on the exchange.
    """

    def __init__(
        self,
        first: bytes,
        headers: Headers,
        exchange: Exchange,
        attempt: Attempt,
        decoder: StreamDecoder,
        response: UpstreamResponse | None = None,
        upstream: UpstreamConfig | None = None,
        deadline: float | None = None,
        error_tail: Callable[[GatewayError], bytes] = error_events,
    ) -> None:
        self.first = first
        self.headers = headers
        self._exchange = exchange
        self._attempt = attempt
        self._decoder = decoder
        self._response = response  # None: the upstream had already finished and `first` is all of it
        self._upstream = upstream
        self._deadline = deadline  # time.perf_counter() by which the attempt must be over
        self._error_tail = error_tail  # the client API's end of a stream that failed
        self._events: AsyncIterator[tuple[bytes, bool]] | None = None
        self._closed = False
        # Further rounds with the upstream, set only when the decoder is a `RoundTrip` that may ask for them.
        self.rounds: Rounds | None = None

    def events(self) -> AsyncIterator[tuple[bytes, bool]]:
        if self._events is None:
            self._events = self._generate()
        return self._events

    async def _generate(self) -> AsyncIterator[tuple[bytes, bool]]:
        response, upstream = self._response, self._upstream
        if response is None or upstream is None:
            yield self.first, False
            return
        # Events wait to go out only while the upstream has finished sending: reading the rest of
        # its body cannot wait then, and its last events go out with the end, in one write.
        pending = self.first
        # One loop, no iterator beneath it: every layer between this and the socket is resumed for
        # every event of every stream.
        feed, deadline = self._decoder.feed, self._deadline
        try:
            while True:
                if pending and not response.complete:
                    yield pending, True
                    pending = b""
                data = await response.read_chunk()
                if data:
                    # Everything one upstream read completes goes out at once: no event waits, fewer writes.
                    events = decoding(upstream, feed, data)
                    if events:
                        pending += b"".join(events)
                    if deadline is not None and time.perf_counter() > deadline:
                        raise UpstreamTimeout(
                            f"The upstream `{upstream.name}` did not finish its stream in the total time allowed."
                        )
                    continue
                tail = b"".join(decoding(upstream, self._decoder.finish))
                # A round-tripping decoder's `finish` gives nothing when it asks for another round.
                rounds = self.rounds
                turn = None if tail or rounds is None else cast(RoundTrip, self._decoder).take_turn()
                if rounds is None or turn is None:
                    break
                response.close()
                if pending:  # the next round's answer can wait
                    yield pending, True
                    pending = b""
                response = self._response = await rounds.open(turn)
            self._attempt.end("ok")
        except GatewayError as exc:
            response.close()
            exc.message = redact(exc.message, upstream)
            log.warning("stream from %s failed after the first byte: %s", upstream.name, exc.message)
            self._exchange.fail(exc)
            tail = self._error_tail(exc)
        yield pending + tail, False

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        # First: nothing below feeds the decoder, and it may raise.
        if self.rounds is not None:
            cast(RoundTrip, self._decoder).end()
        self._exchange.usage = self._decoder.usage or estimated_usage(self._exchange, self._decoder.text_chars)
        if self._events is not None:
            await self._events.aclose()  # type: ignore[attr-defined]
        if self._response is not None:
            self._response.close()


def estimated_usage(exchange: Exchange, text_chars: int) -> Usage:
    """What a stream used when the upstream never said (the client left before the usage chunk, or
    the upstream sends none): the prompt estimated from the request body, the completion from the
    text relayed, about four characters a token. Marked as estimated."""
    completion = -(-text_chars // 4)
    prompt = exchange.prompt_estimate
    return Usage(prompt, completion, prompt + completion, estimated=True)


def reply_text_length(body: bytes) -> int:
    """Characters of generated text in a chat.completion the gateway is about to send (valid JSON)."""
    try:
        choices = orjson.loads(body).get("choices") or []
    except (orjson.JSONDecodeError, AttributeError):
        return 0
    return sum(text_length(c["message"]) for c in choices if type(c) is dict and type(c.get("message")) is dict)


D = TypeVar("D")


def decoding(upstream: UpstreamConfig, decode: Callable[..., D], *args: object) -> D:
    """Run a dialect's decoding step; a reply too deeply nested to write out again is the upstream's fault."""
    try:
        return decode(*args)
    except TypeError as exc:  # what orjson raises when it cannot write (`orjson.JSONEncodeError` is TypeError)
        if "Recursion limit" in str(exc):
            raise UpstreamProtocolError(f"The upstream `{upstream.name}` sent a reply nested too deeply.") from None
        # A shape of reply the decoder did not expect: the upstream's, but worth a look at the decoder.
        log.warning("could not decode a reply of upstream %s", upstream.name, exc_info=True)
        raise UpstreamProtocolError(
            f"The upstream `{upstream.name}` sent a reply the gateway could not read."
        ) from None
