"""The Anthropic dialect, pure: request goldens, reply and stream decoding, usage arithmetic."""

from __future__ import annotations

import json
import re
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import ModelOptions, UpstreamConfig
from gateway.dialects.anthropic import AnthropicDialect, messages_body
from gateway.dialects.base import Target, Usage
from gateway.errors import UpstreamProtocolError, UpstreamStatusError
from gateway.request import check_chat_body
from tests.conftest import GOLDEN
from tests.support.spec import assert_valid

DIALECT = AnthropicDialect()
UPSTREAM = UpstreamConfig(name="claude", dialect="anthropic", base_url="https://api.anthropic.com/v1", api_key="sk-a")
STREAM = (GOLDEN / "anthropic" / "stream_thinking_tools.sse").read_bytes()
REPLY = (GOLDEN / "anthropic" / "reply_thinking_tools.json").read_bytes()
USER = [{"role": "user", "content": "Weather and time in Paris?"}]


def _request(**extra: Any) -> Any:
    return check_chat_body({"model": "claude-sonnet-4-5", "messages": USER, **extra})


def _target(**options: Any) -> Target:
    return Target(UPSTREAM, "claude-sonnet-4-5-20250929", ModelOptions(**options))


def _decode(pieces: list[bytes], include_usage: bool = True) -> list[bytes]:
    request = _request(stream=True, **({"stream_options": {"include_usage": True}} if include_usage else {}))
    decoder = DIALECT.stream_decoder(request)
    out: list[bytes] = []
    for piece in pieces:
        out += decoder.feed(piece)
    # `created` is the decoder's clock (Anthropic sends none): fixed, so two decodes compare equal.
    return [re.sub(rb'"created":\d+', b'"created":0', event) for event in out + decoder.finish()]


def _assemble(events: list[bytes]) -> dict[str, Any]:
    """What a client accumulates from the chunks, the way the openai SDK merges deltas."""
    content, reasoning, calls, signatures, finish, usage = "", "", {}, [], None, None
    for event in events[:-1]:
        chunk = json.loads(event[6:])
        assert_valid("CreateChatCompletionStreamResponse", chunk)
        usage = chunk.get("usage") or usage
        for choice in chunk["choices"]:
            delta = choice["delta"]
            content += delta.get("content") or ""
            reasoning += delta.get("reasoning_content") or ""
            signatures += [b["signature"] for b in delta.get("thinking_blocks", []) if "signature" in b]
            for call in delta.get("tool_calls", []):
                slot = calls.setdefault(call["index"], {"id": None, "name": None, "arguments": ""})
                slot["id"] = call.get("id") or slot["id"]
                slot["name"] = (call.get("function") or {}).get("name") or slot["name"]
                slot["arguments"] += (call.get("function") or {}).get("arguments") or ""
            finish = choice["finish_reason"] or finish
    return {
        "content": content,
        "reasoning": reasoning,
        "signatures": signatures,
        "finish": finish,
        "usage": usage,
        "calls": [(c["id"], c["name"], json.loads(c["arguments"])) for _, c in sorted(calls.items())],
    }


def test_stream_golden_assembles_like_the_buffered_reply() -> None:
    streamed = _assemble(_decode([STREAM]))
    reply = json.loads(DIALECT.decode_reply(REPLY, _request()).body)
    assert_valid("CreateChatCompletionResponse", reply)
    message = reply["choices"][0]["message"]
    buffered_calls = [
        (c["id"], c["function"]["name"], json.loads(c["function"]["arguments"])) for c in message["tool_calls"]
    ]
    assert (
        streamed["calls"]
        == buffered_calls
        == [
            ("toolu_01A", "get_weather", {"city": "Paris", "unit": "c"}),
            ("toolu_01B", "get_time", {"tz": "Europe/Paris"}),
        ]
    )
    assert streamed["content"] == message["content"] == "Checking now."
    assert streamed["reasoning"] == message["reasoning_content"] == "Two lookups are needed."
    assert streamed["signatures"] == [b["signature"] for b in message["thinking_blocks"]] == ["EqQBCgIYAhIMsig"]
    assert streamed["finish"] == reply["choices"][0]["finish_reason"] == "tool_calls"
    assert streamed["usage"] == reply["usage"]


def test_usage_arithmetic_with_cache_reads_and_writes() -> None:
    decoded = DIALECT.decode_reply(REPLY, _request())
    assert json.loads(decoded.body)["usage"] == {
        "prompt_tokens": 130,  # input 10 + cache read 100 + cache write 20
        "completion_tokens": 30,
        "total_tokens": 160,
        "prompt_tokens_details": {"cached_tokens": 100, "cache_write_tokens": 20},
    }
    assert decoded.usage == Usage(130, 30, 160, 100, 0, None, cache_write_tokens=20)
    decoder = DIALECT.stream_decoder(_request(stream=True))
    decoder.feed(STREAM)
    # Output from message_delta, cumulative.
    assert decoder.usage == Usage(130, 30, 160, 100, 0, None, cache_write_tokens=20)


def test_stream_split_at_every_byte_boundary_decodes_identically() -> None:
    whole = _decode([STREAM])
    for cut in range(1, len(STREAM)):
        assert _decode([STREAM[:cut], STREAM[cut:]]) == whole, cut


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=len(STREAM) - 1), max_size=20), st.booleans())
def test_stream_any_split_and_line_ending_decodes_identically(cuts: list[int], crlf: bool) -> None:
    stream = STREAM.replace(b"\n", b"\r\n") if crlf else STREAM
    points = sorted({min(len(stream) - 1, int(c * len(stream) / len(STREAM))) for c in cuts})
    pieces = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    assert _decode(pieces) == _decode([STREAM])


def test_usage_chunk_only_when_asked() -> None:
    without = [json.loads(e[6:]) for e in _decode([STREAM], include_usage=False)[:-1]]
    assert all(c["choices"] and "usage" not in c for c in without)
    with_usage = [json.loads(e[6:]) for e in _decode([STREAM])[:-1]]
    assert with_usage[-1]["choices"] == [] and with_usage[-1]["usage"]["total_tokens"] == 160


def test_stream_cut_before_message_stop_is_a_protocol_error() -> None:
    decoder = DIALECT.stream_decoder(_request(stream=True))
    decoder.feed(STREAM[: STREAM.index(b"event: message_delta")])
    with pytest.raises(UpstreamProtocolError):
        decoder.finish()


def test_error_event_raises() -> None:
    decoder = DIALECT.stream_decoder(_request(stream=True))
    event = b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n'
    with pytest.raises(UpstreamStatusError) as info:
        decoder.feed(STREAM[: STREAM.index(b"event: content_block_start")] + event)
    assert info.value.status == 503 and "Overloaded" in info.value.message


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "length"),
        (None, "stop"),
    ],
)
def test_stop_reasons(stop_reason: str | None, finish: str) -> None:
    reply = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "c",
        "content": [],
        "stop_reason": stop_reason,
        "usage": {"input_tokens": 1, "output_tokens": 1},
    }
    assert (
        json.loads(DIALECT.decode_reply(orjson.dumps(reply), _request()).body)["choices"][0]["finish_reason"] == finish
    )


def test_request_golden() -> None:
    request = _request(
        messages=[{"role": "system", "content": "Be brief."}, *USER],
        max_completion_tokens=8000,
        reasoning_effort="high",
        tools=[
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                },
            }
        ],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        top_p=0.9,
        n=2,
        logprobs=True,
    )
    body, dropped = messages_body(request, _target())
    assert body == {
        "model": "claude-sonnet-4-5-20250929",
        "max_tokens": 8000,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Weather and time in Paris?"}]}],
        "system": [{"type": "text", "text": "Be brief."}],
        "thinking": {"type": "enabled", "budget_tokens": 4096},  # effort high -> 4096, as peers map it
        "tools": [
            {"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}
        ],
        "tool_choice": {"type": "tool", "name": "get_weather"},
    }
    assert dropped == ["n", "logprobs", "top_p"]  # top_p goes because thinking is on


@pytest.mark.parametrize(
    ("extra", "options", "thinking", "dropped"),
    [
        ({"enable_thinking": True}, {}, {"type": "enabled", "budget_tokens": 2048}, []),
        ({"thinking": {"budget_tokens": 500}}, {}, {"type": "enabled", "budget_tokens": 1024}, []),  # >= 1024
        ({"thinking": {"budget_tokens": 9000}, "max_tokens": 3000}, {}, {"type": "enabled", "budget_tokens": 2999}, []),
        ({"enable_thinking": True, "max_tokens": 1000}, {}, None, ["thinking"]),  # no room below max_tokens
        ({"reasoning_effort": "medium"}, {"thinking": "adaptive"}, {"type": "adaptive"}, []),
        ({"enable_thinking": False, "thinking": {"budget_tokens": 4000}}, {}, None, []),
    ],
)
def test_thinking_rules(extra: dict[str, Any], options: dict[str, Any], thinking: Any, dropped: list[str]) -> None:
    body, got_dropped = messages_body(_request(**extra), _target(**options))
    assert body.get("thinking") == thinking
    assert got_dropped == dropped


def test_adaptive_effort_and_json_mode_forced_tool() -> None:
    body, _ = messages_body(_request(reasoning_effort="minimal"), _target(thinking="adaptive"))
    assert body["output_config"] == {"effort": "low"}
    body, _ = messages_body(_request(json_mode=True), _target())
    assert body["tool_choice"] == {"type": "tool", "name": "json_tool_call"}
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    body, _ = messages_body(
        _request(response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}), _target()
    )
    assert body["tools"][-1]["input_schema"] == schema


def test_headers_and_url() -> None:
    built = DIALECT.build_request(_request(), _target())
    assert built.url == "https://api.anthropic.com/v1/messages"
    assert built.headers["x-api-key"] == "sk-a" and built.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in built.headers
