"""Every incoming form of the aggregator extensions becomes one canonical value."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.errors import InvalidRequest
from gateway.extensions import Reasoning, Search
from gateway.request import check_chat_body

BASE = {"model": "m", "messages": [{"role": "user", "content": "x"}]}


def _ext(**extra: Any) -> Any:
    return check_chat_body({**BASE, **extra}).ext


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({}, Reasoning()),
        ({"enable_thinking": True}, Reasoning(enabled=True)),
        ({"enable_thinking": False, "reasoning_effort": "high"}, Reasoning(enabled=False)),
        ({"thinking": {"type": "enabled", "budget_tokens": 2048}}, Reasoning(enabled=True, budget_tokens=2048)),
        ({"thinking": {"type": "disabled"}}, Reasoning(enabled=False)),
        ({"thinking": {"reasoning_effort": "low"}}, Reasoning(effort="low")),
        ({"reasoning_effort": "high", "thinking": {"budget_tokens": 100}}, Reasoning(effort="high", budget_tokens=100)),
        ({"thinking_budget": 512}, Reasoning(budget_tokens=512)),
        ({"reasoning_effort": "none"}, Reasoning(effort="none")),
        ({"thinking_budget": 512, "thinking": {"budget_tokens": 0}}, Reasoning(budget_tokens=0)),
    ],
)
def test_reasoning_forms(extra: dict[str, Any], expected: Reasoning) -> None:
    assert _ext(**extra).reasoning == expected


def test_reasoning_on() -> None:
    assert Reasoning(effort="low").on and Reasoning(budget_tokens=10).on and Reasoning(enabled=True).on
    assert not Reasoning().on and not Reasoning(effort="none").on and not Reasoning(enabled=False).on
    assert not Reasoning(budget_tokens=0).on and Reasoning(budget_tokens=0).requested  # a zero budget: off


def test_json_mode_and_response_format() -> None:
    assert _ext(json_mode=True).response_format == {"type": "json_object"}
    schema = {"type": "json_schema", "json_schema": {"name": "s", "schema": {}}}
    assert _ext(json_mode=True, response_format=schema).response_format == schema  # explicit format wins
    assert _ext(json_mode=False).response_format is None


def test_output_cap_and_the_name_the_client_used() -> None:
    assert (_ext(max_tokens=10).max_output, _ext(max_tokens=10).max_output_field) == (10, "max_tokens")
    both = _ext(max_tokens=10, max_completion_tokens=20)
    assert (both.max_output, both.max_output_field) == (20, "max_completion_tokens")


def test_gateway_fields_are_kept_and_not_passed_through() -> None:
    checked = check_chat_body({**BASE, "retries": 2, "sess_id": "s-1", "metadata": {"a": "b"}, "top_k": 5})
    assert (checked.ext.retries, checked.ext.sess_id, checked.ext.metadata) == (2, "s-1", {"a": "b"})
    assert checked.body == {**BASE, "top_k": 5}


def test_search_forms() -> None:
    assert _ext(enable_search=True).search == Search()
    config = {"engine": "pro", "deepable": True, "return_result": True}
    assert _ext(search_config=config).search == Search("pro", True, True)
    assert _ext(enable_search=False, search_config=config).search is None


def test_an_empty_sess_id_is_no_session() -> None:
    # The aggregator documents' own example bodies send it so.
    assert check_chat_body({**BASE, "sess_id": ""}).ext.sess_id is None


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"enable_thinking": "yes"}, "enable_thinking"),
        ({"thinking": 5}, "thinking"),
        ({"thinking": {"type": "on"}}, "thinking.type"),
        ({"thinking": {"budget_tokens": -1}}, "thinking.budget_tokens"),
        ({"thinking": {"budget_tokens": "big"}}, "thinking.budget_tokens"),
        ({"reasoning_effort": "extreme"}, "reasoning_effort"),
        ({"thinking": {"reasoning_effort": "loud"}}, "thinking.reasoning_effort"),
        ({"json_mode": 1}, "json_mode"),
        ({"retries": 99}, "retries"),
        ({"retries": True}, "retries"),
        ({"sess_id": ["a"]}, "sess_id"),
        ({"sess_id": "x" * 300}, "sess_id"),
        ({"enable_search": "on"}, "enable_search"),
        ({"search_config": []}, "search_config"),
        ({"search_config": {"deepable": "y"}}, "search_config.deepable"),
    ],
)
def test_bad_extension_values_name_the_field(extra: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        check_chat_body({**BASE, **extra})
    assert info.value.param == param
