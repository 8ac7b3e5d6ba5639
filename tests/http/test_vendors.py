"""The done-when of the vendor profiles, end to end: the openai SDK sends OpenAI plus the aggregator
extensions; each fake vendor upstream receives its own fields; the reply comes back in one OpenAI
shape with content, reasoning_content and usage details, streamed and not."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import openai
import pytest

from gateway.config import parse_config
from gateway.dialects.vendors import PROFILES
from tests.conftest import CLIENT_KEY, GOLDEN, RunningGateway, sdk
from tests.support.fake_openai import REASONING, UPSTREAM_KEY, VENDOR_REPLIES, FakeOpenAI
from tests.support.spec import Checker

REQUEST = json.loads((GOLDEN / "vendors" / "request.json").read_text())
EXTENSIONS = {k: v for k, v in REQUEST.items() if k not in ("model", "messages", "temperature")}


@pytest.fixture
def vendors_gateway(start_gateway: Callable[..., RunningGateway], fake_url: str, fake: FakeOpenAI) -> RunningGateway:
    upstreams = "".join(
        f"  - {{name: {v}, dialect: openai, vendor: {v}, "
        f"base_url: '{fake_url}/vendor/{v}/v1', api_key: {UPSTREAM_KEY}}}\n"
        for v in PROFILES
    )
    models = "".join(f"  - {{name: via-{v}, upstream: {v}, upstream_model: m}}\n" for v in PROFILES)
    config = f"keys: [{{name: tester, key: {CLIENT_KEY}}}]\nupstreams:\n{upstreams}models:\n{models}"
    return start_gateway(parse_config(config))


@pytest.mark.parametrize("vendor", sorted(PROFILES))
@pytest.mark.parametrize("stream", [False, True])
def test_extensions_reach_each_vendor_in_its_own_fields(
    vendors_gateway: RunningGateway, fake: FakeOpenAI, checker: Checker, vendor: str, stream: bool
) -> None:
    client = sdk(vendors_gateway.url, checker)
    kwargs: dict[str, Any] = {
        "model": f"via-{vendor}",
        "messages": REQUEST["messages"],
        "temperature": 0.3,
        "extra_body": EXTENSIONS,
    }
    expected = json.loads((GOLDEN / "vendors" / f"{vendor}.json").read_text())
    if stream:
        response = client.chat.completions.with_raw_response.create(
            **kwargs, stream=True, stream_options={"include_usage": True}
        )
        chunks: list[Any] = list(response.parse())
        content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        reasoning = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices)
        usage = chunks[-1].usage
    else:
        response = client.chat.completions.with_raw_response.create(**kwargs)
        reply: Any = response.parse()
        content = reply.choices[0].message.content
        reasoning = getattr(reply.choices[0].message, "reasoning_content", None) or ""
        usage = reply.usage
        assert reply.model_extra["citations"] == ["https://example.com/source"]  # passed through

    seen = fake.requests[-1]
    assert seen.path == f"/vendor/{vendor}/v1/chat/completions"
    sent = {k: v for k, v in seen.body.items() if k not in ("stream", "stream_options")}
    assert sent == expected["body"]
    assert response.headers.get("x-gateway-dropped-params", "") == ",".join(expected["dropped"])

    assert json.loads(content) == {"ok": True}
    assert reasoning == (REASONING if VENDOR_REPLIES[vendor][0] else "")
    assert usage is not None and usage.total_tokens == 30
    assert usage.model_extra["billed_units"] == 0.75  # passed through
    assert usage.prompt_tokens_details is not None and usage.prompt_tokens_details.cached_tokens == 3
    assert usage.completion_tokens_details is not None and usage.completion_tokens_details.reasoning_tokens == 2
    assert checker.checked == (len(chunks) if stream else 1)  # every chunk, or the reply, was validated


def test_reject_policy_names_the_parameter(
    start_gateway: Callable[..., RunningGateway], fake_url: str, fake: FakeOpenAI, checker: Checker
) -> None:
    config = (
        f"keys: [{{name: tester, key: {CLIENT_KEY}}}]\nupstreams:\n"
        f"  - {{name: z, dialect: openai, vendor: zhipu, unsupported_params: reject, "
        f"base_url: '{fake_url}/vendor/zhipu/v1', api_key: {UPSTREAM_KEY}}}\n"
        "models:\n  - {name: glm, upstream: z}\n"
    )
    client = sdk(start_gateway(parse_config(config)).url, checker)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="glm", messages=REQUEST["messages"], extra_body={"thinking": {"budget_tokens": 1000}}
        )
    assert info.value.param == "thinking.budget_tokens"  # type: ignore[attr-defined]
    assert fake.requests == []  # nothing was sent upstream
    assert client.chat.completions.create(model="glm", messages=REQUEST["messages"]).choices
