"""Vendor profiles of OpenAI-compatible upstreams: how each writes the canonical request, as data.

One row per vendor; a correction is a one-line change. Facts from shared/DIALECTS.md; rows marked
(verify) there come from secondary sources. Writing a request is pure: canonical request in,
upstream body and the names of the parameters that could not be sent out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from gateway.config import ModelOptions
from gateway.dialects import kimi_search
from gateway.extensions import EFFORTS, Extensions
from gateway.request import ChatRequest
from gateway.types import JSON

# How thinking is switched on and off.
#   effort_none      reasoning_effort: "none" turns it off (OpenAI gpt-5.1+, Gemini)
#   thinking_type    thinking: {type: enabled|disabled}
#   enable_thinking  top-level enable_thinking: bool
#   template_kwargs  chat_template_kwargs: {enable_thinking: bool} (vLLM / SGLang with Qwen3 templates)
#   off_only         thinking: {type: disabled} to turn off; on is the model's default (Kimi)
#   none             no switch
Switch = Literal["effort_none", "thinking_type", "enable_thinking", "template_kwargs", "off_only", "none"]
# Where a thinking budget in tokens goes.
BudgetField = Literal["thinking_budget", "google_thinking_config", "none"]
# How web search is asked for (see `_write_search`): DashScope's enable_search + search_options, GLM's
# web_search tool, OpenAI's web_search_options (search models only), Kimi's built-in $web_search tool
# (whose calls the gateway answers, see kimi_search.py), or no documented way.
SearchWay = Literal["qwen", "zhipu", "openai", "moonshot", "none"]


@dataclass(frozen=True, slots=True)
class VendorProfile:
    name: str
    max_tokens_field: str | None  # None: the name the client used
    switch: Switch
    budget_field: BudgetField
    efforts: tuple[str, ...]  # reasoning_effort values it takes; empty: none
    json_formats: frozenset[str]
    search: SearchWay
    forwards_metadata: bool = False
    budget_range: tuple[int, int] = (0, 32768)
    responses: bool = False  # serves OpenAI's Responses API itself (POST /responses): passed through


_OBJ = frozenset({"json_object"})
_OBJ_SCHEMA = frozenset({"json_object", "json_schema"})

PROFILES: dict[str, VendorProfile] = {
    p.name: p
    for p in (
        VendorProfile("openai", "max_completion_tokens", "effort_none", "none",
                      ("none", "minimal", "low", "medium", "high", "xhigh"), _OBJ_SCHEMA, "openai",
                      forwards_metadata=True, responses=True),
        VendorProfile("deepseek", "max_tokens", "thinking_type", "none", ("high", "max"), _OBJ, "none"),
        VendorProfile("qwen", "max_tokens", "enable_thinking", "thinking_budget", (), _OBJ_SCHEMA, "qwen"),
        VendorProfile("zhipu", "max_tokens", "thinking_type", "none", (), _OBJ, "zhipu"),
        VendorProfile("doubao", "max_completion_tokens", "thinking_type", "none",
                      ("minimal", "low", "medium", "high"), _OBJ_SCHEMA, "none", responses=True),
        VendorProfile("moonshot", "max_completion_tokens", "off_only", "none", ("low", "medium", "high"), _OBJ,
                      "moonshot"),
        VendorProfile("gemini", "max_tokens", "effort_none", "google_thinking_config",
                      ("none", "low", "medium", "high"), _OBJ_SCHEMA, "none", budget_range=(0, 24576)),
        VendorProfile("vllm", None, "template_kwargs", "none", (), _OBJ_SCHEMA, "none"),
        VendorProfile("sglang", None, "template_kwargs", "none", (), _OBJ_SCHEMA, "none"),
        VendorProfile("generic", None, "none", "none", (), _OBJ_SCHEMA, "none"),
    )
}  # fmt: skip

# Effort <-> budget, as peers convert them (LiteLLM: low 1024, medium 2048, high 4096).
EFFORT_BUDGET = {"minimal": 512, "low": 1024, "medium": 2048, "high": 4096, "xhigh": 8192, "max": 16384}


def effort_for_budget(budget: int) -> str:
    if budget <= 0:
        return "none"
    for effort in ("low", "medium", "high", "xhigh"):
        if budget <= EFFORT_BUDGET[effort]:
            return effort
    return "max"


def clamp_effort(effort: str, allowed: Sequence[str]) -> str:
    """The allowed effort nearest to `effort`; on a tie, the lower (cheaper) one."""
    if effort in allowed or not allowed:
        return effort
    rank = EFFORTS.index(effort)
    return min(allowed, key=lambda a: (abs(EFFORTS.index(a) - rank), EFFORTS.index(a)))


def budget_for(request: ChatRequest, low: int, high: int) -> int:
    """The thinking budget to send: the client's, or derived from its effort, clamped to [low, high]."""
    reasoning = request.ext.reasoning
    budget = reasoning.budget_tokens
    if budget is None:
        budget = EFFORT_BUDGET.get(reasoning.effort or "medium", EFFORT_BUDGET["medium"])
    return max(low, min(high, budget))


def write_request(request: ChatRequest, profile: VendorProfile, options: ModelOptions) -> tuple[JSON, list[str]]:
    """The upstream body for an OpenAI-compatible vendor, and the client parameters it could not take."""
    body = dict(request.body)
    dropped: list[str] = []
    ext = request.ext
    if ext.max_output is not None:
        body[profile.max_tokens_field or ext.max_output_field] = ext.max_output
    if ext.response_format is not None:
        _write_response_format(body, ext.response_format, profile, dropped)
    if ext.reasoning.requested:
        _write_reasoning(body, request, profile, options, dropped)
    if ext.search is not None:
        _write_search(body, ext, profile, options, dropped)
    if ext.metadata is not None:
        if profile.forwards_metadata:
            body["metadata"] = ext.metadata
        else:
            dropped.append("metadata")
    if request.stream:
        body["stream"] = True
        # The gateway bills every stream, so it always asks for the usage chunk; the decoder drops it
        # again for clients who did not ask.
        body["stream_options"] = {"include_usage": True}
    return body, dropped


def _write_response_format(body: JSON, fmt: JSON, profile: VendorProfile, dropped: list[str]) -> None:
    kind = fmt.get("type")
    if kind == "text" or kind in profile.json_formats:
        body["response_format"] = fmt
    elif kind == "json_schema" and "json_object" in profile.json_formats:
        body["response_format"] = {"type": "json_object"}  # still JSON, without the schema
        dropped.append("response_format.json_schema")
    else:
        dropped.append("response_format")


def _write_reasoning(
    body: JSON, request: ChatRequest, profile: VendorProfile, options: ModelOptions, dropped: list[str]
) -> None:
    reasoning = request.ext.reasoning
    on = reasoning.on
    efforts = tuple(options.efforts) if options.efforts else profile.efforts
    switch = profile.switch
    if switch == "thinking_type":
        body["thinking"] = {"type": "enabled" if on else "disabled"}
    elif switch == "enable_thinking":
        body["enable_thinking"] = on
    elif switch == "template_kwargs":
        body["chat_template_kwargs"] = {**(body.get("chat_template_kwargs") or {}), "enable_thinking": on}
    elif switch == "off_only" and not on:
        body["thinking"] = {"type": "disabled"}
    elif switch == "effort_none" and not on:
        if "none" in efforts:
            body["reasoning_effort"] = "none"
        else:
            dropped.append("enable_thinking")
    elif switch == "none" and reasoning.enabled is not None:
        dropped.append("enable_thinking")
    has_budget = reasoning.budget_tokens is not None
    has_effort = reasoning.effort is not None and reasoning.effort != "none"
    if not on or not (has_budget or has_effort):
        return
    # Both given: the budget wins where a budget can be sent, the effort where only an effort can.
    if profile.budget_field != "none" and (has_budget or not efforts):
        low, high = options.budget_range or profile.budget_range
        budget = budget_for(request, low, high)
        if profile.budget_field == "thinking_budget":
            body["thinking_budget"] = budget
        else:  # Gemini: a budget or an effort, never both
            body["extra_body"] = {"google": {"thinking_config": {"thinking_budget": budget, "include_thoughts": True}}}
    elif efforts:
        effort = reasoning.effort if has_effort else effort_for_budget(reasoning.budget_tokens or 0)
        body["reasoning_effort"] = clamp_effort(effort or "medium", [e for e in efforts if e != "none"])
    else:
        dropped.append("thinking.budget_tokens" if has_budget else "reasoning_effort")


def _write_search(
    body: JSON, ext: Extensions, profile: VendorProfile, options: ModelOptions, dropped: list[str]
) -> None:
    """`enable_search` / `search_config` in the vendor's own fields. `deepable` asks for the vendor's
    deeper search where it has one; `engine` reaches only GLM, which has a choice of engines."""
    search = ext.search
    assert search is not None
    kind = profile.search
    # OpenAI's chat completions search only on its search models (others answer 400): on by config.
    on = options.search if options.search is not None else kind not in ("openai", "none")
    if not on or kind == "none":
        dropped.append("enable_search")
        return
    if search.engine and kind != "zhipu":
        dropped.append("search_config.engine")
    if search.deep and kind == "moonshot":
        dropped.append("search_config.deepable")
    if kind == "qwen":
        body["enable_search"] = True
        qwen: JSON = dict(_object(body.get("search_options")))
        if search.deep:
            qwen["search_strategy"] = "max"
        if search.return_result:
            qwen["enable_source"] = True  # DashScope's own protocol returns them; its compatible mode does not
        if qwen:
            body["search_options"] = qwen
    elif kind == "zhipu":
        web_search: JSON = {"enable": True, "search_result": search.return_result}
        engine = zhipu_engine(search.engine)
        if engine:
            web_search["search_engine"] = engine
        elif search.engine:
            dropped.append("search_config.engine")
        if search.deep:
            web_search["content_size"] = "high"
        body["tools"] = [*(body.get("tools") or []), {"type": "web_search", "web_search": web_search}]
    elif kind == "moonshot":
        tools = body.get("tools") or []
        if not any(kimi_search.is_search_call(t) for t in tools):  # the client may have declared it itself
            body["tools"] = [*tools, kimi_search.TOOL]
        # $web_search works only with thinking off.
        if ext.reasoning.requested and ext.reasoning.on:
            dropped.append("enable_thinking")
        body.pop("reasoning_effort", None)
        body["thinking"] = {"type": "disabled"}
    else:  # openai
        openai: JSON = dict(_object(body.get("web_search_options")))
        if search.deep:
            openai["search_context_size"] = "high"
        body["web_search_options"] = openai


def _object(value: Any) -> JSON:
    """A client's own vendor field, kept when it is an object (anything else is replaced)."""
    return value if isinstance(value, dict) else {}


def zhipu_engine(engine: str | None) -> str | None:
    """GLM's name for a search engine: `search_pro` as it is, the aggregators' `glm/search-pro` and
    `zhipu/search-pro` as `search_pro`; None for no engine or another vendor's (`qwen/...`)."""
    if not engine:
        return None
    vendor, _, name = engine.rpartition("/")
    if vendor and vendor.lower() not in ("glm", "zhipu", "bigmodel"):
        return None
    return name.replace("-", "_") or None
