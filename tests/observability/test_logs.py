"""Log lines: JSON or text, the request id on every line about a request, content only when asked."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.config import parse_config
from gateway.dialects.base import Usage
from gateway.observability.logs import AccessLog, JsonFormatter, TextFormatter, access_record, text_line
from gateway.relay import Exchange, Exchanges
from gateway.relay.exchange import request_id
from tests.conftest import CLIENT_KEY, checked_http, config_yaml, sdk
from tests.support.spec import Checker


def _record(message: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            exc_info = sys.exc_info()
    return logging.LogRecord("gateway.relay", logging.WARNING, __file__, 1, message, args, exc_info)


def test_json_lines_carry_the_request_id_of_the_running_task() -> None:
    token = request_id.set("req-42")
    try:
        line = json.loads(JsonFormatter().format(_record("upstream %s failed", "a", exc=True)))
    finally:
        request_id.reset(token)
    assert line["request_id"] == "req-42" and line["msg"] == "upstream a failed" and line["level"] == "warning"
    assert line["ts"].endswith("Z") and "ValueError: boom" in line["error"]
    assert "request_id" not in json.loads(JsonFormatter().format(_record("start-up")))


def test_text_lines_quote_what_could_be_misread() -> None:
    exchange = Exchange("req-1", "chat.completions")
    exchange.model = "evil\nmodel name"
    exchange.finish()
    out = access_record(exchange, "t")
    line = text_line(out)
    assert "\n" not in line and 'model="evil\\nmodel name"' in line and "request_id=req-1" in line
    text = TextFormatter().format(_record("plain"))
    assert " WARNING gateway.relay: plain" in text
    token = request_id.set("req-7")
    try:  # uvicorn's "Exception in ASGI application\n": the request id stays on the message's line
        assert TextFormatter().format(_record("ends with a break\n")).endswith("break request_id=req-7")
    finally:
        request_id.reset(token)


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read, write = os.pipe()
    yield read, write
    os.close(read)
    os.close(write)


async def test_access_lines_of_one_loop_turn_are_written_together(pipe: tuple[int, int]) -> None:
    read, write = pipe
    log = AccessLog("json", fd=write)
    exchanges = Exchanges([log])
    for i in range(3):
        exchange = exchanges.open(f"req-{i}", "chat.completions")
        exchange.key_name, exchange.status, exchange.usage = "alice", 200, Usage(1, 2, 3)
        exchange.finish()
    os.set_blocking(read, False)
    with pytest.raises(BlockingIOError):
        os.read(read, 65536)  # nothing yet: written at the start of the loop's next turn
    await asyncio.sleep(0)
    lines = [json.loads(line) for line in os.read(read, 65536).splitlines()]
    assert [line["request_id"] for line in lines] == ["req-0", "req-1", "req-2"]
    assert lines[0]["total_tokens"] == 3 and lines[0]["key"] == "alice" and lines[0]["logger"] == "gateway.access"


def test_a_closed_output_does_not_fail_the_request(pipe: tuple[int, int]) -> None:
    read, write = pipe
    log = AccessLog("text", fd=write)
    os.close(read)
    os.dup2(os.open(os.devnull, os.O_RDONLY), read)  # the fixture closes `read` again
    bad = AccessLog("json", fd=999_999)  # not an open descriptor
    for access_log in (log, bad):
        exchange = Exchanges([access_log]).open("req-x", "chat.completions")
        exchange.finish()  # no loop running: written at once; the error is swallowed


def test_content_is_logged_only_when_turned_on(
    start_gateway: Any, fake_url: str, checker: Checker, capfd: pytest.CaptureFixture[str]
) -> None:
    plain_gateway = start_gateway(parse_config(config_yaml(fake_url)), access_log=True)
    sdk(plain_gateway.url, checker).chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "secret plan"}]
    )
    with_content = start_gateway(parse_config(config_yaml(fake_url)), access_log=True, log_content=True)
    client = sdk(with_content.url, checker)
    client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "plan one"}])
    list(client.chat.completions.create(model="echo", stream=True, messages=[{"role": "user", "content": "plan two"}]))
    with checked_http(checker, base_url=with_content.url) as http:
        http.get("/v1/models", headers={"authorization": f"Bearer {CLIENT_KEY}"})
    time.sleep(0.2)  # access lines go out at the next turn of the gateway's event loop
    lines = [json.loads(line) for line in capfd.readouterr().out.splitlines() if line.startswith("{")]
    access = [line for line in lines if line["logger"] == "gateway.access"]
    plain = [line for line in access if line.get("model") == "echo" and "messages" not in line]
    assert plain and all("secret plan" not in json.dumps(line) for line in access)
    logged = [line for line in access if "messages" in line]
    assert [(line["messages"][0]["content"], line["completion"]) for line in logged] == [
        ("plan one", "plan one"),
        ("plan two", "plan two"),
    ]
    models = [line for line in access if line["endpoint"] == "models"]
    assert models and models[0]["key"] == "tester" and models[0]["status"] == 200


def test_content_that_cannot_be_written_out_still_gives_a_line(pipe: tuple[int, int]) -> None:
    read, write = pipe
    log = AccessLog("json", fd=write)
    exchange = Exchanges([log]).open("req-deep", "chat.completions")
    deep: Any = "x"
    for _ in range(300):
        deep = [deep]
    exchange.content = {"messages": deep, "completion": None}
    exchange.finish()  # no loop running: written at once
    line = json.loads(os.read(read, 65536))
    assert line["request_id"] == "req-deep" and line["messages"] == "(not loggable)"


def test_lines_go_out_in_pieces_no_larger_than_an_atomic_pipe_write(monkeypatch: pytest.MonkeyPatch) -> None:
    import select

    from gateway.observability import logs

    writes: list[bytes] = []
    monkeypatch.setattr(logs.os, "write", lambda fd, data: writes.append(bytes(data)) or len(data))
    log = AccessLog("json", fd=1)
    for i in range(40):
        exchange = Exchange(f"req-{i}", "chat.completions")
        log._pending.append(exchange)  # as finished exchanges of one loop turn
        exchange.finished = True
    log.flush()
    assert len(writes) > 1 and all(len(w) <= select.PIPE_BUF for w in writes)
    assert b"".join(writes).count(b"\n") == 40 and all(w.endswith(b"\n") for w in writes)


def test_the_request_id_is_forgotten_when_the_exchange_finishes() -> None:
    exchange = Exchanges([]).open("req-9", "chat.completions")
    assert request_id.get() == "req-9"
    exchange.finish()
    assert request_id.get() is None
