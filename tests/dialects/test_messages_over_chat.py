"""Anthropic Messages to chat completions and back, without sockets: the request fields, the reply,
and the event sequence of a stream with thinking, text and two tool calls."""

from __future__ import annotations

import json

import pytest

from gateway.dialects.base import Usage
from gateway.dialects.messages_over_chat import MessageEvents, chat_body, message_of
from gateway.dialects.registry import CHAT, MESSAGES, TRANSLATORS
from gateway.errors import InvalidRequest
from gateway.protocol.messages import parse_messages_request

TOOL = {"name": "get_weather", "description": "Weather", "input_schema": {"type": "object", "properties": {}}}


def test_a_tool_round_trip_with_images_and_thinking_becomes_chat() -> None:
    body = chat_body(
        {
            "model": "m",
            "max_tokens": 100,
            "system": [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}],
            "tools": [TOOL],
            "tool_choice": {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
            "thinking": {"type": "enabled", "budget_tokens": 2048},
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Weather here?"},
                        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAA"}},
                    ],
                },
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "hm", "signature": "s"},
                        {"type": "text", "text": "Checking."},
                        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                    ],
                },
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"}]},
            ],
        }
    )
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Weather here?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA"}},
            ],
        },
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
    ]
    assert body["tools"] == [
        {
            "type": "function",
            "function": {"name": "get_weather", "parameters": TOOL["input_schema"], "description": "Weather"},
        }
    ]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["parallel_tool_calls"] is False and body["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert (
        chat_body({"model": "m", "max_tokens": 1, "messages": [], "tool_choice": {"type": "any"}})["tool_choice"]
        == "required"
    )


def test_blocks_chat_cannot_carry_are_400s_naming_them() -> None:
    with pytest.raises(InvalidRequest) as bad:
        chat_body({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [{"type": "document"}]}]})
    assert bad.value.param == "messages[0].content[0].type"


def test_a_reply_with_reasoning_and_tool_calls_becomes_a_message() -> None:
    completion = {
        "id": "chatcmpl-abc",
        "model": "m-2025",
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": "Let me look.",
                    "reasoning_content": "They want weather.",
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                        }
                    ],
                },
            }
        ],
    }
    message = message_of(completion, Usage(120, 30, 150, 100))
    assert message["id"] == "msg_abc" and message["stop_reason"] == "tool_use" and message["model"] == "m-2025"
    assert [b["type"] for b in message["content"]] == ["thinking", "text", "tool_use"]
    assert message["content"][2]["input"] == {"city": "Paris"}
    assert message["usage"] == {
        "input_tokens": 20,
        "cache_read_input_tokens": 100,
        "cache_creation_input_tokens": 0,
        "output_tokens": 30,
    }


def _chunk(delta: dict[str, object], finish: str | None = None) -> bytes:
    obj = {"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 1, "model": "m",
           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}  # fmt: skip
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def _usage_chunk() -> bytes:
    usage = {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}
    obj = {"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": []}
    return b"data: " + json.dumps({**obj, "usage": usage}).encode() + b"\n\n"


def test_a_stream_becomes_anthropic_s_event_sequence() -> None:
    body = {"model": "m", "max_tokens": 10, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    request = parse_messages_request(json.dumps(body).encode())
    chat = TRANSLATORS[(MESSAGES, "generic")].chat_request(request)  # type: ignore[attr-defined]
    events = MessageEvents(TRANSLATORS[(CHAT, "generic")].stream_decoder(chat), "m")
    wire = b"".join(
        [
            _chunk({"role": "assistant", "content": ""}),
            _chunk({"reasoning_content": "think"}),
            _chunk({"content": "Hi"}),
            _chunk(
                {
                    "tool_calls": [
                        {"index": 0, "id": "c1", "type": "function", "function": {"name": "a", "arguments": ""}}
                    ]
                }
            ),
            _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"x":'}}]}),
            _chunk({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}),
            _chunk(
                {
                    "tool_calls": [
                        {"index": 1, "id": "c2", "type": "function", "function": {"name": "b", "arguments": "{}"}}
                    ]
                }
            ),
            _chunk({}, "tool_calls"),
            _usage_chunk(),
            b"data: [DONE]\n\n",
        ]
    )
    out = b"".join(events.feed(wire) + events.finish())
    parsed = [
        (line.split(b"\n")[0][7:].decode(), json.loads(line.split(b"\n")[1][6:])) for line in out.strip().split(b"\n\n")
    ]
    names = [name for name, _ in parsed]
    assert names == [
        "message_start", "ping",
        "content_block_start", "content_block_delta", "content_block_stop",  # thinking
        "content_block_start", "content_block_delta", "content_block_stop",  # text
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",  # tool a
        "content_block_start", "content_block_delta", "content_block_stop",  # tool b
        "message_delta", "message_stop",
    ]  # fmt: skip
    assert all(data["type"] == name for name, data in parsed)
    starts = [data["content_block"] for name, data in parsed if name == "content_block_start"]
    assert [b["type"] for b in starts] == ["thinking", "text", "tool_use", "tool_use"]
    assert [data["index"] for name, data in parsed if name == "content_block_stop"] == [0, 1, 2, 3]
    delta = parsed[-2][1]
    assert delta["delta"]["stop_reason"] == "tool_use" and delta["usage"]["output_tokens"] == 7


def test_chat_chunks_relayed_whole_become_the_same_events_as_one_by_one() -> None:
    """The chat decoder relays a read of plain chunks as it came, several events to an element."""
    request = parse_messages_request(
        json.dumps({"model": "m", "max_tokens": 10, "stream": True, "messages": [{"role": "user", "content": "Hi"}]})
    )
    chunks = [_chunk({"role": "assistant", "content": ""}), _chunk({"content": "Hi"}), _chunk({"content": " there"}),
              _chunk({}, "stop"), _usage_chunk(), b"data: [DONE]\n\n"]  # fmt: skip

    def events(pieces: list[bytes]) -> bytes:
        chat = TRANSLATORS[(MESSAGES, "generic")].chat_request(request)  # type: ignore[attr-defined]
        decoder = MessageEvents(TRANSLATORS[(CHAT, "generic")].stream_decoder(chat), "m")
        return b"".join([e for piece in pieces for e in decoder.feed(piece)] + decoder.finish())

    whole = events([b"".join(chunks[:4]), *chunks[4:]])  # the text chunks in one read
    assert whole == events(chunks)
    assert whole.count(b"event: content_block_delta") == 2


def test_chunks_of_any_framing_and_types_keep_their_text() -> None:
    """Spaces around a chunk's JSON, and text fields an upstream got wrong, neither lose text nor fail."""
    request = parse_messages_request(
        json.dumps({"model": "m", "max_tokens": 10, "stream": True, "messages": [{"role": "user", "content": "Hi"}]})
    )
    chat = TRANSLATORS[(MESSAGES, "generic")].chat_request(request)  # type: ignore[attr-defined]
    decoder = MessageEvents(TRANSLATORS[(CHAT, "generic")].stream_decoder(chat), "m")
    wire = (
        _chunk({"role": "assistant", "content": ""})
        + b"data:  " + _chunk({"content": "Hello"})[6:]
        + _chunk({"content": 1, "tool_calls": ["x", {"index": 0, "function": {"name": "f", "arguments": 2}}]})
        + _chunk({}, "stop") + _usage_chunk() + b"data: [DONE]\n\n"
    )  # fmt: skip
    out = b"".join(decoder.feed(wire) + decoder.finish())
    assert b'"text":"Hello"' in out
    assert b'"stop_reason":"end_turn"' in out
