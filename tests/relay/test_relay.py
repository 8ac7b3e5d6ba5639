"""The relay on its own: upstreams scripted with `MockTransport`, no sockets, every attempt on the exchange."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import orjson
import pytest

from gateway.config import parse_config
from gateway.dialects.base import UpstreamRequest
from gateway.errors import InvalidRequest, UpstreamConnectError, UpstreamStatusError, UpstreamTimeout
from gateway.relay import Exchange, Relay
from gateway.relay.relay import _read_or_close
from gateway.request import parse_chat_request
from gateway.routing import Router
from gateway.upstream.mock import MockResponse, MockTransport

CONFIG = """
keys:
  - name: k
    key: sk-k
upstreams:
  - name: first
    dialect: openai
    base_url: http://first.invalid/v1
    api_key: sk-first-upstream-secret
  - name: second
    dialect: openai
    base_url: http://second.invalid/v1
models:
  - name: one
    upstream: first
    upstream_model: one-2026
  - name: two
    upstream: first
    weight: 1000000
  - name: two
    upstream: second
    weight: 0.000001
"""
USAGE = {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}
COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "one-2026",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop"}],
    "usage": USAGE,
}


def _chunk(delta: dict[str, Any], finish: str | None = None, usage: dict[str, int] | None = None) -> bytes:
    choices = [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}]
    body = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": choices}
    if usage:
        body["usage"] = usage
    return b"data: " + orjson.dumps(body) + b"\n\n"


STREAM = [
    _chunk({"role": "assistant", "content": ""}),
    _chunk({"content": "Hel"}),
    _chunk({"content": "lo"}),
    _chunk({}, "stop"),
    _chunk({}, usage=USAGE),
    b"data: [DONE]\n\n",
]


def _relay(handler: Any, **kwargs: Any) -> tuple[Relay, MockTransport]:
    transport = MockTransport(handler)
    router = Router(parse_config(CONFIG, env={}))
    return Relay(router, {"first": transport, "second": transport}, max_attempts=3, **kwargs), transport


def _principal() -> Any:
    from gateway.accounting.keys import Principal

    return Principal("k")


def _request(model: str = "one", **fields: Any) -> Any:
    body = {"model": model, "messages": [{"role": "user", "content": "Hello"}], **fields}
    return parse_chat_request(orjson.dumps(body))


def _json(body: dict[str, Any], status: int = 200, **headers: str) -> MockResponse:
    return MockResponse(status, {"content-type": "application/json", **headers}, [orjson.dumps(body)])


async def test_buffered_reply_is_one_ok_attempt_with_usage() -> None:
    relay, transport = _relay(lambda request: _json(COMPLETION))
    exchange = Exchange("r1", "chat.completions")
    reply = await relay.complete(exchange, _principal(), _request())
    assert orjson.loads(reply.body)["choices"][0]["message"]["content"] == "Hi"
    assert orjson.loads(transport.requests[0].body)["model"] == "one-2026"
    assert exchange.route == "one" and exchange.replied
    assert exchange.usage is not None and exchange.usage.total_tokens == 9
    [attempt] = exchange.attempts
    assert (attempt.upstream, attempt.model, attempt.status, attempt.outcome) == ("first", "one-2026", 200, "ok")
    assert attempt.headers_after is not None and attempt.duration is not None


async def test_failed_attempts_are_recorded_and_the_next_deployment_tried() -> None:
    def handler(request: UpstreamRequest) -> MockResponse:
        if request.upstream == "first":
            return _json({"error": {"message": "boom"}}, 500)
        return _json(COMPLETION)

    relay, _ = _relay(handler)
    exchange = Exchange("r1", "chat.completions")
    await relay.complete(exchange, _principal(), _request("two"))
    assert [(a.upstream, a.status, a.outcome) for a in exchange.attempts] == [
        ("first", 500, "server_error"),
        ("second", 200, "ok"),
    ]


@pytest.mark.parametrize(
    ("failure", "outcome", "raised"),
    [
        (UpstreamConnectError("The upstream `first` could not be reached."), "connect_error", UpstreamConnectError),
        (UpstreamTimeout("The upstream `first` did not answer in time."), "timeout", UpstreamTimeout),
        (_json({"error": {"message": "slow down"}}, 429, **{"retry-after": "3"}), "rate_limited", UpstreamStatusError),
        (_json({"error": {"message": "bad key"}}, 401), "auth_failed", UpstreamStatusError),
    ],
)
async def test_each_failure_has_its_outcome(failure: Any, outcome: str, raised: type[Exception]) -> None:
    def handler(request: UpstreamRequest) -> MockResponse:
        if isinstance(failure, Exception):
            raise failure
        return failure  # type: ignore[no-any-return]

    relay, transport = _relay(handler, retry_backoff=0)
    exchange = Exchange("r1", "chat.completions")
    with pytest.raises(raised) as info:
        await relay.complete(exchange, _principal(), _request("one", retries=1))
    assert type(info.value) is raised
    assert [a.outcome for a in exchange.attempts] == [outcome, outcome]
    assert len(transport.requests) == 2


async def test_a_client_mistake_the_upstream_caught_is_not_retried() -> None:
    relay, transport = _relay(lambda request: _json({"error": {"message": "bad"}}, 400))
    exchange = Exchange("r1", "chat.completions")
    with pytest.raises(UpstreamStatusError) as info:
        await relay.complete(exchange, _principal(), _request("two"))
    assert info.value.status == 400 and len(transport.requests) == 1
    assert [a.outcome for a in exchange.attempts] == ["client_error"]


async def _drain(stream: Any) -> list[tuple[bytes, bool]]:
    try:
        return [pair async for pair in stream.events()]
    finally:
        await stream.aclose()


async def test_stream_events_end_with_the_final_pair_and_usage_on_the_exchange() -> None:
    response = MockResponse(200, {"content-type": "text/event-stream"}, STREAM)
    relay, _ = _relay(lambda request: response)
    exchange = Exchange("r1", "chat.completions")
    stream = await relay.stream(exchange, _principal(), _request(stream=True))
    assert exchange.replied and exchange.first_byte_after is not None
    pairs = await _drain(stream)
    assert [more for _, more in pairs] == [True] * (len(pairs) - 1) + [False]
    body = b"".join(data for data, _ in pairs)
    assert body.endswith(b"data: [DONE]\n\n") and b'"usage"' not in body  # the client did not ask for usage
    assert exchange.usage is not None and exchange.usage.total_tokens == 9
    [attempt] = exchange.attempts
    assert attempt.outcome == "ok" and attempt.first_token_after is not None


async def test_stream_failing_after_the_first_byte_ends_with_an_error_event() -> None:
    chunks = [*STREAM[:2], UpstreamTimeout("The upstream `first` did not answer in time.")]
    relay, _ = _relay(lambda request: MockResponse(200, {}, chunks))
    exchange = Exchange("r1", "chat.completions")
    stream = await relay.stream(exchange, _principal(), _request(stream=True))
    pairs = await _drain(stream)
    last, more = pairs[-1]
    assert not more and last.startswith(b'data: {"error"') and last.endswith(b"data: [DONE]\n\n")
    assert exchange.replied and exchange.error_code == "upstream_timeout"
    assert [a.outcome for a in exchange.attempts] == ["timeout"]


async def test_stream_failing_before_the_first_byte_moves_on() -> None:
    def handler(request: UpstreamRequest) -> MockResponse:
        if request.upstream == "first":
            return MockResponse(200, {}, [UpstreamTimeout("stalled")])
        return MockResponse(200, {}, STREAM)

    relay, _ = _relay(handler)
    exchange = Exchange("r1", "chat.completions")
    await _drain(await relay.stream(exchange, _principal(), _request("two", stream=True)))
    assert [(a.upstream, a.outcome) for a in exchange.attempts] == [("first", "timeout"), ("second", "ok")]


@pytest.mark.parametrize("read", [0, 1])
async def test_a_stream_abandoned_at_any_point_closes_the_upstream(read: int) -> None:
    response = MockResponse(200, {}, STREAM, delay=0.01)
    relay, _ = _relay(lambda request: response)
    exchange = Exchange("r1", "chat.completions")
    stream = await relay.stream(exchange, _principal(), _request(stream=True))
    events = stream.events()
    for _ in range(read):  # the client leaves after `read` writes (0: before any)
        await events.__anext__()
    await events.aclose()  # type: ignore[attr-defined]
    await stream.aclose()
    assert response.closed
    exchange.finish()
    # The upstream's usage chunk never came: the ledger counts the request with an estimate.
    assert exchange.usage is not None and exchange.usage.estimated
    assert [a.outcome for a in exchange.attempts] == ["cancelled"]


@pytest.mark.parametrize("cuts", [[], [1], [1, 2, 3, 4, 5]])
async def test_a_stream_whose_upstream_has_finished_goes_out_in_one_piece(cuts: list[int]) -> None:
    """The upstream's whole body arrived (in one read or several, none of which can wait): its
    events go out with the end, one write to the client."""
    edges = [0, *cuts, len(STREAM)]
    chunks = [b"".join(STREAM[a:b]) for a, b in itertools.pairwise(edges)]
    relay, _ = _relay(lambda request: MockResponse(200, {}, chunks))
    exchange = Exchange("r1", "chat.completions")
    pairs = await _drain(await relay.stream(exchange, _principal(), _request(stream=True)))
    assert len(pairs) == 1 and not pairs[0][1]
    assert pairs[0][0].count(b"data: ") == 5 and pairs[0][0].endswith(b"data: [DONE]\n\n")
    assert exchange.usage is not None and exchange.usage.total_tokens == 9
    assert exchange.attempts[0].outcome == "ok"


async def test_an_async_handler_is_awaited() -> None:
    async def handler(request: UpstreamRequest) -> MockResponse:
        await asyncio.sleep(0)
        return _json(COMPLETION)

    relay, transport = _relay(handler)
    exchange = Exchange("r1", "chat.completions")
    await relay.complete(exchange, _principal(), _request())
    assert len(transport.requests) == 1 and exchange.attempts[0].outcome == "ok"


async def test_reject_policy_sends_nothing_and_names_the_parameter() -> None:
    config = CONFIG.replace(
        "    base_url: http://first.invalid/v1", "    base_url: http://first.invalid/v1\n    unsupported_params: reject"
    )
    config = config.replace(
        "  - name: first\n    dialect: openai\n", "  - name: first\n    dialect: openai\n    vendor: zhipu\n"
    )
    transport = MockTransport(lambda request: _json(COMPLETION))
    relay = Relay(Router(parse_config(config, env={})), {"first": transport, "second": transport}, max_attempts=3)
    exchange = Exchange("r1", "chat.completions")
    with pytest.raises(InvalidRequest) as info:
        await relay.complete(exchange, _principal(), _request("one", thinking={"budget_tokens": 2048}))
    assert info.value.param == "thinking.budget_tokens" and info.value.code == "unsupported_parameter"
    assert transport.requests == [] and exchange.attempts == []


FALLBACK_CONFIG = (
    CONFIG
    + """
  - name: big
    upstream: second
    upstream_model: big-2026
  - name: guarded
    upstream: first
    fallbacks: [two, big]
    context_fallbacks: [big]
"""
)


def _fallback_relay(handler: Any) -> tuple[Relay, MockTransport]:
    transport = MockTransport(handler)
    router = Router(parse_config(FALLBACK_CONFIG, env={}))
    return Relay(router, {"first": transport, "second": transport}, max_attempts=3, retry_backoff=0), transport


async def test_when_every_deployment_fails_a_fallback_model_answers() -> None:
    def handler(request: UpstreamRequest) -> MockResponse:
        if request.upstream == "first":
            return _json({"error": {"message": "down"}}, 503)
        return _json({**COMPLETION, "model": orjson.loads(request.body)["model"]})

    relay, transport = _fallback_relay(handler)
    exchange = Exchange("r1", "chat.completions")
    reply = await relay.complete(exchange, _principal(), _request("guarded"))
    # `guarded` (first) fails, then `two`: first fails, second answers as `two`.
    assert [r.upstream for r in transport.requests] == ["first", "first", "second"]
    assert orjson.loads(reply.body)["model"] == "two"
    assert exchange.served_model == "two" and (b"x-gateway-model", b"two") in reply.headers
    assert [a.outcome for a in exchange.attempts] == ["server_error", "server_error", "ok"]


async def test_a_context_length_error_goes_to_the_context_fallback_only() -> None:
    def handler(request: UpstreamRequest) -> MockResponse:
        if request.upstream == "first":
            error = {"message": "This model's maximum context length is 8192 tokens", "code": "context_length_exceeded"}
            return _json({"error": error}, 400)
        return _json(COMPLETION)

    relay, transport = _fallback_relay(handler)
    exchange = Exchange("r1", "chat.completions")
    await relay.complete(exchange, _principal(), _request("guarded"))
    assert [orjson.loads(r.body)["model"] for r in transport.requests] == ["guarded", "big-2026"]
    assert exchange.served_model == "big"


async def test_a_client_mistake_never_falls_back() -> None:
    relay, transport = _fallback_relay(lambda request: _json({"error": {"message": "bad field"}}, 400))
    with pytest.raises(UpstreamStatusError):
        await relay.complete(Exchange("r1", "chat.completions"), _principal(), _request("guarded"))
    assert len(transport.requests) == 1


async def test_the_same_deployment_again_waits_what_the_upstream_asked() -> None:
    calls: list[float] = []

    def handler(request: UpstreamRequest) -> MockResponse:
        calls.append(asyncio.get_running_loop().time())
        if len(calls) == 1:
            return _json({"error": {"message": "slow down"}}, 429, **{"retry-after-ms": "200"})
        return _json(COMPLETION)

    relay, _ = _relay(handler, retry_backoff=0)
    await relay.complete(Exchange("r1", "chat.completions"), _principal(), _request("one", retries=1))
    assert calls[1] - calls[0] >= 0.19


async def test_a_deployment_that_keeps_failing_cools_down_and_goes_last() -> None:
    def handler(request: UpstreamRequest) -> MockResponse:
        if request.upstream == "first":
            raise UpstreamConnectError("The upstream `first` could not be reached.")
        return _json(COMPLETION)

    relay, _ = _relay(handler)
    outcomes = []
    for i in range(5):
        exchange = Exchange(f"r{i}", "chat.completions")
        await relay.complete(exchange, _principal(), _request("two"))
        outcomes.append([(a.upstream, a.outcome, a.cooldown > 0) for a in exchange.attempts])
    failing = [("first", "connect_error", False), ("second", "ok", False)]
    assert outcomes[:2] == [failing, failing]
    assert outcomes[2] == [("first", "connect_error", True), ("second", "ok", False)]  # the third in a row
    assert outcomes[3:] == [[("second", "ok", False)]] * 2  # `first` is tried last now, so not at all


async def test_a_body_already_here_is_read_past_the_deadline_and_one_still_coming_is_not() -> None:
    """No timer for a body that has arrived (reading it cannot wait); the total deadline still holds
    for one that has not."""
    past = time.perf_counter() - 1
    here = MockResponse(200, chunks=[b'{"a":', b"1}"])
    assert here.complete
    assert await _read_or_close(here, past, "up") == b'{"a":1}'
    coming = MockResponse(200, chunks=[b'{"a":', b"1}"], delay=0.5)
    assert not coming.complete
    with pytest.raises(UpstreamTimeout, match="total time"):
        await _read_or_close(coming, time.perf_counter() + 0.05, "up")
    assert coming.closed
