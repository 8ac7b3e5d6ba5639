"""Kimi's built-in web search, `$web_search`: a tool the model calls and the caller answers by sending
the call's arguments back unchanged, while Moonshot runs the search. The gateway answers these calls
itself, so the client sees one reply; each further round is the same request with the assistant's
call and the answers added to `messages` (Moonshot's documented loop). Thinking must be off.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson

from gateway.dialects.base import UpstreamRequest, Usage
from gateway.dialects.normalize import usage_object
from gateway.types import JSON

NAME = "$web_search"
TOOL: JSON = {"type": "builtin_function", "function": {"name": NAME}}
# Rounds the gateway runs for one client request at most; a model still calling the tool after these
# is the upstream's failure (502, or an error event in a stream).
MAX_ROUNDS = 4


def is_search_call(call: Any) -> bool:
    return type(call) is dict and type(call.get("function")) is dict and call["function"].get("name") == NAME


def answer(content: Any, calls: list[JSON]) -> list[JSON] | None:
    """The messages that answer an assistant turn whose tool calls are all `$web_search` (None
    otherwise: the client's own tools are the client's to answer)."""
    if not calls or not all(is_search_call(c) for c in calls):
        return None
    assistant: JSON = {"role": "assistant", "content": content, "tool_calls": calls}
    return [
        assistant,
        *(
            {
                "role": "tool",
                "tool_call_id": call.get("id"),
                "name": NAME,
                "content": call["function"].get("arguments") or "",
            }
            for call in calls
        ),
    ]


def turn_of(choice: JSON) -> list[JSON] | None:
    """The next round's messages when a reply's tool calls are all `$web_search`. When the client's
    own tools are called too, the search calls are taken out of the reply (the client cannot answer
    them) and it goes to the client, as a stream's would."""
    message = choice["message"]
    calls = message.get("tool_calls") or []
    turn = answer(message.get("content"), calls)
    if turn is None and any(is_search_call(c) for c in calls):
        message["tool_calls"] = [c for c in calls if not is_search_call(c)]
    return turn


def next_round(built: UpstreamRequest, messages: list[JSON]) -> UpstreamRequest:
    """The request of the next round: the last one, `messages` added."""
    body = orjson.loads(built.body)
    body["messages"] = [*body["messages"], *messages]
    return dataclasses.replace(built, body=orjson.dumps(body))


def with_usage(reply: bytes, usage: Usage | None) -> bytes:
    """The last round's reply, its usage that of every round."""
    if usage is None:
        return reply
    obj = orjson.loads(reply)
    obj["usage"] = usage_object(usage)
    return orjson.dumps(obj)
