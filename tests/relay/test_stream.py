from __future__ import annotations

import asyncio

import pytest

from gateway.config import UpstreamConfig
from gateway.errors import UpstreamProtocolError
from gateway.relay.exchange import Exchange
from gateway.relay.stream import Stream, decoding
from gateway.types import JSON
from gateway.upstream.mock import MockResponse

UPSTREAM = UpstreamConfig(name="up", dialect="openai", base_url="http://127.0.0.1:9/v1")


def _raises(exc: BaseException) -> None:
    raise exc


def test_a_reply_too_deep_to_write_is_the_upstreams_and_says_so() -> None:
    with pytest.raises(UpstreamProtocolError, match="nested too deeply"):
        decoding(UPSTREAM, _raises, TypeError("Recursion limit reached"))


def test_any_other_type_error_in_decoding_is_not_called_nesting() -> None:
    with pytest.raises(UpstreamProtocolError, match="could not read"):
        decoding(UPSTREAM, _raises, TypeError("unhashable type: 'list'"))
    assert decoding(UPSTREAM, lambda x: x + 1, 1) == 2


class _TwoRounds:
    """A decoder whose first round asks for a second (as Kimi's `$web_search` does)."""

    usage = None
    text_chars = 0

    def __init__(self) -> None:
        self.round = 1

    def feed(self, data: bytes) -> list[bytes]:
        return [data]

    def finish(self) -> list[bytes]:
        return [] if self.round == 1 else [b"data: [DONE]\n\n"]

    def take_turn(self) -> list[JSON] | None:
        self.round += 1
        return [{"role": "user", "content": "next"}] if self.round == 2 else None

    def end(self) -> None:
        pass


class _Rounds:
    def __init__(self) -> None:
        self.asked = asyncio.Event()
        self.answer = asyncio.Event()

    async def open(self, turn: list[JSON]) -> MockResponse:
        self.asked.set()
        await self.answer.wait()
        return MockResponse(200, {}, [b"data: second\n\n"])


async def test_events_of_a_finished_round_go_out_before_the_next_round_answers() -> None:
    exchange = Exchange("r1", "chat.completions")
    attempt = exchange.attempt("up", "m")
    # The first round's body has all arrived: its events could be held for the end, but the next
    # round's answer can wait.
    first_round = MockResponse(200, {}, [b"data: one\n\n", b"data: two\n\n"])
    stream = Stream(b"data: zero\n\n", [], exchange, attempt, _TwoRounds(), first_round, UPSTREAM)  # type: ignore[arg-type]
    stream.rounds = rounds = _Rounds()
    events = stream.events()
    # Held for the next round's answer, this would wait forever: the answer comes only after.
    first = await asyncio.wait_for(anext(events), 2)
    assert first == (b"data: zero\n\ndata: one\n\ndata: two\n\n", True)
    rest = asyncio.ensure_future(anext(events))
    await asyncio.wait_for(rounds.asked.wait(), 2)
    rounds.answer.set()
    assert await rest == (b"data: second\n\ndata: [DONE]\n\n", False)
    await stream.aclose()
