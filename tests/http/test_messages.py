"""`POST /v1/messages` (Anthropic's Messages API in) with the official `anthropic` SDK, to an Anthropic
upstream: buffered and streamed, tools and thinking, every event the SDK parses, errors in Anthropic's
shape, the key from `x-api-key`, usage in the ledger; and to OpenAI-compatible upstreams, translated."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import anthropic
import httpx
import pytest

from tests.conftest import CLIENT_KEY, RunningGateway
from tests.support.fake_anthropic import ANTHROPIC_KEY, COUNTED_BASE, FakeAnthropic
from tests.support.fake_openai import FakeOpenAI

USER = [{"role": "user", "content": "Hello"}]


@pytest.fixture
def claude(gateway: RunningGateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key=CLIENT_KEY, base_url=gateway.url, max_retries=0)


def test_a_buffered_message_with_tools_comes_back_as_the_upstream_sent_it(
    claude: anthropic.Anthropic, anthropic: FakeAnthropic
) -> None:
    tools = [{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object"}}]
    message = claude.messages.create(model="claude-tools", max_tokens=100, messages=USER, tools=tools)  # type: ignore[arg-type]
    assert message.stop_reason == "tool_use"
    assert [b.type for b in message.content] == ["text", "tool_use", "tool_use"]
    assert message.content[1].input == {"city": "Paris", "unit": "c"}  # type: ignore[union-attr]
    seen = anthropic.requests[-1]
    assert seen.headers["x-api-key"] == ANTHROPIC_KEY and seen.body["tools"] == tools  # the client's key stays here
    assert seen.body["model"] == "claude-tools" and seen.body["max_tokens"] == 100


def test_a_streamed_message_with_thinking_has_every_event(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(
        model="claude-thinking",
        max_tokens=2048,
        messages=USER,
        thinking={"type": "enabled", "budget_tokens": 1024},
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert {"content_block_start", "content_block_delta", "content_block_stop", "message_delta"} <= set(kinds)
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[1].text == "Hi! Nice to meet you."  # type: ignore[union-attr]
    assert final.usage.output_tokens == 30


def test_errors_are_anthropic_shaped(claude: anthropic.Anthropic, gateway: RunningGateway) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        claude.messages.create(model="no-such-model", max_tokens=10, messages=USER)
    assert missing.value.body["type"] == "error"  # type: ignore[index]
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(api_key="sk-wrong", base_url=gateway.url, max_retries=0).messages.create(
            model="claude-text", max_tokens=10, messages=USER
        )
    bad = httpx.post(
        f"{gateway.url}/v1/messages", headers={"x-api-key": CLIENT_KEY}, json={"model": "claude-text", "messages": USER}
    )
    assert bad.status_code == 400
    assert bad.json() == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "Missing required parameter: 'max_tokens'."},
    }
    with pytest.raises(anthropic.BadRequestError) as unsupported:  # a block type chat cannot carry
        claude.messages.create(
            model="gpt-test",
            max_tokens=10,
            messages=[{"role": "user", "content": [{"type": "document"}]}],  # type: ignore[list-item]
        )
    assert "messages[0].content[0].type" in unsupported.value.message


def test_an_upstream_failure_mid_stream_ends_with_an_error_event(claude: anthropic.Anthropic) -> None:
    with (
        pytest.raises(anthropic.APIStatusError) as failed,
        claude.messages.stream(model="claude-error-after-200", max_tokens=10, messages=USER) as stream,
    ):
        for _ in stream:
            pass
    assert "Overloaded" in str(failed.value)


def test_usage_lands_in_the_ledger(claude: anthropic.Anthropic, gateway: RunningGateway) -> None:
    claude.messages.create(model="claude-text", max_tokens=100, messages=USER)
    with claude.messages.stream(model="claude-text", max_tokens=100, messages=USER) as stream:
        stream.until_done()
    day = time.strftime("%Y-%m-%d", time.gmtime())
    usage = asyncio.run(gateway.app.runtime.ledger.usage("tester", day))["claude-text"]
    assert usage["requests"] == 2 and usage["completion_tokens"] == 60


@pytest.mark.parametrize("model", ["gpt-test", "echo"])
def test_an_openai_compatible_model_answers_in_anthropic_shapes(
    claude: anthropic.Anthropic, fake: FakeOpenAI, model: str
) -> None:
    message = claude.messages.create(
        model=model,
        max_tokens=50,
        system="Be brief.",
        messages=[{"role": "user", "content": "hello brave new world"}],
        stop_sequences=["END"],
        metadata={"user_id": "u-1"},
    )
    assert message.type == "message" and message.role == "assistant" and message.stop_reason == "end_turn"
    assert message.content[0].type == "text" and "brave" in message.content[0].text  # type: ignore[union-attr]
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    if model == "gpt-test":
        sent = fake.requests[-1].body
        assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
        assert sent["stop"] == ["END"] and sent["user"] == "u-1" and sent["model"] == "ok"
    with claude.messages.stream(model=model, max_tokens=50, messages=USER) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop" and "content_block_delta" in kinds
    assert final.content[0].text == "Hello" and final.usage.output_tokens > 0  # type: ignore[union-attr]


@pytest.mark.parametrize("model", ["claude-text", "gpt-test"])
def test_count_tokens_from_anthropic_upstreams_estimated_for_others(
    claude: anthropic.Anthropic, anthropic_server: tuple[FakeAnthropic, Any], model: str
) -> None:
    text = "word " * 400  # 2,000 characters: about 500 tokens
    response = claude.messages.with_raw_response.count_tokens(
        model=model, system="Be brief.", messages=[{"role": "user", "content": text}]
    )
    counted = response.parse()
    if model == "claude-text":  # Anthropic's own count, asked of the upstream with what it counts
        assert counted.input_tokens == COUNTED_BASE + 10
        assert response.headers["x-gateway-token-count"] == "upstream"
        sent = anthropic_server[0].requests[-1]
        assert sent.body["system"] == "Be brief." and sent.headers["x-api-key"] == ANTHROPIC_KEY
    else:
        assert 450 <= counted.input_tokens <= 560
        assert response.headers["x-gateway-token-count"] == "estimate"
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.count_tokens(model="no-such-model", messages=USER)
    with pytest.raises(anthropic.BadRequestError):
        claude.messages.count_tokens(model=model, messages=[{"role": "robot", "content": "x"}])  # type: ignore[list-item,typeddict-item]


def test_count_tokens_takes_a_whole_messages_body(claude: anthropic.Anthropic, gateway: RunningGateway) -> None:
    """Clients count the body they are about to send: the fields Anthropic's count refuses
    (`max_tokens`, `stream`, `temperature`, ...) are not sent to it."""
    body = {"model": "claude-text", "max_tokens": 64, "stream": True, "temperature": 0.5, "metadata": {"user_id": "u"},
            "messages": USER}  # fmt: skip
    reply = httpx.post(f"{gateway.url}/v1/messages/count_tokens", headers={"x-api-key": CLIENT_KEY}, json=body)
    assert reply.status_code == 200 and reply.json() == {"input_tokens": COUNTED_BASE + 10}


@pytest.mark.parametrize(
    ("headers", "body", "status"),
    [
        ({"x-api-key": CLIENT_KEY}, {"model": "nope", "messages": USER}, 404),
        ({"x-api-key": "sk-wrong"}, {"model": "claude-text", "messages": USER}, 401),
        ({"x-api-key": CLIENT_KEY}, {"model": "claude-text", "messages": "hi"}, 400),
        ({"x-api-key": CLIENT_KEY}, {"model": "claude-status-400", "messages": USER}, 400),
    ],
)
def test_count_tokens_errors_are_anthropic_shaped(
    gateway: RunningGateway, headers: dict[str, str], body: dict[str, Any], status: int
) -> None:
    reply = httpx.post(f"{gateway.url}/v1/messages/count_tokens", headers=headers, json=body)
    assert reply.status_code == status
    error = reply.json()
    assert error["type"] == "error" and set(error["error"]) == {"type", "message"}, error


@pytest.mark.parametrize(("status", "client_status"), [(400, 400), (500, 200), (401, 200)])
def test_count_tokens_when_the_upstream_cannot_count(
    claude: anthropic.Anthropic, status: int, client_status: int
) -> None:
    """The upstream's verdict on the client's body is the client's; its own failure is not, and the
    estimate answers instead."""
    response = claude.messages.with_raw_response.count_tokens if client_status == 200 else None
    model = f"claude-status-{status}"
    if response is None:
        with pytest.raises(anthropic.BadRequestError, match="fake upstream says 400"):
            claude.messages.count_tokens(model=model, messages=USER)
        return
    reply = response(model=model, messages=USER)
    assert reply.headers["x-gateway-token-count"] == "estimate" and reply.parse().input_tokens >= 1


def test_odd_bodies_are_400s_never_500s(gateway: RunningGateway) -> None:
    deep: dict[str, object] = {}
    for _ in range(300):
        deep = {"a": deep}
    cases = [
        ("/v1/messages/count_tokens", [{"role": "user", "content": [{"type": "tool_use", "input": deep}]}]),
        ("/v1/messages", [{"role": "user", "content": [{"type": "image", "source": {"type": "base64"}}]}]),
        (
            "/v1/messages",
            [{"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "n", "input": deep}]}],
        ),
    ]
    for (path, messages), model in itertools.product(cases, ("gpt-test", "claude-text")):
        reply = httpx.post(
            f"{gateway.url}{path}",
            headers={"x-api-key": CLIENT_KEY},
            json={"model": model, "max_tokens": 5, "messages": messages, "metadata": {"deep": deep}},
        )
        assert reply.status_code == 400, (path, model, reply.text)
