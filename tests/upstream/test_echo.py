from __future__ import annotations

import orjson

from gateway.dialects.base import UpstreamRequest
from gateway.upstream.echo import EchoTransport
from tests.support.spec import assert_valid, check_exchange


def _request(body: dict[str, object]) -> UpstreamRequest:
    return UpstreamRequest("POST", "echo://", {}, orjson.dumps(body), "local")


async def test_buffered_reply_is_valid_and_echoes_multipart_text() -> None:
    content = [
        {"type": "text", "text": "look at"},
        {"type": "image_url", "image_url": {"url": "data:"}},
        {"type": "text", "text": "this"},
    ]
    response = await EchoTransport().open(
        _request(
            {
                "model": "echo",
                "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": content}],
            }
        )
    )
    body = orjson.loads(await response.read())
    assert_valid("CreateChatCompletionResponse", body)
    assert body["choices"][0]["message"]["content"] == "look at this"
    assert body["usage"]["prompt_tokens"] > body["usage"]["completion_tokens"] > 0


async def test_stream_with_usage_and_delay() -> None:
    response = await EchoTransport(delay_ms=1).open(
        _request(
            {
                "model": "echo",
                "stream": True,
                "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": "a b c"}],
            }
        )
    )
    raw = await response.read()
    assert check_exchange("/v1/chat/completions", 200, response.headers["content-type"], raw) == 6
    assert b'"choices":[],"usage"' in raw


async def test_unreadable_request_is_400() -> None:
    response = await EchoTransport().open(UpstreamRequest("POST", "echo://", {}, b"nope", "local"))
    assert response.status == 400
