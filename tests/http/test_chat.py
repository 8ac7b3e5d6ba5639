"""POST /v1/chat/completions through a real uvicorn server, with the official openai SDK as the client."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import httpx
import openai
import pytest

from gateway.config import parse_config
from tests.conftest import CLIENT_KEY, LIMITED_KEY, RunningGateway, checked_http, sdk
from tests.support.fake_anthropic import ANTHROPIC_KEY
from tests.support.fake_openai import UPSTREAM_KEY, FakeOpenAI
from tests.support.spec import Checker, assert_valid, check_exchange, sse_payloads

USER = [{"role": "user", "content": "hello brave new world"}]


def test_echo_buffered(client: openai.OpenAI, checker: Checker) -> None:
    reply = client.chat.completions.create(model="echo", messages=USER)
    assert reply.choices[0].message.content == "hello brave new world"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.completion_tokens == 4
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 4
    assert checker.checked == 1


def test_echo_streamed_with_usage(client: openai.OpenAI, checker: Checker) -> None:
    chunks = list(
        client.chat.completions.create(model="echo", messages=USER, stream=True, stream_options={"include_usage": True})
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "hello brave new world"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4
    assert len({c.id for c in chunks}) == 1
    assert checker.checked == len(chunks)


def test_stream_without_include_usage_has_no_usage_chunk(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model="gpt-test", messages=USER, stream=True))
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "hello brave new world"


def test_max_tokens_truncates_echo(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="echo", messages=USER, max_tokens=2)
    assert reply.choices[0].message.content == "hello brave "
    assert reply.choices[0].finish_reason == "length"


async def test_async_client_buffered_and_streamed(async_client: openai.AsyncOpenAI, fake: FakeOpenAI) -> None:
    reply = await async_client.chat.completions.create(model="gpt-test", messages=USER)
    assert reply.choices[0].message.content == "hello brave new world"
    assert reply.usage is not None
    assert reply.usage.prompt_tokens_details is not None and reply.usage.prompt_tokens_details.cached_tokens == 3
    stream = await async_client.chat.completions.create(
        model="gpt-test", messages=USER, stream=True, stream_options={"include_usage": True}
    )
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "hello brave new world"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 23


def test_upstream_gets_gateway_credentials_and_renamed_model(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    client.chat.completions.create(
        model="gpt-test", messages=USER, extra_headers={"x-api-key": "sk-client-extra", "x-custom": "1"}
    )
    seen = fake.requests[-1]
    assert seen.body["model"] == "ok"
    assert seen.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    forwarded = " ".join(seen.headers.values())
    assert CLIENT_KEY not in forwarded and "sk-client-extra" not in forwarded
    assert "x-custom" not in seen.headers and "x-api-key" not in seen.headers


def test_upstream_cookies_are_never_replayed(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    # Through a host name: aiohttp's default jar would ignore cookies from an IP address anyway.
    client.chat.completions.create(model="by-name", messages=USER)
    client.chat.completions.create(model="by-name", messages=USER)
    assert len(fake.requests) == 2
    assert all("cookie" not in seen.headers for seen in fake.requests)


def test_stream_always_asks_upstream_for_usage(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    list(client.chat.completions.create(model="gpt-test", messages=USER, stream=True))
    assert fake.requests[-1].body["stream_options"] == {"include_usage": True}


def test_pattern_route_keeps_the_requested_name(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    reply = client.chat.completions.create(model="fake-anything", messages=USER)
    assert fake.requests[-1].body["model"] == "fake-anything"
    assert reply.model == "fake-anything"


@pytest.mark.parametrize("model", ["sloppy", "crlf", "usage-in-last", "slow"])
def test_sloppy_and_odd_upstreams_still_give_spec_replies(
    client: openai.OpenAI, gateway: RunningGateway, fake: FakeOpenAI, model: str, checker: Checker
) -> None:
    gateway_model = f"fake-{model}"
    reply = client.chat.completions.create(model=gateway_model, messages=USER)
    assert reply.choices[0].message.content == "hello brave new world"
    chunks = list(client.chat.completions.create(model=gateway_model, messages=USER, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "hello brave new world"
    assert all(c.usage is None for c in chunks)
    assert checker.checked == 1 + len(chunks)


def test_usage_only_chunk_sent_when_asked(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="fake-usage-in-last", messages=USER, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4


def test_fallback_to_next_deployment_before_first_byte(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    reply = client.chat.completions.create(model="fallback", messages=USER)
    assert reply.choices[0].message.content == "hello brave new world"
    chunks = list(client.chat.completions.create(model="fallback", messages=USER, stream=True))
    assert chunks and len(fake.requests) == 2


@pytest.mark.parametrize(("retries", "attempts"), [(None, 1), (0, 1), (2, 3), (10, 4)])  # capped at 3 retries
def test_client_retries_are_done_by_the_gateway(
    client: openai.OpenAI, fake: FakeOpenAI, retries: int | None, attempts: int
) -> None:
    extra = {} if retries is None else {"retries": retries}
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="fake-status-500", messages=USER, extra_body=extra)
    assert len(fake.requests) == attempts
    assert all("retries" not in seen.body for seen in fake.requests)


def test_client_retries_do_not_repeat_client_mistakes(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="fake-status-400", messages=USER, extra_body={"retries": 3})
    assert len(fake.requests) == 1


def test_sess_id_keeps_a_session_on_one_deployment(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    chosen = {}
    for session in [f"conv-{i}" for i in range(12)]:
        for _ in range(3):
            client.chat.completions.create(model="sticky", messages=USER, extra_body={"sess_id": session})
        names = {seen.body["model"] for seen in fake.requests[-3:]}
        assert len(names) == 1, names  # one deployment per session
        assert all("sess_id" not in seen.body for seen in fake.requests[-3:])
        chosen[session] = names.pop()
    assert set(chosen.values()) == {"ok-a", "ok-b"}  # and sessions spread over both


# --- client mistakes: SDK exceptions, 4xx, param named -------------------------------------------


def test_bad_key_raises_authentication_error(gateway: RunningGateway, checker: Checker) -> None:
    bad = sdk(gateway.url, checker, key="sk-wrong")
    with pytest.raises(openai.AuthenticationError) as info:
        bad.chat.completions.create(model="echo", messages=USER)
    assert info.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


@pytest.mark.parametrize("header", ["api-key", "x-api-key"])
def test_key_in_alternative_headers(anon: httpx.Client, header: str) -> None:
    response = anon.post(
        "/v1/chat/completions",
        headers={header: CLIENT_KEY},
        json={"model": "echo", "messages": USER},
    )
    assert response.status_code == 200


def test_missing_key(anon: httpx.Client) -> None:
    response = anon.post("/v1/chat/completions", json={"model": "echo", "messages": USER})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert response.headers["x-request-id"]


def test_unknown_model_raises_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-model", messages=USER)
    assert info.value.code == "model_not_found"
    assert info.value.param == "model"  # type: ignore[attr-defined]


def test_key_limited_to_some_models(gateway: RunningGateway, checker: Checker) -> None:
    limited = sdk(gateway.url, checker, key=LIMITED_KEY)
    assert limited.chat.completions.create(model="echo", messages=USER).choices
    with pytest.raises(openai.NotFoundError):
        limited.chat.completions.create(model="gpt-test", messages=USER)
    assert [m.id for m in limited.models.list()] == ["echo"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": USER}, "model"),
        ({"model": 7, "messages": USER}, "model"),
        ({"model": "echo"}, "messages"),
        ({"model": "echo", "messages": "hi"}, "messages"),
        ({"model": "echo", "messages": []}, "messages"),
        ({"model": "echo", "messages": [{"content": "x"}]}, "messages[0].role"),
        ({"model": "echo", "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"model": "echo", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"model": "echo", "messages": USER, "stream": "yes"}, "stream"),
        ({"model": "echo", "messages": USER, "temperature": "hot"}, "temperature"),
        ({"model": "echo", "messages": USER, "temperature": 3}, "temperature"),
        ({"model": "echo", "messages": USER, "top_p": 1.5}, "top_p"),
        ({"model": "echo", "messages": USER, "max_tokens": 0}, "max_tokens"),
        ({"model": "echo", "messages": USER, "max_tokens": 1.5}, "max_tokens"),
        ({"model": "echo", "messages": USER, "n": True}, "n"),
        ({"model": "echo", "messages": USER, "tools": {}}, "tools"),
        ({"model": "echo", "messages": USER, "tools": [{"type": "function"}]}, "tools[0].function"),
        (
            {"model": "echo", "messages": USER, "tools": [{"type": "function", "function": {}}]},
            "tools[0].function.name",
        ),
        ({"model": "echo", "messages": USER, "tool_choice": "always"}, "tool_choice"),
        ({"model": "echo", "messages": USER, "stop": [1]}, "stop"),
        ({"model": "echo", "messages": USER, "response_format": {"type": "yaml"}}, "response_format.type"),
        ({"model": "echo", "messages": USER, "stream_options": {"include_usage": True}}, "stream_options"),
        (
            {"model": "echo", "messages": USER, "stream": True, "stream_options": {"include_usage": 1}},
            "stream_options.include_usage",
        ),
    ],
)
def test_bad_body_raises_bad_request_naming_the_field(
    client: openai.OpenAI, raw: httpx.Client, body: dict[str, object], param: str
) -> None:
    response = raw.post("/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    assert_valid("ErrorResponse", response.json())
    assert response.json()["error"]["param"] == param
    assert response.headers["x-should-retry"] == "false"
    with pytest.raises(openai.BadRequestError) as info:
        # The SDK's own low-level call: its typed `create` refuses some of these bodies client-side.
        client.post("/chat/completions", body=body, cast_to=object)
    assert info.value.param == param  # type: ignore[attr-defined]


@pytest.mark.parametrize("payload", [b"{not json", b"[1, 2]", b"", b"\xff\xfe"])
def test_malformed_json_is_400(raw: httpx.Client, payload: bytes) -> None:
    response = raw.post("/v1/chat/completions", content=payload)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_body_over_limit_is_413(raw: httpx.Client) -> None:
    big = {"model": "echo", "messages": [{"role": "user", "content": "x" * 70_000}]}
    response = raw.post("/v1/chat/completions", json=big)
    assert response.status_code == 413
    assert_valid("ErrorResponse", response.json())


def test_body_over_limit_without_content_length_is_413(raw: httpx.Client) -> None:
    def chunks():  # type: ignore[no-untyped-def]
        yield b'{"model": "echo", "messages": [{"role": "user", "content": "'
        for _ in range(80):
            yield b"x" * 1000
        yield b'"}]}'

    response = raw.post("/v1/chat/completions", content=chunks())
    assert response.status_code == 413


def test_get_is_405(raw: httpx.Client) -> None:
    response = raw.get("/v1/chat/completions")
    assert response.status_code == 405
    assert_valid("ErrorResponse", response.json())


# --- upstream faults ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "status", "error"),
    [
        ("fake-status-400", 400, openai.BadRequestError),
        ("fake-status-404", 404, openai.NotFoundError),
        ("fake-status-429", 429, openai.RateLimitError),
        ("fake-status-500", 502, openai.InternalServerError),
        ("fake-status-503", 503, openai.InternalServerError),
        ("fake-leaky-401", 502, openai.InternalServerError),
        ("fake-not-json", 502, openai.InternalServerError),
        ("fake-hang", 504, openai.InternalServerError),
        ("dead", 502, openai.InternalServerError),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_upstream_failures_before_first_byte(
    client: openai.OpenAI, model: str, status: int, error: type[openai.APIStatusError], stream: bool
) -> None:
    with pytest.raises(error) as info:
        result = client.chat.completions.create(model=model, messages=USER, stream=stream)
        if stream:
            list(result)  # type: ignore[arg-type]
    assert info.value.status_code == status
    body = info.value.response.text
    assert UPSTREAM_KEY not in body and "sk-dead" not in body
    assert "127.0.0.1" not in body and "example.invalid" not in body
    assert info.value.response.headers["x-request-id"]


def test_upstream_429_forwards_retry_after(raw: httpx.Client) -> None:
    response = raw.post("/v1/chat/completions", json={"model": "fake-status-429", "messages": USER})
    assert response.status_code == 429
    assert response.headers["retry-after"] == "1"


def test_upstream_without_credentials_is_503_not_retried(raw: httpx.Client) -> None:
    response = raw.post("/v1/chat/completions", json={"model": "nokey", "messages": USER})
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "upstream_not_configured"
    assert response.headers["x-should-retry"] == "false"


@pytest.mark.parametrize("model", ["fake-drop", "fake-mid-error"])
def test_failure_after_first_byte_becomes_error_event(raw: httpx.Client, model: str) -> None:
    response = raw.post("/v1/chat/completions", json={"model": model, "messages": USER, "stream": True})
    assert response.status_code == 200
    check_exchange("/v1/chat/completions", 200, response.headers["content-type"], response.content)
    payloads = sse_payloads(response.content)
    assert payloads[-1] == b"[DONE]"
    assert b'"error"' in payloads[-2]
    assert b"chat.completion.chunk" in payloads[0]


def test_sdk_raises_on_error_event(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model="fake-drop", messages=USER, stream=True)
    with pytest.raises(openai.APIError):
        list(stream)


def test_stream_headers(raw: httpx.Client) -> None:
    with raw.stream("POST", "/v1/chat/completions", json={"model": "echo", "messages": USER, "stream": True}) as r:
        assert r.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert r.headers["cache-control"] == "no-cache"
        assert r.headers["x-accel-buffering"] == "no"
        assert "content-encoding" not in r.headers and "content-length" not in r.headers
        assert r.headers["x-request-id"].startswith("req_")
        r.read()


def test_stream_is_relayed_event_by_event(raw: httpx.Client) -> None:
    """With a slow upstream, the first chunk arrives long before the stream ends."""
    arrivals = []
    body = {"model": "fake-slow", "messages": USER, "stream": True}
    started = time.monotonic()
    with raw.stream("POST", "/v1/chat/completions", json=body) as response:
        for _ in response.iter_raw():
            arrivals.append(time.monotonic() - started)
    assert len(arrivals) >= 4
    assert arrivals[-1] - arrivals[0] > 0.1


def test_caller_request_id_is_echoed(raw: httpx.Client) -> None:
    response = raw.post(
        "/v1/chat/completions", json={"model": "echo", "messages": USER}, headers={"x-request-id": "abc-123"}
    )
    assert response.headers["x-request-id"] == "abc-123"
    evil = raw.post(
        "/v1/chat/completions", json={"model": "echo", "messages": USER}, headers={"x-request-id": "a b\tc"}
    )
    assert evil.headers["x-request-id"].startswith("req_")


def test_client_disconnect_mid_stream_closes_upstream_and_records_usage(
    gateway: RunningGateway, raw: httpx.Client, fake: FakeOpenAI
) -> None:
    body = {"model": "fake-slow", "messages": USER, "stream": True}
    cut_before = fake.streams_cut  # the fake upstream serves the whole session
    with raw.stream("POST", "/v1/chat/completions", json=body) as response:
        next(response.iter_raw())
    ledger = gateway.app.runtime.ledger
    day = time.strftime("%Y-%m-%d", time.gmtime())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if fake.streams_cut == cut_before + 1 and asyncio.run(ledger.usage("tester", day)).get("fake-slow"):
            break
        time.sleep(0.05)
    assert fake.streams_cut == cut_before + 1
    assert asyncio.run(ledger.usage("tester", day))["fake-slow"]["requests"] == 1


def test_a_body_cut_short_is_never_sent_upstream(gateway: RunningGateway, fake: FakeOpenAI) -> None:
    """The bytes that came form a whole request, but the client left before the declared length."""
    body = json.dumps({"model": "gpt-test", "messages": USER}).encode()
    port = int(gateway.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        head = (
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {CLIENT_KEY}\r\nContent-Length: {len(body) + 500}\r\n\r\n"
        )
        sock.sendall(head.encode() + body)
        time.sleep(0.2)
    time.sleep(0.5)
    assert fake.requests == []
    day = time.strftime("%Y-%m-%d", time.gmtime())
    assert asyncio.run(gateway.app.runtime.ledger.usage("tester", day)).get("gpt-test") is None


def _nested(levels: int) -> Any:
    value: Any = "bottom"
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": ["user"], "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": {"a": 1}, "content": "hi"}]}, "messages[0].role"),
        ({"response_format": {"type": ["json_object"]}}, "response_format.type"),
        ({"response_format": {"type": {"x": 1}}}, "response_format.type"),
        ({"response_format": {}}, "response_format.type"),
        ({"x_unknown": _nested(300)}, "x_unknown"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": "a", "x": _nested(600)}]}]}, "messages"),
    ],
)
def test_client_input_that_once_gave_500_is_a_400_naming_the_field(
    raw: httpx.Client, body: dict[str, Any], param: str
) -> None:
    sent = {"model": "echo", "messages": USER, **body}
    response = raw.post("/v1/chat/completions", content=json.dumps(sent))
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert response.headers["x-should-retry"] == "false"


def test_the_404_for_an_unknown_model_does_not_echo_a_huge_name(raw: httpx.Client) -> None:
    response = raw.post("/v1/chat/completions", json={"model": "m" * 50_000, "messages": USER})
    assert response.status_code == 404 and len(response.content) < 1000


def test_an_upstream_reply_nested_too_deeply_is_the_upstreams_fault(raw: httpx.Client) -> None:
    buffered = raw.post("/v1/chat/completions", json={"model": "fake-deep", "messages": USER})
    assert buffered.status_code == 502 and buffered.json()["error"]["code"] == "upstream_protocol_error"
    streamed = raw.post("/v1/chat/completions", json={"model": "fake-deep", "messages": USER, "stream": True})
    payloads = sse_payloads(streamed.content)
    assert payloads[-1] == b"[DONE]" and json.loads(payloads[-2])["error"]["code"] == "upstream_protocol_error"


def test_an_upstream_error_never_shows_the_upstream_url(raw: httpx.Client, fake_url: str) -> None:
    response = raw.post("/v1/chat/completions", json={"model": "fake-leaky-url", "messages": USER})
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert "Bad request to" in message and "127.0.0.1" not in message and "http" not in message


def test_operator_mistakes_read_clearly(
    start_gateway: Any,
    fake_url: str,
    anthropic_server: Any,
    checker: Checker,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = f"""
keys: [{{name: tester, key: {CLIENT_KEY}}}]
upstreams:
  - {{name: misaddressed, dialect: openai, base_url: "{fake_url}/nowhere/v1", api_key: {UPSTREAM_KEY}}}
  - {{name: claude-sdk-style, dialect: anthropic, base_url: "{anthropic_server[1].url}", api_key: {ANTHROPIC_KEY}}}
models:
  - {{name: misaddressed, upstream: misaddressed}}
  - {{name: claude-plain, upstream: claude-sdk-style, upstream_model: claude-text}}
"""
    running = start_gateway(parse_config(config))
    with checked_http(checker, base_url=running.url, headers={"authorization": f"Bearer {CLIENT_KEY}"}) as http:
        wrong = http.post("/v1/chat/completions", json={"model": "misaddressed", "messages": USER})
        # Not the client's invalid request: the gateway's config is wrong, and the log says where.
        assert wrong.status_code == 502 and wrong.json()["error"]["code"] == "upstream_endpoint_not_found"
        assert "upstream misaddressed answered 404 for /nowhere/v1/chat/completions" in caplog.text
        # An Anthropic base_url as Anthropic's SDKs take it, without /v1.
        right = http.post("/v1/chat/completions", json={"model": "claude-plain", "messages": USER})
        assert right.status_code == 200, right.text


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_gone_before_the_reply_closes_the_upstream_request_at_once(
    gateway: RunningGateway, fake: FakeOpenAI, stream: bool
) -> None:
    cut_before = fake.hangs_cut
    body = {"model": "fake-hang", "messages": USER, "stream": stream}
    headers = {"authorization": f"Bearer {CLIENT_KEY}"}
    with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes its connection
        httpx.post(f"{gateway.url}/v1/chat/completions", json=body, headers=headers, timeout=0.3)
    deadline = time.monotonic() + 0.5  # the gateway would give up on the upstream only after 1 s
    while fake.hangs_cut == cut_before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert fake.hangs_cut == cut_before + 1
    assert len([r for r in fake.requests if r.body["model"] == "fake-hang"]) == 1  # and no other attempt


def test_each_phase_has_its_timeout(start_gateway: Any, fake_url: str, fake: FakeOpenAI, checker: Checker) -> None:
    config = f"""
keys: [{{name: tester, key: {CLIENT_KEY}}}]
upstreams:
  - {{name: fake, dialect: openai, base_url: "{fake_url}/v1", api_key: {UPSTREAM_KEY}}}
  - {{name: quiet, dialect: openai, base_url: "{fake_url}/v1", api_key: {UPSTREAM_KEY}, timeouts: {{idle: 0.3}}}}
models:
  - {{name: t-headers, upstream: fake, upstream_model: hang, timeouts: {{headers: 0.3}}}}
  - {{name: t-first, upstream: fake, upstream_model: slow-start, timeouts: {{first_token: 0.3}}}}
  - {{name: t-idle, upstream: quiet, upstream_model: stall}}
  - {{name: t-total, upstream: fake, upstream_model: slow, timeouts: {{total: 0.15}}}}
"""
    running = start_gateway(parse_config(config), upstream_read_timeout=30)
    with checked_http(checker, base_url=running.url, headers={"authorization": f"Bearer {CLIENT_KEY}"}) as http:

        def post(model: str, stream: bool) -> tuple[httpx.Response, float]:
            started = time.monotonic()
            body = {"model": model, "messages": USER, "stream": stream}
            response = http.post("/v1/chat/completions", json=body)
            return response, time.monotonic() - started

        for model, stream in (("t-headers", False), ("t-first", True)):  # before the first byte: a 504
            response, took = post(model, stream)
            assert response.status_code == 504 and response.json()["error"]["code"] == "upstream_timeout"
            assert took < 1.5, (model, took)
        for model in ("t-idle", "t-total"):  # after it: an error event, then [DONE]
            response, took = post(model, True)
            payloads = sse_payloads(response.content)
            assert b"chat.completion.chunk" in payloads[0], model
            assert payloads[-1] == b"[DONE]" and json.loads(payloads[-2])["error"]["code"] == "upstream_timeout"
            assert took < 1.5, (model, took)
    day = time.strftime("%Y-%m-%d", time.gmtime())
    usage = asyncio.run(running.app.runtime.ledger.usage("tester", day))
    assert usage["t-idle"]["requests"] == 1 and usage["t-total"]["requests"] == 1  # what was delivered counts


def test_an_http_1_0_stream_comes_whole_with_its_length(gateway: RunningGateway) -> None:
    body = json.dumps({"model": "echo", "stream": True, "messages": USER}).encode()
    port = int(gateway.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.0\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {CLIENT_KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, payload = raw.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head.lower() and b"content-length: %d" % len(payload) in head.lower()
    assert payload.endswith(b"data: [DONE]\n\n") and sse_payloads(payload)[0].startswith(b'{"id"')


def test_disconnect_watches_of_a_loop_that_ended_are_not_started_on_the_next() -> None:
    from gateway.http.relayed import _DisconnectWatcher, _Watchers

    watchers = _Watchers()
    started: list[_DisconnectWatcher] = []

    class Recorded(_DisconnectWatcher):
        def start(self) -> None:
            started.append(self)

    async def one_request() -> _DisconnectWatcher:
        async def receive() -> dict[str, str]:
            await asyncio.sleep(60)
            return {"type": "http.disconnect"}

        return Recorded(receive, watchers)

    left_behind = asyncio.run(one_request())  # its loop ended with the request still running
    current: list[_DisconnectWatcher] = []

    async def next_loop() -> None:
        current.append(await one_request())
        await asyncio.sleep(_Watchers.WATCH_AFTER * 2.5)

    asyncio.run(next_loop())
    assert started == current and left_behind not in started
