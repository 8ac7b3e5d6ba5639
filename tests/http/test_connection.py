"""The connection's own answers (http/protocol.py), sent as raw bytes over real sockets: malformed
HTTP, oversized and slow heads, and bodies that stop arriving; and how a response's head is written."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable, Iterator

import pytest
from prometheus_client import REGISTRY

from gateway.config import parse_config
from gateway.http.app import create_app
from gateway.http.protocol import _HeadHeld
from tests.conftest import CLIENT_KEY, RunningGateway, config_yaml
from tests.conftest import test_settings as settings_for_tests
from tests.support.threads import UvicornServer

HEAD_TIMEOUT = 0.5
BODY_TIMEOUT = 0.5
MAX_HEAD = 8192
CHAT = b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer " + CLIENT_KEY.encode() + b"\r\n"
BODY = json.dumps({"model": "echo", "messages": [{"role": "user", "content": "hi"}]}).encode()


@pytest.fixture
def limited(start_gateway: Callable[..., RunningGateway], fake_url: str) -> RunningGateway:
    return start_gateway(
        parse_config(config_yaml(fake_url)),
        header_timeout=HEAD_TIMEOUT,
        body_timeout=BODY_TIMEOUT,
        max_header_bytes=MAX_HEAD,
    )


@pytest.fixture
def connect(limited: RunningGateway) -> Iterator[Callable[[], socket.socket]]:
    opened: list[socket.socket] = []

    def open_one() -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", limited.server.port), timeout=5)
        opened.append(sock)
        return sock

    yield open_one
    for sock in opened:
        sock.close()


def _read_all(sock: socket.socket) -> bytes:
    """Everything until the gateway closes the connection (which every answer here does)."""
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except ConnectionResetError:
        pass
    return out


def _response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def _openai_error(raw: bytes, status: int, code: str) -> dict[str, object]:
    got, headers, body = _response(raw)
    assert got == status, raw[:300]
    assert headers["content-type"] == "application/json"
    assert headers["x-request-id"].startswith("req_")
    assert headers["connection"] == "close"
    error = json.loads(body)["error"]
    assert error["code"] == code and error["type"] == "invalid_request_error" and error["message"]
    return dict(error)


def _refused(reason: str) -> float:
    return REGISTRY.get_sample_value("gateway_http_refused_total", {"reason": reason}) or 0.0


MALFORMED = [
    (b"GET /healthz HTTP/1.1\r\nhost: gw\r\nx-bad: a\x01b\r\n\r\n", "Invalid header value char"),
    (CHAT + b"transfer-encoding: chunked\r\n\r\nzz\r\n", "Invalid character in chunk size"),
    (CHAT + b"content-length: 5\r\ntransfer-encoding: chunked\r\n\r\n", "Content-Length"),
    (CHAT + b"content-length: x\r\n\r\n", "Invalid character in Content-Length"),
    (CHAT + b"content-length: 5\r\ncontent-length: 6\r\n\r\nhello", "Duplicate Content-Length"),
    (b"GET /healthz HTTP/9.9\r\n\r\n", "HTTP"),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "HTTP"),  # a TLS hello sent to plain HTTP
]


@pytest.mark.parametrize(("raw", "reason"), MALFORMED, ids=[r[1] for r in MALFORMED])
def test_malformed_http_gets_an_openai_error(connect: Callable[[], socket.socket], raw: bytes, reason: str) -> None:
    before = _refused("invalid_http_request")
    sock = connect()
    sock.sendall(raw)
    error = _openai_error(_read_all(sock), 400, "invalid_http_request")
    assert reason in str(error["message"])
    assert _refused("invalid_http_request") == before + 1


def test_a_long_request_line_gets_414(connect: Callable[[], socket.socket]) -> None:
    sock = connect()
    sock.sendall(b"GET /v1/models?" + b"a" * 100_000 + b" HTTP/1.1\r\nhost: gw\r\n\r\n")
    _openai_error(_read_all(sock), 414, "request_line_too_long")


def test_large_headers_get_431_before_they_are_buffered(connect: Callable[[], socket.socket]) -> None:
    sock = connect()
    sock.sendall(CHAT + b"x-big: " + b"a" * (MAX_HEAD + 10) + b"\r\n\r\n")
    _openai_error(_read_all(sock), 431, "request_headers_too_large")

    # An unfinished header of many megabytes: the connection is answered and closed at the limit,
    # while the client is still sending.
    sock = connect()
    sent = 0
    sock.sendall(CHAT + b"x-big: ")
    try:
        while sent < 64 * 1024 * 1024:
            sock.sendall(b"a" * 65536)
            sent += 65536
    except (BrokenPipeError, ConnectionResetError):
        pass
    assert sent < 16 * 1024 * 1024, "the gateway kept reading an endless header"


def test_a_head_of_exactly_the_limit_is_served(connect: Callable[[], socket.socket]) -> None:
    head = CHAT + b"content-length: %d\r\nconnection: close\r\nx-pad: " % len(BODY)
    pad = MAX_HEAD - len(head) - len(b"\r\n\r\n")
    sock = connect()
    sock.sendall(head + b"a" * pad + b"\r\n\r\n" + BODY)
    status, _, body = _response(_read_all(sock))
    assert status == 200 and json.loads(body)["object"] == "chat.completion"


def test_a_slow_head_gets_408(connect: Callable[[], socket.socket]) -> None:
    sock = connect()
    started = time.monotonic()
    sock.sendall(CHAT)  # the headers never end
    _openai_error(_read_all(sock), 408, "request_timeout")
    assert HEAD_TIMEOUT * 0.9 < time.monotonic() - started < HEAD_TIMEOUT + 2


def test_a_connection_that_sends_nothing_is_closed(connect: Callable[[], socket.socket]) -> None:
    sock = connect()
    started = time.monotonic()
    _openai_error(_read_all(sock), 408, "request_timeout")
    assert time.monotonic() - started < HEAD_TIMEOUT + 2


def test_a_head_sent_byte_by_byte_in_time_is_served(connect: Callable[[], socket.socket]) -> None:
    sock = connect()
    raw = CHAT + b"content-length: %d\r\nconnection: close\r\n\r\n" % len(BODY)
    for i in range(0, len(raw), 20):
        sock.sendall(raw[i : i + 20])
        time.sleep(0.002)
    sock.sendall(BODY)
    status, _, _ = _response(_read_all(sock))
    assert status == 200


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_body_that_stops_arriving_gets_408(
    connect: Callable[[], socket.socket], limited: RunningGateway, framing: str
) -> None:
    sock = connect()
    if framing == "content-length":
        sock.sendall(CHAT + b"content-length: %d\r\n\r\n" % len(BODY) + BODY[:10])
    else:
        sock.sendall(CHAT + b"transfer-encoding: chunked\r\n\r\na\r\n" + BODY[:10] + b"\r\n")
    started = time.monotonic()
    _openai_error(_read_all(sock), 408, "request_timeout")
    assert BODY_TIMEOUT * 0.9 < time.monotonic() - started < BODY_TIMEOUT + 2
    # The gateway's record of the request says the same.
    limited.app.runtime.flush_observers()
    errors = {"endpoint": "chat.completions", "model": "none", "status": "408", "code": "request_timeout"}
    assert (REGISTRY.get_sample_value("gateway_request_errors_total", errors) or 0) >= 1


def test_headers_then_no_body_gets_408(connect: Callable[[], socket.socket]) -> None:
    sock = connect()
    sock.sendall(CHAT + b"content-length: %d\r\n\r\n" % len(BODY))
    _openai_error(_read_all(sock), 408, "request_timeout")


def test_a_body_that_arrives_slowly_but_steadily_is_served(connect: Callable[[], socket.socket]) -> None:
    sock = connect()
    sock.sendall(CHAT + b"content-length: %d\r\nconnection: close\r\n\r\n" % len(BODY))
    for i in range(0, len(BODY), 8):  # the whole body takes longer than the gap allowed
        sock.sendall(BODY[i : i + 8])
        time.sleep(BODY_TIMEOUT / 4)
    status, _, _ = _response(_read_all(sock))
    assert status == 200


def test_a_body_nobody_reads_cannot_hold_the_connection(connect: Callable[[], socket.socket]) -> None:
    sock = connect()
    sock.sendall(b"POST /nowhere HTTP/1.1\r\nhost: gw\r\ncontent-length: 1000000\r\n\r\nabc")
    time.sleep(0.1)
    status, _, _ = _response(sock.recv(65536))
    assert status == 404
    started = time.monotonic()
    assert _read_all(sock) == b""  # closed once the body stopped arriving
    assert time.monotonic() - started < BODY_TIMEOUT + 2


def test_pipelined_requests_are_all_answered(connect: Callable[[], socket.socket]) -> None:
    sock = connect()
    one = CHAT + b"content-length: %d\r\n\r\n" % len(BODY) + BODY
    sock.sendall(one + one + b"GET /healthz HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n")
    raw = _read_all(sock)
    assert raw.count(b"HTTP/1.1 200 OK") == 3


KEEP_ALIVE = 0.4


@pytest.fixture
def keep_alive_port(fake_url: str) -> Iterator[int]:
    app = create_app(settings_for_tests(), parse_config(config_yaml(fake_url)))
    server = UvicornServer(app, timeout_keep_alive=KEEP_ALIVE)
    yield server.port
    server.close()


def test_a_connection_in_use_is_kept_and_an_idle_one_closed_after_the_keep_alive_timeout(
    keep_alive_port: int,
) -> None:
    sock = socket.create_connection(("127.0.0.1", keep_alive_port), timeout=5)
    one = CHAT + b"content-length: %d\r\n\r\n" % len(BODY) + BODY
    started = time.monotonic()
    answered = 0
    # Requests a little under the timeout apart, for three times the timeout: never closed.
    while time.monotonic() - started < 3 * KEEP_ALIVE:
        sock.sendall(one)
        assert _response(sock.recv(65536))[0] == 200
        idle_from = time.monotonic()
        answered += 1
        time.sleep(KEEP_ALIVE * 0.6)
    assert answered >= 4
    assert _read_all(sock) == b""
    assert KEEP_ALIVE * 0.9 <= time.monotonic() - idle_from < KEEP_ALIVE + 1
    sock.close()


class _Recorded:
    """A transport that keeps what is written to it (the object under test only forwards)."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def _held() -> tuple[_Recorded, _HeadHeld]:
    transport = _Recorded()
    return transport, _HeadHeld(transport, asyncio.get_running_loop())  # type: ignore[arg-type]


async def test_a_reply_sent_at_once_goes_out_in_one_write() -> None:
    transport, held = _held()
    held.write(b"HTTP/1.1 200 OK\r\n\r\n")
    assert transport.writes == []
    held.write(b"{}")
    held.write(b"more")
    assert transport.writes == [b"HTTP/1.1 200 OK\r\n\r\n{}", b"more"]
    await asyncio.sleep(0)
    assert transport.writes == [b"HTTP/1.1 200 OK\r\n\r\n{}", b"more"]  # nothing written twice


async def test_a_head_with_no_body_yet_goes_out_at_the_end_of_the_loop_turn() -> None:
    transport, held = _held()
    held.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
    await asyncio.sleep(0)
    assert transport.writes == [b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"]
    held.write(b"5\r\nevent\r\n")
    assert transport.writes[-1] == b"5\r\nevent\r\n"


async def test_closing_writes_a_held_head_first() -> None:
    transport, held = _held()
    held.write(b"HTTP/1.1 500 Internal Server Error\r\n\r\n")
    held.close()
    assert transport.writes == [b"HTTP/1.1 500 Internal Server Error\r\n\r\n"] and transport.closed
    await asyncio.sleep(0)
    assert len(transport.writes) == 1
