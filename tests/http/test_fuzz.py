"""Fuzzing the chat endpoint with generated bodies: no client input may get a 5xx.

The app is called in process (plain ASGI, the echo upstream), so thousands of requests take seconds.
`GATEWAY_FUZZ_EXAMPLES` sets how many (10,000 by default); the count is printed.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config import parse_config
from gateway.http.app import GatewayApp, create_app
from tests.conftest import CLIENT_KEY
from tests.conftest import test_settings as make_settings

EXAMPLES = int(os.environ.get("GATEWAY_FUZZ_EXAMPLES", "10000"))
CONFIG = f"""
keys: [{{name: fuzz, key: {CLIENT_KEY}}}]
upstreams: [{{name: local, dialect: echo}}]
models: [{{name: echo, upstream: local}}, {{name: "echo-*", upstream: local}}]
"""

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
valid_roles = st.sampled_from(["system", "developer", "user", "assistant", "tool"])
roles = st.one_of(valid_roles, valid_roles, valid_roles, st.sampled_from(["robot", ""]) | json_values)
parts = st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", "file"]) | json_values}, optional={
    "text": st.text(max_size=30) | json_values,
    "image_url": json_values,
})  # fmt: skip
text = st.text(max_size=60)
contents = st.one_of(text, text, text, st.lists(parts | json_values, max_size=3), json_values)
message = st.fixed_dictionaries(
    {"role": roles},
    optional={"content": contents, "name": json_values, "tool_calls": json_values, "tool_call_id": json_values},
)
simple = st.fixed_dictionaries({"role": valid_roles, "content": text})
messages = st.one_of(
    st.lists(simple, min_size=1, max_size=3),
    st.lists(simple, min_size=1, max_size=3),
    st.lists(message | json_values, max_size=4),
)
FIELDS = [
    "temperature", "top_p", "max_tokens", "max_completion_tokens", "n", "stream", "stream_options", "tools",
    "tool_choice", "response_format", "stop", "seed", "user", "logit_bias", "logprobs", "top_logprobs",
    "presence_penalty", "frequency_penalty", "parallel_tool_calls", "metadata", "json_mode", "enable_thinking",
    "thinking", "reasoning_effort", "thinking_budget", "retries", "sess_id", "enable_search", "search_config",
]  # fmt: skip
known_values = {
    "temperature": st.floats(0, 2),
    "top_p": st.floats(0, 1),
    "max_tokens": st.integers(1, 100_000),
    "max_completion_tokens": st.integers(-5, 2**40),
    "n": st.integers(-1, 200),
    "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans() | json_values}),
    "thinking": st.fixed_dictionaries(
        {}, optional={"type": st.text(max_size=10), "budget_tokens": json_values, "reasoning_effort": json_values}
    ),
    "response_format": st.fixed_dictionaries({"type": st.sampled_from(["text", "json_object", "json_schema"])}),
    "reasoning_effort": st.sampled_from(["none", "minimal", "low", "medium", "high", "xhigh", "max", "huge"]),
    "enable_thinking": st.booleans(),
    "json_mode": st.booleans(),
    "retries": st.integers(-2, 20),
    "sess_id": st.text(max_size=20),
    "stop": st.lists(st.text(max_size=5), max_size=6) | st.text(max_size=5),
}
names = st.sampled_from(["echo", "echo", "echo-x", "nope"])
models = st.one_of(names, names, names, json_values)


@st.composite
def bodies(draw: st.DrawFn) -> dict[str, Any]:
    """A model and messages, plus a few other fields: mostly plausible values, else any JSON at all."""
    body: dict[str, Any] = {"model": draw(models), "messages": draw(messages)}
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=4, unique=True)):
        plausible = known_values.get(name)
        body[name] = draw(json_values if plausible is None else st.one_of(plausible, plausible, plausible, json_values))
    return body


@pytest.fixture(scope="module")
def app() -> Iterator[tuple[GatewayApp, asyncio.AbstractEventLoop]]:
    loop = asyncio.new_event_loop()
    app = create_app(make_settings(access_log=False, max_body_bytes=1 << 20), parse_config(CONFIG))
    loop.run_until_complete(app.runtime.start())
    yield app, loop
    loop.run_until_complete(app.runtime.stop())
    loop.close()


async def _post(app: GatewayApp, raw: bytes) -> tuple[int, bytes]:
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "headers": [(b"authorization", f"Bearer {CLIENT_KEY}".encode()), (b"content-type", b"application/json")],
    }
    sent: list[Any] = []
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if delivered:
            await asyncio.sleep(3600)  # the client stays until the reply is complete
        delivered = True
        return {"type": "http.request", "body": raw, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def test_generated_chat_bodies_never_get_a_5xx(
    app: tuple[GatewayApp, asyncio.AbstractEventLoop], capsys: pytest.CaptureFixture[str]
) -> None:
    gateway, loop = app
    seen = {"requests": 0, "2xx": 0, "4xx": 0}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )
    @given(bodies())
    def check(body: dict[str, Any]) -> None:
        raw = json.dumps(body).encode()  # the standard library writes integers of any size, as clients may
        status, reply = loop.run_until_complete(_post(gateway, raw))
        seen["requests"] += 1
        assert status < 500, (body, reply[:500])
        if status >= 400:
            seen["4xx"] += 1
            error = orjson.loads(reply)["error"]
            assert set(error) == {"message", "type", "param", "code"}, reply
        else:
            seen["2xx"] += 1
            if body.get("stream") is True:
                assert reply.endswith(b"data: [DONE]\n\n")

    check()
    with capsys.disabled():  # the count goes to the test output, passing or not
        print(f"\nfuzz: {seen['requests']} generated chat requests, {seen['2xx']} 2xx, {seen['4xx']} 4xx, no 5xx")
    assert seen["requests"] >= min(EXAMPLES, 10_000) * 0.9 and seen["2xx"] > 0 and seen["4xx"] > 0
