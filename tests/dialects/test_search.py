"""Web search, pure: where `enable_search` goes for each vendor profile and native dialect (goldens in
tests/golden/search), and where each vendor's sources are read from into `citations`."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from gateway.config import ModelOptions, UpstreamConfig
from gateway.dialects.anthropic_stream import AnthropicStreamDecoder
from gateway.dialects.base import Target
from gateway.dialects.citations import MAX_CITATIONS, Citations
from gateway.dialects.openai import OpenAIStreamDecoder
from gateway.dialects.registry import CHAT, TRANSLATORS
from gateway.dialects.vendors import PROFILES, zhipu_engine
from gateway.request import check_chat_body
from tests.conftest import GOLDEN

REQUEST = json.loads((GOLDEN / "search" / "request.json").read_text())
KINDS = [*sorted(PROFILES), "anthropic", "dashscope"]


@pytest.mark.parametrize("kind", KINDS)
def test_golden_where_search_goes(kind: str) -> None:
    """One golden per vendor profile: the upstream body and what is reported dropped."""
    expected = json.loads((GOLDEN / "search" / f"{kind}.json").read_text())
    dialect = kind if kind in ("anthropic", "dashscope") else "openai"
    vendor = kind if dialect == "openai" else "generic"
    upstream = UpstreamConfig(name="u", dialect=dialect, vendor=vendor, base_url="http://x/v1")  # type: ignore[arg-type]
    options = ModelOptions(**expected.get("options", {}))
    built = TRANSLATORS[(CHAT, kind)].build_request(check_chat_body(REQUEST), Target(upstream, "m", options))
    assert built.url == "http://x/v1" + expected["url_path"]
    assert json.loads(built.body) == expected["body"]
    assert list(built.dropped) == expected["dropped"]
    assert b"search_config" not in built.body


def test_search_off_by_config_everywhere() -> None:
    for kind in KINDS:
        dialect = kind if kind in ("anthropic", "dashscope") else "openai"
        upstream = UpstreamConfig(name="u", dialect=dialect, vendor=kind if dialect == "openai" else "generic",  # type: ignore[arg-type]
                                  base_url="http://x/v1")  # fmt: skip
        built = TRANSLATORS[(CHAT, kind)].build_request(
            check_chat_body(REQUEST), Target(upstream, "m", ModelOptions(search=False))
        )
        assert built.dropped[0] == "enable_search", kind
        assert b"search" not in built.body.replace(b"What happened", b""), kind


@pytest.mark.parametrize(
    ("engine", "glm"),
    [("search_pro", "search_pro"), ("glm/search-std", "search_std"), ("zhipu/search-pro-sogou", "search_pro_sogou"),
     ("qwen/turbo", None), ("", None), (None, None)],
)  # fmt: skip
def test_zhipu_engine_names(engine: str | None, glm: str | None) -> None:
    assert zhipu_engine(engine) == glm


def test_citations_from_every_vendor_shape() -> None:
    cites = Citations()
    cites.from_chat(
        {
            "citations": ["https://agg.example/1", {"url": "https://agg.example/2"}, 7, None, "javascript:x"],
            "web_search": [{"link": "https://glm.example/1"}, "junk"],
            "search_info": {"search_results": [{"url": "https://qwen.example/1"}, {"url": "https://agg.example/1"}]},
            "choices": [
                {"message": {"annotations": [{"type": "url_citation", "url_citation": {"url": "https://oa.example/1"}},
                                             {"type": "file_citation", "url": "https://no.example"}]}},
                "junk",
            ],
        },
        "message",
    )  # fmt: skip
    cites.from_anthropic_block({"type": "web_search_tool_result", "content": [{"url": "https://claude.example/1"}]})
    cites.from_anthropic_block({"type": "web_search_tool_result", "content": {"type": "error", "error_code": "x"}})
    cites.from_anthropic_block({"type": "text", "citations": [{"url": "https://claude.example/2"}]})
    assert cites.urls == [
        "https://agg.example/1",
        "https://agg.example/2",
        "https://glm.example/1",
        "https://qwen.example/1",
        "https://oa.example/1",
        "https://claude.example/1",
        "https://claude.example/2",
    ]


def test_citations_are_bounded() -> None:
    cites = Citations()
    cites.add_all([f"https://x.example/{i}" for i in range(MAX_CITATIONS * 3)], strings=True)
    assert len(cites.urls) == MAX_CITATIONS


def _sse(*chunks: dict[str, Any]) -> bytes:
    return b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"


def _chunk(delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": choices, **extra}


def test_openai_stream_sources_in_a_usage_chunk_reach_a_client_that_did_not_ask_for_usage() -> None:
    usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    wire = _sse(
        _chunk({"role": "assistant", "content": "hi"}),
        _chunk({}, "stop"),
        _chunk(None, usage=usage, search_info={"search_results": [{"url": "https://late.example"}]}),
    )
    decoder = OpenAIStreamDecoder("m", include_usage=False, search=True)
    events = [orjson.loads(e[6:]) for e in decoder.feed(wire) if e.startswith(b"data: {")]
    assert events[-1]["choices"] == [] and "usage" not in events[-1]
    assert events[-1]["citations"] == ["https://late.example"]
    assert decoder.usage is not None and decoder.usage.total_tokens == 2


def test_openai_stream_without_sources_is_unchanged() -> None:
    usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    wire = _sse(_chunk({"role": "assistant", "content": "hi"}), _chunk({}, "stop"), _chunk(None, usage=usage))
    events = [
        orjson.loads(e[6:]) for e in OpenAIStreamDecoder("m", False, search=True).feed(wire) if e.startswith(b"data: {")
    ]
    assert len(events) == 2 and all("citations" not in e for e in events)


def test_anthropic_server_tool_input_is_not_a_client_tool_call() -> None:
    events = [
        {"type": "message_start", "message": {"id": "msg", "model": "c", "usage": {"input_tokens": 1}}},
        {"type": "content_block_start", "index": 0,
         "content_block": {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": '{"q'}},
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1,
         "content_block": {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1",
                           "content": [{"type": "web_search_result", "url": "https://a.example", "title": "A"}]}},
        {"type": "content_block_start", "index": 2, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 2,
         "delta": {"type": "citations_delta", "citation": {"url": "https://b.example", "cited_text": "x"}}},
        {"type": "content_block_delta", "index": 2, "delta": {"type": "text_delta", "text": "Sunny."}},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
         "usage": {"output_tokens": 5, "server_tool_use": {"web_search_requests": 1}}},
        {"type": "message_stop"},
    ]  # fmt: skip
    decoder = AnthropicStreamDecoder("c", include_usage=False, json_tool=None)
    wire = b"".join(b"event: x\ndata: " + orjson.dumps(e) + b"\n\n" for e in events)
    chunks = [orjson.loads(e[6:]) for e in decoder.feed(wire)]
    assert not any("tool_calls" in c["choices"][0]["delta"] for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["citations"] == ["https://a.example", "https://b.example"]
    assert decoder.usage is not None and decoder.usage.billed_units == 1


def test_anthropic_paused_search_turn_is_cut_short_not_complete() -> None:
    from gateway.dialects.anthropic_helper import finish_reason

    assert finish_reason("pause_turn") == "length"


def test_negative_counts_from_a_vendor_are_zero() -> None:
    from gateway.dialects.dashscope import openai_usage

    usage = openai_usage({"input_tokens": -3, "output_tokens": 2, "plugins": {"search": {"count": -5}}})
    assert usage == {"prompt_tokens": 0, "completion_tokens": 2, "total_tokens": 2}
    assert openai_usage({"input_tokens": 1, "plugins": "junk", "prompt_tokens_details": 7}) is not None
