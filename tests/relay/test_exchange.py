"""The per-request record: finished once, observers isolated, outcomes kept."""

from __future__ import annotations

import logging

import pytest

from gateway.accounting.ledger import MemoryLedger
from gateway.accounting.ledger.recorder import LedgerRecorder
from gateway.dialects.base import Usage
from gateway.errors import ClientDisconnected, InvalidRequest, UpstreamTimeout
from gateway.relay import Exchange, Exchanges, Observer
from gateway.relay.exchange import Hooks, request_id


class Recorder(Observer):
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def started(self, exchange: Exchange) -> None:
        self.calls.append(("started", exchange.request_id))

    def streaming(self, exchange: Exchange) -> None:
        self.calls.append(("streaming", exchange.request_id))

    def finished(self, exchange: Exchange) -> None:
        self.calls.append(("finished", exchange.request_id))


class Broken(Observer):
    def finished(self, exchange: Exchange) -> None:
        raise RuntimeError("observer bug")


def test_finish_reaches_observers_exactly_once_and_a_broken_one_is_contained(
    caplog: pytest.LogCaptureFixture,
) -> None:
    recorder = Recorder()
    exchange = Exchanges([Broken(), recorder]).open("req-1", "chat.completions")
    assert request_id.get() == "req-1"
    exchange.streaming()
    exchange.finish()
    exchange.finish()
    assert recorder.calls == [("started", "req-1"), ("streaming", "req-1"), ("finished", "req-1")]
    assert exchange.finished and exchange.duration is not None
    assert any(r.levelno == logging.ERROR and "observer failed" in r.getMessage() for r in caplog.records)


def test_only_the_hooks_an_observer_defines_are_called() -> None:
    broken, recorder = Broken(), Recorder()
    hooks = Hooks.of([broken, recorder])
    assert hooks.started == (recorder.started,) and hooks.streaming == (recorder.streaming,)
    assert hooks.finished == (broken.finished, recorder.finished)
    assert Hooks.of([Observer()]) == Hooks()


def test_an_attempt_still_open_at_finish_was_cancelled() -> None:
    exchange = Exchange("r", "chat.completions")
    done = exchange.attempt("a", "m")
    done.end("server_error")
    exchange.attempt("b", "m")
    exchange.finish()
    assert [a.outcome for a in exchange.attempts] == ["server_error", "cancelled"]
    assert all(a.duration is not None for a in exchange.attempts)


def test_fail_before_and_after_the_first_byte() -> None:
    before = Exchange("r", "chat.completions")
    before.fail(InvalidRequest("bad", param="model"))
    assert (before.status, before.error_code, before.replied) == (400, "invalid_request_error", False)

    after = Exchange("r", "chat.completions")
    after.attempt("a", "m")
    after.streaming()
    after.status = 200  # the HTTP layer sent the response's start
    after.fail(UpstreamTimeout("stalled"))
    assert (after.status, after.error_code, after.replied) == (200, "upstream_timeout", True)
    assert after.attempts[0].outcome == "timeout"

    gone = Exchange("r", "chat.completions")
    gone.fail(ClientDisconnected("left before the body was complete"))
    assert (gone.status, gone.error_code, gone.client_disconnected) == (499, "client_disconnected", True)


async def test_the_ledger_records_replied_exchanges_only() -> None:
    ledger = MemoryLedger()
    recorder = LedgerRecorder(ledger)
    exchanges = Exchanges([recorder])

    ok = exchanges.open("r1", "chat.completions")
    ok.key_name, ok.model, ok.replied, ok.usage = "alice", "m", True, Usage(3, 4, 7)
    ok.finish()
    cut = exchanges.open("r2", "chat.completions")  # a stream the client left before any usage came
    cut.key_name, cut.model = "alice", "m"
    cut.streaming()
    cut.client_disconnected = True
    cut.finish()
    failed = exchanges.open("r3", "chat.completions")
    failed.key_name, failed.model = "alice", "m"
    failed.fail(UpstreamTimeout("slow"))
    failed.finish()
    anonymous = exchanges.open("r4", "chat.completions")
    anonymous.replied = True
    anonymous.finish()
    assert exchanges.open_count == 0

    [(day, totals)] = [(k[1], v) for k, v in ledger._totals.items()]
    assert totals["requests"] == 2 and totals["prompt_tokens"] == 3 and totals["total_tokens"] == 7
    assert (await ledger.usage("alice", day))["m"]["requests"] == 2
