"""Web search end to end: `enable_search` from the openai SDK reaches each vendor that can search in its
own fields, and the sources each returns come back as top-level `citations`: on the reply, and on the
last chunk of a stream whether or not the client asked for usage."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import openai
import pytest

from gateway.config import parse_config
from gateway.dialects.vendors import PROFILES
from tests.conftest import CLIENT_KEY, GOLDEN, RunningGateway, sdk
from tests.support.fake_anthropic import ANTHROPIC_KEY, FakeAnthropic
from tests.support.fake_dashscope import DASHSCOPE_KEY, SOURCES, FakeDashScope
from tests.support.fake_openai import KIMI_ANSWER, KIMI_SEARCH_ARGUMENTS, UPSTREAM_KEY, FakeOpenAI
from tests.support.spec import Checker
from tests.support.threads import AiohttpServer

SEARCH = json.loads((GOLDEN / "search" / "request.json").read_text())
EXTRA = {"enable_search": True, "search_config": SEARCH["search_config"]}
# model -> the citations its upstream's search results become
CITED = {
    "via-openai": ["https://example.com/source", "https://openai.example/a", "https://openai.example/b"],
    "via-zhipu": ["https://example.com/source", "https://glm.example/a", "https://glm.example/b"],
    "via-dashscope": [s["url"] for s in SOURCES],
    "claude-search": ["https://claude.example/weather", "https://claude.example/news"],
}
STREAM_CITED = CITED


@pytest.fixture
def search_gateway(
    start_gateway: Callable[..., RunningGateway],
    fake_url: str,
    fake: FakeOpenAI,
    anthropic_server: tuple[FakeAnthropic, AiohttpServer],
    dashscope_server: tuple[FakeDashScope, AiohttpServer],
) -> RunningGateway:
    plain = ("doubao", "gemini", "vllm", "sglang", "generic")  # no search in their chat APIs
    more_upstreams = "".join(
        f"  - {{name: {v}, dialect: openai, vendor: {v}, base_url: '{fake_url}/vendor/{v}/v1', "
        f"api_key: {UPSTREAM_KEY}}}\n"
        for v in plain
    )
    more_models = "".join(f"  - {{name: via-{v}, upstream: {v}, upstream_model: m}}\n" for v in plain)
    config = f"""
keys: [{{name: tester, key: {CLIENT_KEY}}}]
upstreams:
  - {{name: openai, dialect: openai, vendor: openai, base_url: '{fake_url}/vendor/openai/v1', api_key: {UPSTREAM_KEY}}}
  - {{name: zhipu, dialect: openai, vendor: zhipu, base_url: '{fake_url}/vendor/zhipu/v1', api_key: {UPSTREAM_KEY}}}
  - {{name: qwen, dialect: openai, vendor: qwen, base_url: '{fake_url}/vendor/qwen/v1', api_key: {UPSTREAM_KEY}}}
  - {{name: deepseek, dialect: openai, vendor: deepseek, base_url: '{fake_url}/vendor/deepseek/v1',
      api_key: {UPSTREAM_KEY}}}
  - {{name: moonshot, dialect: openai, vendor: moonshot, base_url: '{fake_url}/vendor/moonshot/v1',
      api_key: {UPSTREAM_KEY}}}
  - {{name: dashscope, dialect: dashscope, base_url: '{dashscope_server[1].url}', api_key: {DASHSCOPE_KEY}}}
  - {{name: claude, dialect: anthropic, base_url: '{anthropic_server[1].url}', api_key: {ANTHROPIC_KEY}}}
{more_upstreams}models:
  - {{name: via-openai, upstream: openai, upstream_model: gpt-5-search-api, options: {{search: true}}}}
{more_models}  - {{name: via-openai-plain, upstream: openai, upstream_model: gpt-5}}
  - {{name: via-zhipu, upstream: zhipu, upstream_model: glm-4.6}}
  - {{name: via-qwen, upstream: qwen, upstream_model: qwen-plus}}
  - {{name: via-qwen-no-search, upstream: qwen, upstream_model: qwen-turbo, options: {{search: false}}}}
  - {{name: via-deepseek, upstream: deepseek, upstream_model: deepseek-chat}}
  - {{name: via-moonshot, upstream: moonshot, upstream_model: kimi-k2.6}}
  - {{name: via-dashscope, upstream: dashscope, upstream_model: qwen-plus}}
  - {{name: via-dashscope-400, upstream: dashscope, upstream_model: qwen-status-400}}
  - {{name: via-dashscope-429, upstream: dashscope, upstream_model: qwen-status-429}}
  - {{name: via-dashscope-500, upstream: dashscope, upstream_model: qwen-status-500}}
  - {{name: via-dashscope-cut, upstream: dashscope, upstream_model: qwen-error-after-200}}
  - {{name: claude-search, upstream: claude}}
"""
    return start_gateway(parse_config(config))


@pytest.mark.parametrize("model", sorted(CITED))
def test_buffered_reply_carries_the_sources_as_citations(
    search_gateway: RunningGateway, checker: Checker, model: str
) -> None:
    client = sdk(search_gateway.url, checker)
    reply: Any = client.chat.completions.create(model=model, messages=SEARCH["messages"], extra_body=EXTRA)
    assert reply.model_extra["citations"] == CITED[model]
    assert reply.choices[0].message.content
    assert checker.checked == 1


@pytest.mark.parametrize("include_usage", [False, True])
@pytest.mark.parametrize("model", sorted(CITED))
def test_stream_carries_citations_on_its_last_chunk(
    search_gateway: RunningGateway, checker: Checker, model: str, include_usage: bool
) -> None:
    client = sdk(search_gateway.url, checker)
    options = {"stream_options": {"include_usage": True}} if include_usage else {}
    chunks: list[Any] = list(
        client.chat.completions.create(
            model=model, messages=SEARCH["messages"], extra_body=EXTRA, stream=True, **options
        )
    )
    last = chunks[-1]
    assert last.model_extra.get("citations") == STREAM_CITED[model]
    assert (last.usage is not None) == include_usage
    assert all("citations" not in c.model_extra for c in chunks[:-1] if c.choices and not c.choices[0].finish_reason)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and checker.checked == len(chunks)


def test_usage_counts_the_searches_as_billed_units(search_gateway: RunningGateway, checker: Checker) -> None:
    client = sdk(search_gateway.url, checker)
    for model in ("via-dashscope", "claude-search"):
        reply: Any = client.chat.completions.create(model=model, messages=SEARCH["messages"], extra_body=EXTRA)
        assert reply.usage.model_extra["billed_units"] == 1, model


@pytest.mark.parametrize(
    ("model", "dropped"),
    [
        ("via-deepseek", "enable_search"),  # no way to search
        ("via-openai-plain", "enable_search"),  # only OpenAI's search models take web_search_options
        ("via-qwen-no-search", "enable_search"),  # turned off for this model in config
        ("via-qwen", "search_config.engine"),  # searches, but has no choice of engine
    ],
)
def test_dropped_only_where_there_is_no_way(
    search_gateway: RunningGateway, checker: Checker, fake: FakeOpenAI, model: str, dropped: str
) -> None:
    client = sdk(search_gateway.url, checker)
    response = client.chat.completions.with_raw_response.create(
        model=model, messages=SEARCH["messages"], extra_body=EXTRA
    )
    assert response.headers["x-gateway-dropped-params"] == dropped
    sent = fake.requests[-1].body
    assert ("enable_search" in sent) == (model == "via-qwen")
    assert "web_search_options" not in sent and "search_config" not in sent


def test_dashscope_request_and_errors(
    search_gateway: RunningGateway, checker: Checker, dashscope: FakeDashScope
) -> None:
    client = sdk(search_gateway.url, checker)
    client.chat.completions.create(
        model="via-dashscope", messages=SEARCH["messages"], extra_body={**EXTRA, "enable_thinking": True}
    )
    seen = dashscope.requests[-1]
    assert seen.body["input"] == {"messages": SEARCH["messages"]}
    assert seen.body["parameters"]["enable_search"] is True
    assert seen.body["parameters"]["enable_thinking"] is True
    assert seen.headers["authorization"] == f"Bearer {DASHSCOPE_KEY}"
    assert seen.headers.get("x-dashscope-sse") is None
    assert seen.body["parameters"]["result_format"] == "message"

    chunks: list[Any] = list(
        client.chat.completions.create(
            model="via-dashscope", messages=SEARCH["messages"], extra_body={"enable_thinking": True}, stream=True
        )
    )
    seen = dashscope.requests[-1]
    assert seen.headers["x-dashscope-sse"] == "enable" and seen.body["parameters"]["incremental_output"] is True
    reasoning = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices)
    assert reasoning == "The user asks about the weather."
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


@pytest.mark.parametrize(("status", "client_status"), [(400, 400), (429, 429), (500, 502)])
def test_dashscope_errors_keep_their_meaning(
    search_gateway: RunningGateway, checker: Checker, status: int, client_status: int
) -> None:
    client = sdk(search_gateway.url, checker)
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model=f"via-dashscope-{status}", messages=SEARCH["messages"])
    assert caught.value.status_code == client_status
    assert f"fake says {status}" in caught.value.message


def test_dashscope_error_event_after_the_first_byte(search_gateway: RunningGateway, checker: Checker) -> None:
    client = sdk(search_gateway.url, checker)
    with pytest.raises(openai.APIError, match="inappropriate content"):
        list(client.chat.completions.create(model="via-dashscope-cut", messages=SEARCH["messages"], stream=True))


@pytest.mark.parametrize("searches", [1, 2])
def test_kimi_web_search_rounds_are_answered_by_the_gateway(
    search_gateway: RunningGateway, checker: Checker, fake: FakeOpenAI, searches: int
) -> None:
    """Kimi's $web_search: the gateway sends the call's arguments back as Moonshot documents, and the
    client sees one reply, its usage the sum of the rounds."""
    client = sdk(search_gateway.url, checker)
    question = [{"role": "user", "content": "What happened today?" + (" search-twice" if searches == 2 else "")}]
    response = client.chat.completions.with_raw_response.create(
        model="via-moonshot", messages=question, extra_body={**EXTRA, "enable_thinking": True}
    )
    reply: Any = response.parse()
    assert response.headers["x-gateway-dropped-params"] == "search_config.engine,search_config.deepable,enable_thinking"
    message = reply.choices[0].message
    assert (message.content, message.tool_calls, reply.choices[0].finish_reason) == (KIMI_ANSWER, None, "stop")
    assert reply.usage.prompt_tokens == sum(20 + 1024 * n for n in range(searches + 1))
    assert reply.usage.completion_tokens == 6 * (searches + 1)
    sent = [r.body for r in fake.requests]
    assert len(sent) == searches + 1
    last = sent[-1]["messages"]
    assert last[0] == question[0]
    assert last[1]["role"] == "assistant" and last[1]["tool_calls"][0]["function"]["name"] == "$web_search"
    assert last[2] == {"role": "tool", "tool_call_id": "$web_search-0", "name": "$web_search",
                       "content": KIMI_SEARCH_ARGUMENTS}  # fmt: skip


@pytest.mark.parametrize("include_usage", [False, True])
@pytest.mark.parametrize("searches", [1, 2])
def test_kimi_web_search_rounds_in_one_stream(
    search_gateway: RunningGateway, checker: Checker, fake: FakeOpenAI, searches: int, include_usage: bool
) -> None:
    client = sdk(search_gateway.url, checker)
    question = [{"role": "user", "content": "What happened today?" + (" search-twice" if searches == 2 else "")}]
    options = {"stream_options": {"include_usage": True}} if include_usage else {}
    chunks: list[Any] = list(
        client.chat.completions.create(
            model="via-moonshot", messages=question, extra_body=EXTRA, stream=True, **options
        )
    )
    assert len(fake.requests) == searches + 1
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == KIMI_ANSWER
    assert not any(c.choices[0].delta.tool_calls for c in chunks if c.choices)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert len({c.id for c in chunks}) == 1
    usages = [c.usage for c in chunks if c.usage is not None]
    if include_usage:
        assert len(usages) == 1 and chunks[-1].usage is usages[0]
        assert usages[0].prompt_tokens == sum(20 + 1024 * n for n in range(searches + 1))
    else:
        assert usages == []
    assert checker.checked == len(chunks)


def test_kimi_stream_whose_searching_turn_shows_the_client_nothing(
    search_gateway: RunningGateway, checker: Checker, fake: FakeOpenAI
) -> None:
    """Every event of the first turn is the gateway's to hold, so the stream's first events come from
    the second: the first turn's body has ended by then, and reading it once more must find its end."""
    client = sdk(search_gateway.url, checker)
    question = [{"role": "user", "content": "What happened today? search-quietly"}]
    chunks = list(
        client.chat.completions.create(model="via-moonshot", messages=question, extra_body=EXTRA, stream=True)
    )
    assert len(fake.requests) == 2
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == KIMI_ANSWER
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert checker.checked == len(chunks)


def test_kimi_still_searching_after_the_last_round_is_the_upstreams_failure(
    search_gateway: RunningGateway, checker: Checker, fake: FakeOpenAI
) -> None:
    client = sdk(search_gateway.url, checker)
    question = [{"role": "user", "content": "search-forever"}]
    with pytest.raises(openai.APIStatusError, match="after 4 rounds") as caught:
        client.chat.completions.create(model="via-moonshot", messages=question, extra_body=EXTRA)
    assert caught.value.status_code == 502 and len(fake.requests) == 5
    with pytest.raises(openai.APIError, match="after 4 rounds"):
        list(client.chat.completions.create(model="via-moonshot", messages=question, extra_body=EXTRA, stream=True))


def test_kimi_turn_with_the_clients_own_tool_goes_to_the_client(
    search_gateway: RunningGateway, checker: Checker, fake: FakeOpenAI
) -> None:
    """The client cannot answer `$web_search`: it never sees that call, buffered or streamed, and its
    own call is numbered from 0 (the SDK's stream helper needs that)."""
    client = sdk(search_gateway.url, checker)
    question = [{"role": "user", "content": "search-and-tool"}]
    reply = client.chat.completions.create(model="via-moonshot", messages=question, extra_body=EXTRA)
    calls = reply.choices[0].message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_weather"] and reply.choices[0].finish_reason == "tool_calls"
    with client.chat.completions.stream(model="via-moonshot", messages=question, extra_body=EXTRA) as stream:
        final = stream.get_final_completion()
    calls = final.choices[0].message.tool_calls or []
    assert [(c.function.name, c.function.arguments) for c in calls] == [("get_weather", '{"city":"Paris"}')]
    assert len(fake.requests) == 2  # one round each: the gateway did not answer a turn with the client's tool


@pytest.mark.parametrize("stream", [False, True])
def test_kimi_rounds_served_before_a_failure_are_billed(
    search_gateway: RunningGateway, checker: Checker, stream: bool
) -> None:
    client = sdk(search_gateway.url, checker)
    question = [{"role": "user", "content": "fail-after-search"}]
    with pytest.raises(openai.APIError):
        reply = client.chat.completions.create(model="via-moonshot", messages=question, extra_body=EXTRA, stream=stream)
        list(reply) if stream else None  # type: ignore[call-overload]
    search_gateway.app.runtime.flush_observers()
    day = time.strftime("%Y-%m-%d", time.gmtime())
    usage = asyncio.run(search_gateway.app.runtime.ledger.usage("tester", day))["via-moonshot"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (20, 6)  # the first round, exactly


def test_client_search_options_of_the_wrong_kind_are_not_a_5xx(
    search_gateway: RunningGateway, checker: Checker, fake: FakeOpenAI
) -> None:
    client = sdk(search_gateway.url, checker)
    for junk in ("ab", 5, [1]):
        client.chat.completions.create(
            model="via-qwen", messages=SEARCH["messages"], extra_body={**EXTRA, "search_options": junk}
        )
        assert fake.requests[-1].body["search_options"] == {"search_strategy": "max", "enable_source": True}


@pytest.mark.parametrize("vendor", sorted(PROFILES))
def test_each_vendor_profile_streams_what_it_returns_as_citations(
    search_gateway: RunningGateway, checker: Checker, vendor: str
) -> None:
    """Per vendor profile, streamed with search asked for: the sources the vendor returns in its own
    shape (OpenAI's annotations, GLM's web_search), or an aggregator upstream's own `citations`, reach
    the client on the last chunk. Kimi returns none (its search results stay with Moonshot)."""
    client = sdk(search_gateway.url, checker)
    chunks: list[Any] = list(
        client.chat.completions.create(
            model=f"via-{vendor}", messages=SEARCH["messages"], extra_body=EXTRA, stream=True,
            stream_options={"include_usage": True},
        )
    )  # fmt: skip
    expected = {"openai": CITED["via-openai"], "zhipu": CITED["via-zhipu"], "moonshot": None}
    assert chunks[-1].model_extra.get("citations") == expected.get(vendor, ["https://example.com/source"])
    assert all("citations" not in c.model_extra for c in chunks[:-1])
    assert chunks[-1].usage is not None and checker.checked == len(chunks)
