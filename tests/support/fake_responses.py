"""OpenAI's own Responses API, faked for `FakeOpenAI` (POST /v1/responses): the reply says what the
last input text was, stored responses can be continued with `previous_response_id` (an unknown one
is OpenAI's 404), and streams are the typed events OpenAI sends (`event:` and `data:` lines,
`sequence_number`s, no [DONE]). `fake-status-NNN` models fail with NNN."""

from __future__ import annotations

import itertools
import json
from typing import Any

from aiohttp import web

from tests.support.openai_errors import openai_error, type_for

_ids = itertools.count(1)
USAGE = {
    "input_tokens": 14,
    "input_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 0},
    "output_tokens": 9,
    "output_tokens_details": {"reasoning_tokens": 0},
    "total_tokens": 23,
}


class FakeResponses:
    def __init__(self) -> None:
        self.stored: dict[str, dict[str, Any]] = {}

    async def handle(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        model = str(body.get("model", "")).removeprefix("fake-")
        if model.startswith("status-"):
            status = int(model.removeprefix("status-"))
            return openai_error(status, f"fake upstream says {status}", type_for(status), None)
        previous = body.get("previous_response_id")
        history: list[str] = []
        if previous is not None:
            if previous not in self.stored:
                message = f"Previous response with id '{previous}' not found."
                return openai_error(404, message, "invalid_request_error", None, param="previous_response_id")
            history = self.stored[previous]["history"]
        said = _last_text(body.get("input"))
        text = f"You said: {said}" + (f" (after: {' / '.join(history)})" if history else "")
        number = next(_ids)
        response = _response(body, f"resp_fake{number:04d}", f"msg_fake{number:04d}", text)
        if body.get("store", True):
            self.stored[response["id"]] = {"history": [*history, said]}
        if not body.get("stream"):
            return web.json_response(response)
        return await _stream(request, response, text)


def _last_text(items: Any) -> str:
    if isinstance(items, str):
        return items
    for item in reversed(items or []):
        content = item.get("content") if isinstance(item, dict) else None
        if isinstance(content, str):
            return content
        for part in content or []:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                return str(part["text"])
    return ""


def _response(body: dict[str, Any], response_id: str, message_id: str, text: str | None) -> dict[str, Any]:
    done = text is not None
    output = []
    if done:
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        output.append({"type": "message", "id": message_id, "status": "completed", "role": "assistant",
                       "content": [part]})  # fmt: skip
    return {
        "id": response_id,
        "object": "response",
        "created_at": 1_763_700_000,
        "status": "completed" if done else "in_progress",
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": body["model"],
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None},
        "store": body.get("store", True),
        "temperature": 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "metadata": body.get("metadata") or {},
        **({"usage": USAGE} if done else {}),
    }


async def _stream(request: web.Request, response: dict[str, Any], text: str) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"content-type": "text/event-stream; charset=utf-8"})
    await resp.prepare(request)
    message_id = response["output"][0]["id"]
    opened = {k: v for k, v in response.items() if k != "usage"} | {"status": "in_progress", "output": []}
    item = {"type": "message", "id": message_id, "status": "in_progress", "role": "assistant", "content": []}
    part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    where = {"item_id": message_id, "output_index": 0, "content_index": 0}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": opened},
        {"type": "response.in_progress", "response": opened},
        {"type": "response.output_item.added", "output_index": 0, "item": item},
        {"type": "response.content_part.added", **where, "part": part},
        *({"type": "response.output_text.delta", **where, "delta": piece, "logprobs": []}
          for piece in (text[:6], text[6:])),
        {"type": "response.output_text.done", **where, "text": text, "logprobs": []},
        {"type": "response.content_part.done", **where, "part": {**part, "text": text}},
        {"type": "response.output_item.done", "output_index": 0, "item": response["output"][0]},
        {"type": "response.completed", "response": response},
    ]  # fmt: skip
    for n, event in enumerate(events):
        data = json.dumps({**event, "sequence_number": n})
        await resp.write(f"event: {event['type']}\ndata: {data}\n\n".encode())
    await resp.write_eof()
    return resp
