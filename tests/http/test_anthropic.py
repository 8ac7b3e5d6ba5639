"""Anthropic-backed models end to end: the openai SDK in front, the fake Messages API behind."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from tests.support.fake_anthropic import ANTHROPIC_KEY, FakeAnthropic
from tests.support.spec import Checker, check_exchange, sse_payloads

USER = [{"role": "user", "content": "Hello"}]
TOOLS: Any = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                      "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}},
]  # fmt: skip


def _text(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_text_buffered_and_streamed_with_usage_arithmetic(client: openai.OpenAI, checker: Checker) -> None:
    reply = client.chat.completions.create(model="claude-text", messages=USER)
    assert reply.choices[0].message.content == "Hello there, how can I help?"
    assert reply.choices[0].finish_reason == "stop"
    usage = reply.usage
    assert usage is not None
    # input 10 + cache read 100 + cache write 20 (Anthropic's input_tokens excludes cached tokens)
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (130, 30, 160)
    assert usage.prompt_tokens_details is not None and usage.prompt_tokens_details.cached_tokens == 100
    assert usage.prompt_tokens_details.cache_write_tokens == 20  # the spec's field for cache writes

    chunks = list(
        client.chat.completions.create(
            model="claude-text", messages=USER, stream=True, stream_options={"include_usage": True}
        )
    )
    assert _text(chunks) == "Hello there, how can I help?"
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (130, 30, 160)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert checker.checked == 1 + len(chunks)


def test_request_translation(client: openai.OpenAI, anthropic: FakeAnthropic) -> None:
    messages: Any = [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "text", "text": "Use metric units."}]},
        {"role": "user", "content": [
            {"type": "text", "text": "What is in this picture?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
        ]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "-3 C"},
        {"role": "user", "content": "And now?"},
    ]  # fmt: skip
    response = client.chat.completions.with_raw_response.create(
        model="claude-text",
        messages=messages,
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        stop="END",
        user="u-42",
        temperature=1.7,
        max_tokens=300,
        n=1,
        seed=7,
    )
    assert response.headers["x-gateway-dropped-params"] == "seed"
    seen = anthropic.requests[-1]
    assert seen.headers["x-api-key"] == ANTHROPIC_KEY and seen.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in seen.headers
    body = seen.body
    assert body["system"] == [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Use metric units."}]
    assert body["max_tokens"] == 300 and body["temperature"] == 1.0
    assert body["stop_sequences"] == ["END"] and body["metadata"] == {"user_id": "u-42"}
    assert body["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert body["tools"][0] == {
        "name": "get_weather",
        "description": "Weather in a city",
        "input_schema": TOOLS[0]["function"]["parameters"],
    }
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    images = body["messages"][0]["content"][1:]
    assert images == [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]
    assert body["messages"][1]["content"] == [
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Oslo"}}
    ]
    assert body["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "call_1", "content": "-3 C"},
        {"type": "text", "text": "And now?"},
    ]


def test_streamed_tool_calls_assemble_like_buffered(client: openai.OpenAI, checker: Checker) -> None:
    buffered = client.chat.completions.create(model="claude-tools", messages=USER, tools=TOOLS)
    choice = buffered.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me check both."
    calls = [(c.id, c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls or []]
    assert calls == [
        ("toolu_01A", "get_weather", {"city": "Paris", "unit": "c"}),
        ("toolu_01B", "get_time", {"tz": "Europe/Paris"}),
    ]

    with client.chat.completions.stream(model="claude-tools", messages=USER, tools=TOOLS) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    streamed = final.choices[0]
    assert streamed.finish_reason == "tool_calls"
    assert streamed.message.content == "Let me check both."
    assert [
        (c.id, c.function.name, json.loads(c.function.arguments)) for c in streamed.message.tool_calls or []
    ] == calls


def test_streamed_tool_call_deltas_carry_integer_index(raw: httpx.Client) -> None:
    response = raw.post(
        "/v1/chat/completions", json={"model": "claude-tools", "messages": USER, "tools": TOOLS, "stream": True}
    )
    deltas = [json.loads(p)["choices"][0]["delta"] for p in sse_payloads(response.content)[:-1]]
    tool_deltas = [t for d in deltas for t in d.get("tool_calls", [])]
    assert len(tool_deltas) > 4  # arguments arrive in pieces
    assert {t["index"] for t in tool_deltas} == {0, 1}
    assert all(isinstance(t["index"], int) for t in tool_deltas)


def test_thinking_reasoning_content_and_signature_round_trip(client: openai.OpenAI, anthropic: FakeAnthropic) -> None:
    reply = client.chat.completions.create(
        model="claude-thinking", messages=USER, max_tokens=4000, extra_body={"thinking": {"budget_tokens": 2048}}
    )
    message: Any = reply.choices[0].message
    assert message.content == "Hi! Nice to meet you."
    assert message.reasoning_content == "The user greets me. I should answer."
    assert message.thinking_blocks == [
        {
            "type": "thinking",
            "thinking": "The user greets me. I should answer.",
            "signature": "EqQBCgIYAhIM1gbcDa9GJwZA",
        }
    ]
    assert anthropic.requests[-1].body["thinking"] == {"type": "enabled", "budget_tokens": 2048}

    with client.chat.completions.stream(
        model="claude-thinking", messages=USER, extra_body={"enable_thinking": True}
    ) as stream:
        for _ in stream:
            pass
        final: Any = stream.get_final_completion().choices[0].message
    assert final.content == "Hi! Nice to meet you."
    assert final.reasoning_content == "The user greets me. I should answer."
    assert final.thinking_blocks == [{"index": 0, "type": "thinking", "signature": "EqQBCgIYAhIM1gbcDa9GJwZA"}]

    # The next turn sends the assistant message back as the SDK assembled it: the signed block returns.
    follow_up: Any = [*USER, final.model_dump(exclude_none=True), {"role": "user", "content": "Thanks"}]
    client.chat.completions.create(model="claude-thinking", messages=follow_up, extra_body={"enable_thinking": True})
    sent = anthropic.requests[-1].body["messages"][1]["content"]
    assert sent[0] == {
        "type": "thinking",
        "thinking": "The user greets me. I should answer.",
        "signature": "EqQBCgIYAhIM1gbcDa9GJwZA",
    }
    assert sent[1] == {"type": "text", "text": "Hi! Nice to meet you."}


def test_adaptive_thinking_model_gets_effort(client: openai.OpenAI, anthropic: FakeAnthropic) -> None:
    client.chat.completions.create(model="claude-adaptive", messages=USER, reasoning_effort="xhigh")
    body = anthropic.requests[-1].body
    assert body["thinking"] == {"type": "adaptive"}
    assert body["output_config"] == {"effort": "high"}  # clamped to what this model's config allows
    assert "budget_tokens" not in body["thinking"]


@pytest.mark.parametrize("stream", [False, True])
def test_json_mode_through_forced_tool(
    client: openai.OpenAI, anthropic: FakeAnthropic, stream: bool, checker: Checker
) -> None:
    result: Any = client.chat.completions.create(
        model="claude-json", messages=USER, stream=stream, extra_body={"json_mode": True}
    )
    if stream:
        chunks = list(result)
        content = _text(chunks)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
    else:
        content, finish = result.choices[0].message.content, result.choices[0].finish_reason
    assert json.loads(content) == {"answer": 42, "ok": True}
    assert finish == "stop"
    body = anthropic.requests[-1].body
    assert body["tool_choice"] == {"type": "tool", "name": "json_tool_call"}
    assert body["tools"][-1]["name"] == "json_tool_call"


def test_json_mode_with_thinking_asks_in_system_prompt(client: openai.OpenAI, anthropic: FakeAnthropic) -> None:
    client.chat.completions.create(
        model="claude-text", messages=USER, extra_body={"json_mode": True, "enable_thinking": True}
    )
    body = anthropic.requests[-1].body
    assert "tool_choice" not in body and "tools" not in body
    assert "JSON" in body["system"][-1]["text"]


def test_error_event_after_200(raw: httpx.Client, client: openai.OpenAI) -> None:
    response = raw.post(
        "/v1/chat/completions", json={"model": "claude-error-after-200", "messages": USER, "stream": True}
    )
    assert response.status_code == 200
    check_exchange("/v1/chat/completions", 200, response.headers["content-type"], response.content)
    payloads = sse_payloads(response.content)
    assert payloads[-1] == b"[DONE]"
    assert json.loads(payloads[-2])["error"]["message"].endswith("Overloaded")
    with pytest.raises(openai.APIError):
        list(client.chat.completions.create(model="claude-error-after-200", messages=USER, stream=True))


@pytest.mark.parametrize(("model", "status"), [("claude-status-529", 503), ("claude-status-400", 400)])
def test_upstream_error_statuses(client: openai.OpenAI, model: str, status: int) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model=model, messages=USER)
    assert info.value.status_code == status
    assert ANTHROPIC_KEY not in info.value.response.text
