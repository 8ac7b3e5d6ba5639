"""Filling in what the OpenAI spec requires when an upstream is sloppy.

`completion` and `chunk` mutate the object in place and return the usage they counted, if any.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import orjson

from gateway.dialects.base import Usage
from gateway.types import JSON

# Reasoning text arrives under these names (vLLM since late 2025: `reasoning`); clients always get
# `reasoning_content`.
REASONING_ALIASES = ("reasoning",)
FINISH_REASONS = frozenset({"stop", "length", "tool_calls", "content_filter", "function_call"})
# Finish reasons other APIs use (Anthropic's stop_reason values among them) -> OpenAI's; anything
# else unknown becomes "stop".
FOREIGN_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
    "pause_turn": "length",  # Anthropic paused a long server-tool turn (web search): the reply is cut short
    "eos": "stop",
    "sensitive": "content_filter",
}


def completion_id() -> str:
    return "chatcmpl-" + os.urandom(12).hex()


def completion(obj: JSON, model: str) -> Usage | None:
    _envelope(obj, "chat.completion", model, completion_id)
    for choice, message in _choices(obj, "message"):
        _rename_reasoning(message)
        _text_fields(message)
        message["role"] = "assistant"
        message.setdefault("content", None)
        message.setdefault("refusal", None)
        tool_calls = message.get("tool_calls")
        if tool_calls:
            for call in tool_calls:
                call.setdefault("type", "function")
        elif "tool_calls" in message:
            del message["tool_calls"]
        choice.setdefault("logprobs", None)
        choice["finish_reason"] = _finish_reason(choice.get("finish_reason"), bool(tool_calls)) or "stop"
    usage = obj.get("usage")
    if isinstance(usage, dict):
        return _usage(usage)
    obj.pop("usage", None)
    return None


def chunk(obj: JSON, model: str, stream_id: Callable[[], str], created: int) -> Usage | None:
    """`stream_id` gives the id to use when the upstream sent none: the same one for every chunk."""
    _envelope(obj, "chat.completion.chunk", model, stream_id, created)
    for choice, delta in _choices(obj, "delta"):
        if "usage" in choice:  # Kimi streams its usage inside the last choice: OpenAI's place is the chunk's
            usage = choice.pop("usage")
            if isinstance(usage, dict) and not isinstance(obj.get("usage"), dict):
                obj["usage"] = usage
        _rename_reasoning(delta)
        _text_fields(delta)
        tool_calls = delta.get("tool_calls")
        if isinstance(tool_calls, list):
            for i, call in enumerate(tool_calls):
                if isinstance(call, dict) and not isinstance(call.get("index"), int):
                    call["index"] = i
        choice["finish_reason"] = _finish_reason(choice.get("finish_reason"), False)
    usage = obj.get("usage")
    return _usage(usage) if isinstance(usage, dict) else None


def usage_of(usage: Any) -> Usage | None:
    """Token counts from an OpenAI-style usage object, wherever the vendor put the details."""
    if not isinstance(usage, dict):
        return None
    get = usage.get
    prompt = token_count(get("prompt_tokens"))
    completion_tokens = token_count(get("completion_tokens"))
    counted = Usage(prompt, completion_tokens, token_count(get("total_tokens")) or prompt + completion_tokens)
    # Most replies carry few of the detail fields: each part is looked at only when present.
    p = get("prompt_tokens_details")
    if type(p) is dict and p:
        counted.cached_tokens = token_count(p.get("cached_tokens"))
        counted.cache_write_tokens = token_count(p.get("cache_write_tokens")) or token_count(
            p.get("cache_creation_tokens")
        )
        counted.audio_tokens = token_count(p.get("audio_tokens"))
        counted.image_tokens = token_count(p.get("image_tokens"))
        counted.video_tokens = token_count(p.get("video_tokens"))
    if not counted.cached_tokens:
        counted.cached_tokens = token_count(get("prompt_cache_hit_tokens")) or token_count(get("cached_tokens"))
    c = get("completion_tokens_details")
    if type(c) is dict and c:
        counted.reasoning_tokens = token_count(c.get("reasoning_tokens"))
        counted.audio_tokens += token_count(c.get("audio_tokens"))
        counted.image_tokens += token_count(c.get("image_tokens"))
        counted.video_tokens += token_count(c.get("video_tokens"))
        counted.accepted_prediction_tokens = token_count(c.get("accepted_prediction_tokens"))
        counted.rejected_prediction_tokens = token_count(c.get("rejected_prediction_tokens"))
    billed = get("billed_units")
    if billed is not None and type(billed) in (int, float):
        counted.billed_units = float(billed)
    if "citation_tokens" in usage:
        counted.citation_tokens = token_count(usage["citation_tokens"])
    return counted


def _choices(obj: JSON, inner: str) -> list[tuple[JSON, JSON]]:
    """Each choice with its `message` or `delta`, both made objects, `index` filled in."""
    choices = obj.get("choices")
    if not isinstance(choices, list):
        choices = obj["choices"] = []
    out = []
    for position, choice in enumerate(choices):
        if not isinstance(choice, dict):
            choice = choices[position] = {}
        if not isinstance(choice.get("index"), int):
            choice["index"] = position
        if not isinstance(choice.get(inner), dict):
            choice[inner] = {}
        out.append((choice, choice[inner]))
    return out


def _envelope(obj: JSON, kind: str, model: str, make_id: Callable[[], str], created: int | None = None) -> None:
    obj["object"] = kind
    if not isinstance(obj.get("id"), str) or not obj["id"]:
        obj["id"] = make_id()
    if not isinstance(obj.get("created"), int):
        obj["created"] = created if created is not None else int(time.time())
    if not isinstance(obj.get("model"), str) or not obj["model"]:
        obj["model"] = model


def _finish_reason(value: Any, has_tool_calls: bool) -> str | None:
    if value is None:
        return "tool_calls" if has_tool_calls else None
    if type(value) is not str:
        return "stop"
    return value if value in FINISH_REASONS else FOREIGN_FINISH_REASONS.get(value, "stop")


def _rename_reasoning(message: JSON) -> None:
    for alias in REASONING_ALIASES:
        if alias in message:
            text = message.pop(alias)
            if text is not None and message.get("reasoning_content") is None:
                message["reasoning_content"] = text


def _text_fields(message: JSON) -> None:
    """`content` and `reasoning_content` as the spec has them, strings (or null), whatever the
    upstream sent: Mistral's reasoning models send content as a list of parts, text and thinking
    (whose text is the reasoning); another value becomes its JSON text."""
    content = message.get("content")
    if content is not None and type(content) is not str:
        text, thinking = _texts(content)
        message["content"] = text
        if thinking is not None and message.get("reasoning_content") is None:
            message["reasoning_content"] = thinking
    reasoning = message.get("reasoning_content")
    if reasoning is not None and type(reasoning) is not str:
        text, thinking = _texts(reasoning)
        message["reasoning_content"] = "".join(t for t in (thinking, text) if t is not None)


def _texts(value: Any, depth: int = 0) -> tuple[str | None, str | None]:
    """(text, thinking) of a value that should have been a string; None where there is none. Parts
    nest a level or two (a thinking part's parts): deeper than `_PART_DEPTH`, nothing is read."""
    if type(value) is str:
        return value, None
    if depth > _PART_DEPTH:
        return None, None
    if type(value) is dict:
        if value.get("type") == "thinking":
            return None, _texts(value.get("thinking"), depth + 1)[0]
        text = value.get("text")
        if type(text) is str:
            return text, None
        # A part of another kind (a reference, an image) has no text to give; a bare object is shown.
        return (None, None) if "type" in value else (_json(value), None)
    if type(value) is list:
        texts, thoughts = [], []
        for part in value:
            text, thinking = _texts(part, depth + 1)
            if text is not None:
                texts.append(text)
            if thinking is not None:
                thoughts.append(thinking)
        return ("".join(texts) if texts else None), ("".join(thoughts) if thoughts else None)
    return (None, None) if value is None else (_json(value), None)


_PART_DEPTH = 4


def _json(value: Any) -> str | None:
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:  # nested past what orjson writes
        return None


def _usage(usage: JSON) -> Usage:
    """Required counts present, and the detail fields filled from wherever the vendor put them."""
    for name in ("prompt_tokens", "completion_tokens"):
        usage[name] = token_count(usage.get(name))
    if not isinstance(usage.get("total_tokens"), int):
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    counted = usage_of(usage)
    assert counted is not None
    for details, name, value in (
        ("prompt_tokens_details", "cached_tokens", counted.cached_tokens),
        ("completion_tokens_details", "reasoning_tokens", counted.reasoning_tokens),
    ):
        if value:
            if not isinstance(usage.get(details), dict):
                usage[details] = {}
            usage[details].setdefault(name, value)
    return counted


def text_length(delta: JSON) -> int:
    """Characters of generated text in a chunk's delta (content, reasoning, tool arguments): what a
    stream's completion tokens are estimated from when the upstream never reported them."""
    n = 0
    for name in ("content", "reasoning_content"):
        value = delta.get(name)
        if type(value) is str:
            n += len(value)
    calls = delta.get("tool_calls")
    if type(calls) is list:
        for call in calls:
            function = call.get("function") if type(call) is dict else None
            arguments = function.get("arguments") if type(function) is dict else None
            if type(arguments) is str:
                n += len(arguments)
    return n


def token_count(value: Any) -> int:
    """A token count from a vendor's JSON: a non-negative integer, else 0."""
    # `type(...) is int`: JSON's integers are exactly int, and a bool is not a count.
    return value if type(value) is int and value > 0 else 0


def usage_object(usage: Usage) -> JSON:
    """The OpenAI usage object of counts the gateway added up itself (several rounds of one request)."""
    obj: JSON = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }
    if usage.cache_write_tokens:
        obj["prompt_tokens_details"]["cache_write_tokens"] = usage.cache_write_tokens
    if usage.billed_units is not None:
        obj["billed_units"] = usage.billed_units
    return obj
