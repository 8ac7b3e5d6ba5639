"""Aggregator extensions -> one canonical request (pure).

Clients speak OpenAI plus the fields Chinese API aggregators accept. Every form of the same intent
becomes one value here, and each dialect writes that value in its upstream's own fields:

    json_mode: true                               -> response_format {"type": "json_object"}
    enable_thinking, thinking{type, budget_tokens,
      reasoning_effort}, reasoning_effort,
      thinking_budget                             -> Reasoning(enabled, effort, budget_tokens)
    max_completion_tokens / max_tokens            -> max_output (and which name the client used)
    enable_search, search_config{engine,
      deepable, return_result}                    -> Search
    retries, sess_id                              -> kept for the gateway, never forwarded
    metadata                                      -> recorded; forwarded only where the vendor takes it
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.checks import bad_type, bad_value, optional_bool, optional_int
from gateway.errors import InvalidRequest
from gateway.types import JSON

EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")

# Consumed here and re-emitted by each dialect in its own form; never passed through as they came.
CONSUMED = frozenset(
    {
        "json_mode", "response_format", "enable_thinking", "thinking", "reasoning_effort", "thinking_budget",
        "max_tokens", "max_completion_tokens", "retries", "sess_id", "enable_search", "search_config",
        "metadata", "stream", "stream_options",
    }
)  # fmt: skip


@dataclass(slots=True, frozen=True)
class Reasoning:
    """What the client asked of reasoning; all None means it said nothing."""

    enabled: bool | None = None
    effort: str | None = None  # one of EFFORTS
    budget_tokens: int | None = None

    @property
    def requested(self) -> bool:
        return self.enabled is not None or self.effort is not None or self.budget_tokens is not None

    @property
    def on(self) -> bool:
        """Thinking wanted: switched on, or implied by an effort or a budget."""
        if self.enabled is not None:
            return self.enabled
        return (self.effort is not None and self.effort != "none") or bool(self.budget_tokens)


@dataclass(slots=True, frozen=True)
class Search:
    engine: str | None = None
    deep: bool = False
    return_result: bool = False


@dataclass(slots=True, frozen=True)
class Extensions:
    reasoning: Reasoning
    response_format: JSON | None
    max_output: int | None
    max_output_field: str  # the name the client used, for upstreams that take either
    retries: int | None
    sess_id: str | None
    search: Search | None
    metadata: JSON | None


# Every field `extract` reads: a body with none of them (most OpenAI clients') skips the work.
_READ = CONSUMED - {"stream", "stream_options"}


def extract(body: JSON) -> Extensions:
    """The canonical values of the extension fields of an already type-checked body."""
    if body.keys().isdisjoint(_READ):
        return _NONE
    return _extract(body)


def _extract(body: JSON) -> Extensions:
    return Extensions(
        reasoning=_reasoning(body),
        response_format=_response_format(body),
        max_output=_max_output(body),
        max_output_field="max_tokens"
        if "max_tokens" in body and "max_completion_tokens" not in body
        else "max_completion_tokens",
        retries=optional_int(body, "retries", 0, 10),
        sess_id=sess_id_of(body.get("sess_id")),
        search=_search(body),
        metadata=body.get("metadata"),
    )


def passthrough(body: JSON) -> JSON:
    """The fields the gateway does not interpret, forwarded as they came."""
    return {k: v for k, v in body.items() if k not in CONSUMED}


def _reasoning(body: JSON) -> Reasoning:
    enabled = optional_bool(body, "enable_thinking")
    thinking = body.get("thinking")
    effort = body.get("reasoning_effort")
    budget = optional_int(body, "thinking_budget", 0, None)
    if thinking is not None:
        if not isinstance(thinking, dict):
            raise bad_type("thinking", "an object", thinking)
        kind = thinking.get("type")
        if kind is not None:
            if kind not in ("enabled", "disabled", "auto", "adaptive"):
                raise bad_value("thinking.type", kind, "enabled, disabled, auto, adaptive")
            if enabled is None and kind in ("enabled", "disabled"):
                enabled = kind == "enabled"
        inner_budget = optional_int(thinking, "budget_tokens", 0, None, prefix="thinking.")
        if inner_budget is not None:
            budget = inner_budget  # 0 included: an explicit "no thinking budget"
        inner_effort = thinking.get("reasoning_effort", thinking.get("effort"))
        if inner_effort is not None:
            effort = inner_effort
            _check_effort(effort, "thinking.reasoning_effort")
    if effort is not None:
        _check_effort(effort, "reasoning_effort")
    if enabled is False:
        return Reasoning(enabled=False)
    return Reasoning(enabled=enabled, effort=effort, budget_tokens=budget)


def _response_format(body: JSON) -> JSON | None:
    fmt = body.get("response_format")
    json_mode = optional_bool(body, "json_mode")
    if fmt is None and json_mode:
        return {"type": "json_object"}
    return fmt if isinstance(fmt, dict) else None


def _max_output(body: JSON) -> int | None:
    # Both given: the newer name wins, as OpenAI documents max_tokens as its deprecated alias.
    value = body.get("max_completion_tokens")
    return value if value is not None else body.get("max_tokens")


def _search(body: JSON) -> Search | None:
    enabled = optional_bool(body, "enable_search")
    config = body.get("search_config")
    if config is not None and not isinstance(config, dict):
        raise bad_type("search_config", "an object", config)
    if not enabled and not (config and enabled is None):
        return None
    config = config or {}
    engine = config.get("engine")
    if engine is not None and not isinstance(engine, str):
        raise bad_type("search_config.engine", "a string", engine)
    for name in ("deepable", "return_result"):
        optional_bool(config, name, prefix="search_config.")
    return Search(engine, bool(config.get("deepable")), bool(config.get("return_result")))


def sess_id_of(value: Any) -> str | None:
    # "" is what aggregator clients send when there is no session (their own example bodies do).
    if value is None or value == "":
        return None
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise bad_type("sess_id", "a string", value)
    text = str(value)
    if len(text) > 256:
        raise InvalidRequest("'sess_id' may be at most 256 characters.", param="sess_id")
    return text


def _check_effort(value: Any, param: str) -> None:
    if value not in EFFORTS:
        raise bad_value(param, value, ", ".join(EFFORTS))


# What every body without an extension field gets (one, shared: it is frozen).
_NONE = _extract({})
