"""Anthropic Messages facts shared by reply and stream decoding."""

from __future__ import annotations

from typing import Any

from gateway.dialects.base import Usage, embedded_error
from gateway.dialects.normalize import FOREIGN_FINISH_REASONS, token_count
from gateway.errors import UpstreamStatusError
from gateway.types import JSON

JSON_TOOL = "json_tool_call"  # the forced tool that carries JSON mode


def finish_reason(stop_reason: Any, answered_by_json_tool: bool = False) -> str:
    if stop_reason == "tool_use" and answered_by_json_tool:
        return "stop"
    return FOREIGN_FINISH_REASONS.get(stop_reason, "stop")


def openai_usage(usage: JSON) -> tuple[JSON, Usage]:
    """OpenAI usage from Anthropic's: `prompt_tokens` counts cache reads and writes too; web searches are
    `billed_units`."""
    fresh = token_count(usage.get("input_tokens"))
    cache_read = token_count(usage.get("cache_read_input_tokens"))
    cache_write = token_count(usage.get("cache_creation_input_tokens"))
    output = token_count(usage.get("output_tokens"))
    prompt = fresh + cache_read + cache_write
    obj: JSON = {
        "prompt_tokens": prompt,
        "completion_tokens": output,
        "total_tokens": prompt + output,
        "prompt_tokens_details": {"cached_tokens": cache_read, "cache_write_tokens": cache_write},
    }
    # Web searches are billed per search: the aggregators' `billed_units`.
    server_tools = usage.get("server_tool_use")
    searches = token_count(server_tools.get("web_search_requests")) if isinstance(server_tools, dict) else 0
    billed = float(searches) if searches else None
    if billed is not None:
        obj["billed_units"] = billed
    return obj, Usage(prompt, output, prompt + output, cache_read, billed_units=billed, cache_write_tokens=cache_write)


def anthropic_error(obj: JSON) -> UpstreamStatusError:
    """An `error` event or body; `overloaded_error` is Anthropic's 529 and becomes a 503."""
    error = obj.get("error")
    overloaded = isinstance(error, dict) and error.get("type") == "overloaded_error"
    return embedded_error(obj, upstream_status=529 if overloaded else 502)
