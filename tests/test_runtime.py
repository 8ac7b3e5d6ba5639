"""Start-up and shutdown: shutdown waits for requests still finishing, and a broken part stops nothing else."""

from __future__ import annotations

import asyncio

import pytest

from gateway.config import parse_config
from gateway.dialects.base import Usage
from gateway.relay import Observer
from gateway.runtime import Runtime
from tests.conftest import test_settings as settings

CONFIG = """
keys: [{name: tester, key: sk-test}]
upstreams: [{name: local, dialect: echo}]
models: [{name: echo, upstream: local}]
"""


async def test_stop_waits_for_an_exchange_still_finishing_before_closing_the_ledger() -> None:
    runtime = Runtime.build(settings(), parse_config(CONFIG))
    await runtime.start()
    exchange = runtime.exchanges.open("req-late", "chat.completions")
    exchange.key_name, exchange.model, exchange.replied, exchange.usage = "tester", "echo", True, Usage(1, 2, 3)
    stopping = asyncio.create_task(runtime.stop())
    await asyncio.sleep(0.1)
    assert not stopping.done()  # a stream cut off at the shutdown timeout is still sending its last events
    exchange.finish()
    await asyncio.wait_for(stopping, 2)
    day = next(iter(runtime.ledger._totals))[1]  # type: ignore[attr-defined]
    assert (await runtime.ledger.usage("tester", day))["echo"]["requests"] == 1


class Broken(Observer):
    def flush(self) -> None:
        raise RuntimeError("flush bug")


class Counting(Observer):
    def __init__(self) -> None:
        self.flushes = 0
        self.closed = False

    def flush(self) -> None:
        self.flushes += 1

    def close(self) -> None:
        self.closed = True


async def test_a_failing_observer_does_not_stop_flushing_or_shutdown(caplog: pytest.LogCaptureFixture) -> None:
    runtime = Runtime.build(settings(), parse_config(CONFIG))
    counting = Counting()
    runtime.exchanges.observers = (Broken(), counting)
    await runtime.start()
    runtime.flush_observers()
    runtime.flush_observers()
    assert counting.flushes == 2
    await runtime.stop()
    assert counting.closed
    assert "flushing Broken failed" in caplog.text
