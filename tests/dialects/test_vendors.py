"""Vendor profiles: one request with every extension, written in each vendor's own fields (goldens)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.config import ModelOptions, UpstreamConfig
from gateway.dialects.base import Target
from gateway.dialects.registry import CHAT, TRANSLATORS
from gateway.dialects.vendors import PROFILES, clamp_effort, effort_for_budget, write_request
from gateway.request import check_chat_body
from tests.conftest import GOLDEN

REQUEST = json.loads((GOLDEN / "vendors" / "request.json").read_text())


def _write(vendor: str, body: dict[str, Any], options: ModelOptions | None = None) -> tuple[dict[str, Any], list[str]]:
    written, dropped = write_request(check_chat_body(body), PROFILES[vendor], options or ModelOptions())
    return {"model": "m", **written}, dropped


@pytest.mark.parametrize("vendor", sorted(PROFILES))
def test_golden_request_per_vendor(vendor: str) -> None:
    expected = json.loads((GOLDEN / "vendors" / f"{vendor}.json").read_text())
    body, dropped = _write(vendor, REQUEST)
    assert body == expected["body"]
    assert dropped == expected["dropped"]
    for private in ("retries", "sess_id", "json_mode", "enable_thinking"):
        assert private not in body or (vendor == "qwen" and private == "enable_thinking")


@pytest.mark.parametrize("vendor", sorted(PROFILES))
def test_built_request_carries_dropped_names_and_stream_usage(vendor: str) -> None:
    upstream = UpstreamConfig(name="u", dialect="openai", vendor=vendor, base_url="http://x/v1")  # type: ignore[arg-type]
    built = TRANSLATORS[(CHAT, vendor)].build_request(
        check_chat_body({**REQUEST, "stream": True}), Target(upstream, "up-model", ModelOptions())
    )
    body = json.loads(built.body)
    assert body["model"] == "up-model" and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert list(built.dropped) == json.loads((GOLDEN / "vendors" / f"{vendor}.json").read_text())["dropped"]


@pytest.mark.parametrize(
    ("vendor", "extra", "expected"),
    [
        ("openai", {"enable_thinking": False}, {"reasoning_effort": "none"}),
        ("deepseek", {"enable_thinking": False}, {"thinking": {"type": "disabled"}}),
        ("qwen", {"enable_thinking": False}, {"enable_thinking": False}),
        ("zhipu", {"thinking": {"type": "disabled"}}, {"thinking": {"type": "disabled"}}),
        ("moonshot", {"enable_thinking": False}, {"thinking": {"type": "disabled"}}),
        ("gemini", {"reasoning_effort": "none"}, {"reasoning_effort": "none"}),
        ("vllm", {"enable_thinking": False}, {"chat_template_kwargs": {"enable_thinking": False}}),
    ],
)
def test_thinking_off(vendor: str, extra: dict[str, Any], expected: dict[str, Any]) -> None:
    body, _ = _write(vendor, {"model": "m", "messages": [{"role": "user", "content": "x"}], **extra})
    for key, value in expected.items():
        assert body[key] == value
    assert "thinking_budget" not in body and "extra_body" not in body


def test_effort_only_goes_to_effort_fields_or_becomes_a_budget() -> None:
    req = {"model": "m", "messages": [{"role": "user", "content": "x"}], "reasoning_effort": "low"}
    assert _write("openai", req)[0]["reasoning_effort"] == "low"
    assert _write("deepseek", req)[0]["reasoning_effort"] == "high"  # DeepSeek takes only high or max
    assert _write("gemini", req)[0]["reasoning_effort"] == "low"  # never together with a budget
    assert "extra_body" not in _write("gemini", req)[0]
    assert _write("qwen", req)[0]["thinking_budget"] == 1024  # budget-only vendor: effort -> budget


def test_budget_clamped_to_model_range() -> None:
    req = {**REQUEST, "thinking": {"budget_tokens": 90_000}}
    assert _write("qwen", req, ModelOptions(budget_range=(0, 38912)))[0]["thinking_budget"] == 38912
    google = _write("gemini", req)[0]["extra_body"]["google"]["thinking_config"]
    assert google["thinking_budget"] == 24576  # the profile's default range (2.5 Flash)


def test_json_schema_where_only_json_object_is_taken() -> None:
    schema = {"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object"}}}
    req = {"model": "m", "messages": [{"role": "user", "content": "x"}], "response_format": schema}
    body, dropped = _write("deepseek", req)
    assert body["response_format"] == {"type": "json_object"} and dropped == ["response_format.json_schema"]
    assert _write("openai", req)[0]["response_format"] == schema


def test_metadata_forwarded_only_to_openai() -> None:
    assert "metadata" in _write("openai", REQUEST)[0]
    assert all("metadata" not in _write(v, REQUEST)[0] for v in PROFILES if v != "openai")


def test_max_tokens_under_the_clients_name_for_generic_upstreams() -> None:
    req = {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 77}
    assert _write("generic", req)[0]["max_tokens"] == 77
    assert _write("openai", req)[0]["max_completion_tokens"] == 77


@pytest.mark.parametrize(
    ("effort", "allowed", "expected"),
    [
        ("low", ("high", "max"), "high"),
        ("xhigh", ("low", "medium", "high", "max"), "high"),
        ("minimal", ("low", "medium", "high"), "low"),
        ("medium", ("medium",), "medium"),
        ("max", ("low",), "low"),
    ],
)
def test_clamp_effort(effort: str, allowed: tuple[str, ...], expected: str) -> None:
    assert clamp_effort(effort, allowed) == expected


def test_effort_for_budget() -> None:
    assert [effort_for_budget(b) for b in (0, 500, 1024, 2048, 4000, 8192, 50_000)] == [
        "none",
        "low",
        "low",
        "medium",
        "high",
        "xhigh",
        "max",
    ]
