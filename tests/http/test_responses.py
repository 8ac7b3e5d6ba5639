"""`POST /v1/responses` (OpenAI's Responses API) with the official `openai` SDK: to an OpenAI-compatible
upstream that has no Responses API (create and stream, with a function tool round trip, and the state
a stateless translation refuses), and to upstreams that have it (passed through, state included)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from gateway.config import parse_config
from tests.conftest import CLIENT_KEY, RunningGateway, sdk
from tests.support.fake_openai import UPSTREAM_KEY, FakeOpenAI
from tests.support.spec import Checker


def _deep(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels):
        value = {"a": value}
    return value


TOOLS: list[Any] = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
]


def test_create_with_a_function_tool_round_trip(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    first = client.responses.create(
        model="fake-tool-caller", instructions="Use tools.", input="Weather in Paris?", tools=TOOLS, store=False
    )
    calls = [item for item in first.output if item.type == "function_call"]
    assert first.status == "completed" and len(calls) == 1
    assert calls[0].name == "get_weather" and json.loads(calls[0].arguments) == {"city": "Paris"}
    sent = fake.requests[-1].body
    assert sent["messages"][0] == {"role": "system", "content": "Use tools."}
    assert sent["tools"][0]["function"]["name"] == "get_weather"

    second = client.responses.create(
        model="fake-tool-caller",
        input=[
            {"role": "user", "content": "Weather in Paris?"},
            {
                "type": "function_call",
                "call_id": calls[0].call_id,
                "name": "get_weather",
                "arguments": calls[0].arguments,
            },
            {"type": "function_call_output", "call_id": calls[0].call_id, "output": "18C and sunny"},
        ],
        tools=TOOLS,
        store=False,
    )
    assert second.output_text == "The tool said: 18C and sunny"
    assert second.usage is not None and second.usage.input_tokens == 30 and second.usage.output_tokens == 9
    messages = fake.requests[-1].body["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool"]
    assert messages[1]["tool_calls"][0]["id"] == calls[0].call_id


def test_stream_with_a_function_tool_round_trip(client: openai.OpenAI) -> None:
    with client.responses.stream(model="fake-tool-caller", input="Weather?", tools=TOOLS, store=False) as stream:
        kinds = [event.type for event in stream]
        first = stream.get_final_response()
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert "response.function_call_arguments.delta" in kinds and "response.output_item.done" in kinds
    call = next(item for item in first.output if item.type == "function_call")
    assert json.loads(call.arguments) == {"city": "Paris"}
    follow_up = [
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "rain"},
    ]
    with client.responses.stream(model="fake-tool-caller", input=follow_up, tools=TOOLS, store=False) as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text == "The tool said: rain"
    assert final.usage is not None and final.usage.total_tokens == 39


@pytest.mark.parametrize("model", ["gpt-test", "echo"])
def test_plain_text_and_json_schema_output(client: openai.OpenAI, fake: FakeOpenAI, model: str) -> None:
    reply = client.responses.create(
        model=model,
        input="hello brave new world",
        max_output_tokens=50,
        reasoning={"effort": "low"},
        text={"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}},
        store=False,
    )
    assert "brave" in reply.output_text and reply.usage is not None
    if model == "gpt-test":
        sent = fake.requests[-1].body
        assert sent["max_completion_tokens"] == 50 and sent["response_format"]["type"] == "json_schema"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "gpt-test", "input": "x", "store": True}, "store"),
        ({"model": "gpt-test", "input": "x", "store": False, "previous_response_id": "resp_1"}, "previous_response_id"),
        ({"model": "gpt-test", "input": "x", "store": False, "previous_response_id": 7}, "previous_response_id"),
        ({"model": "gpt-test", "input": "x", "store": "yes"}, "store"),
        ({"model": "gpt-test", "input": "x", "store": False, "text": _deep(300)}, "text"),
        ({"model": "gpt-test", "input": "x", "store": False, "metadata": _deep(300)}, "metadata"),
        ({"model": "gpt-test", "store": False}, "input"),
        ({"model": "gpt-test", "input": [{"type": "file_search_call"}], "store": False}, "input[0].type"),
        ({"model": "gpt-test", "input": "x", "store": False, "tools": [{"type": "web_search"}]}, "tools[0]"),
    ],
)
def test_what_a_stateless_gateway_refuses_is_a_400_naming_it(
    raw: httpx.Client, body: dict[str, Any], param: str
) -> None:
    reply = raw.post("/v1/responses", json=body)
    assert reply.status_code == 400 and reply.json()["error"]["param"] == param, reply.text


def test_usage_lands_in_the_ledger_under_the_responses_endpoint(client: openai.OpenAI, gateway: RunningGateway) -> None:
    client.responses.create(model="fake-tool-caller", input="Weather?", tools=TOOLS, store=False)
    day = time.strftime("%Y-%m-%d", time.gmtime())
    usage = asyncio.run(gateway.app.runtime.ledger.usage("tester", day))["fake-tool-caller"]
    assert usage["requests"] == 1 and usage["prompt_tokens"] == 30 and usage["completion_tokens"] == 9
    gateway.app.runtime.flush_observers()
    assert 'gateway_requests_total{endpoint="responses"' in httpx.get(f"{gateway.url}/metrics").text


@pytest.fixture
def native_gateway(start_gateway: Callable[..., RunningGateway], fake_url: str, fake: FakeOpenAI) -> RunningGateway:
    """OpenAI (its profile has the Responses API), a vLLM upstream that says it has it too, and an
    OpenAI upstream configured as chat only."""
    up = f"base_url: '{fake_url}/v1', api_key: {UPSTREAM_KEY}"
    config = f"""
keys: [{{name: tester, key: {CLIENT_KEY}}}]
upstreams:
  - {{name: openai, dialect: openai, vendor: openai, {up}}}
  - {{name: vllm, dialect: openai, vendor: vllm, responses_api: true, {up}}}
  - {{name: chat-only, dialect: openai, vendor: openai, responses_api: false, {up}}}
models:
  - {{name: gpt-native, upstream: openai, upstream_model: gpt-5}}
  - {{name: vllm-native, upstream: vllm, upstream_model: qwen3}}
  - {{name: gpt-chat-only, upstream: chat-only, upstream_model: ok}}
  - {{name: gpt-broken, upstream: openai, upstream_model: fake-status-500}}
  - {{name: gpt-mixed, upstream: chat-only, upstream_model: ok, weight: 1000}}
  - {{name: gpt-mixed, upstream: openai, upstream_model: gpt-5, weight: 0.001}}
"""
    return start_gateway(parse_config(config))


@pytest.mark.parametrize("model", ["gpt-native", "vllm-native"])
def test_native_upstream_keeps_state_through_the_gateway(
    native_gateway: RunningGateway, checker: Checker, fake: FakeOpenAI, model: str
) -> None:
    """To an upstream with the Responses API the body goes through as sent: `store` and
    `previous_response_id` are the upstream's to keep, and the typed events come back as sent."""
    client = sdk(native_gateway.url, checker)
    first = client.responses.create(model=model, input="first", store=True, metadata={"team": "a"})
    assert fake.requests[-1].path == "/v1/responses"
    sent = fake.requests[-1].body
    assert sent["model"] in ("gpt-5", "qwen3") and sent["store"] is True and sent["metadata"] == {"team": "a"}
    assert first.output_text == "You said: first" and first.store is True
    assert first.usage is not None and first.usage.input_tokens_details.cached_tokens == 4

    with client.responses.stream(model=model, input="second", previous_response_id=first.id) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text == "You said: second (after: first)"
    assert fake.requests[-1].body["previous_response_id"] == first.id

    with pytest.raises(openai.NotFoundError) as caught:  # the upstream's own 404, relayed as one
        client.responses.create(model=model, input="x", previous_response_id="resp_unknown")
    assert caught.value.body["param"] == "previous_response_id"  # type: ignore[index]
    assert checker.checked >= 3


def test_native_upstream_usage_lands_in_the_ledger(native_gateway: RunningGateway, checker: Checker) -> None:
    client = sdk(native_gateway.url, checker)
    client.responses.create(model="gpt-native", input="count me", store=False)
    list(client.responses.create(model="gpt-native", input="and me", store=False, stream=True))
    day = time.strftime("%Y-%m-%d", time.gmtime())
    usage = asyncio.run(native_gateway.app.runtime.ledger.usage("tester", day))["gpt-native"]
    assert usage["requests"] == 2 and usage["prompt_tokens"] == 28 and usage["completion_tokens"] == 18
    assert usage["cached_tokens"] == 8


def test_native_upstream_failure_is_an_openai_error(native_gateway: RunningGateway, checker: Checker) -> None:
    client = sdk(native_gateway.url, checker)
    with pytest.raises(openai.APIStatusError) as caught:
        client.responses.create(model="gpt-broken", input="x")
    assert caught.value.status_code == 502


def test_state_to_a_chat_only_upstream_is_refused(native_gateway: RunningGateway, checker: Checker) -> None:
    client = sdk(native_gateway.url, checker)
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="gpt-chat-only", input="x", store=True)
    assert caught.value.body["param"] == "store"  # type: ignore[index]
    reply = client.responses.create(model="gpt-chat-only", input="x", store=False)
    assert reply.status == "completed"


def test_state_goes_to_the_deployment_that_can_keep_it(
    native_gateway: RunningGateway, checker: Checker, fake: FakeOpenAI
) -> None:
    """A model served both ways: stateless requests may go either way (here, by weight, to chat);
    `store: true` and `previous_response_id` go only where the upstream keeps state."""
    client = sdk(native_gateway.url, checker)
    client.responses.create(model="gpt-mixed", input="x", store=False)
    assert fake.requests[-1].path == "/v1/chat/completions"
    first = client.responses.create(model="gpt-mixed", input="first", store=True)
    assert fake.requests[-1].path == "/v1/responses"
    second = client.responses.create(model="gpt-mixed", input="second", previous_response_id=first.id)
    assert second.output_text == "You said: second (after: first)"
