"""A fake OpenAI upstream: a real aiohttp server on loopback speaking the OpenAI wire format.

The model name the gateway sends upstream (less a leading `fake-`) picks the behaviour:

    ok / anything else   a normal reply (streamed in several writes with short pauses)
    slow                 streamed with 50 ms pauses
    sloppy               leaves out fields the spec requires (refusal, logprobs, ids, indexes, [DONE])
    usage-in-last        a vendor style: usage rides on the last content chunk, not a separate one
    crlf                 CRLF line ends, keep-alive comments, events split across writes
    status-NNN           answers HTTP NNN with an OpenAI error body (429 and 503 add Retry-After; 404 is
                         OpenAI's model_not_found)
    hang                 never answers
    slow-start           streams, but only after a 2 s pause
    stall                streams two chunks, then goes quiet for good
    truncated            streams two chunks and half of the third, then ends the body
    bad-utf8             streams a chunk whose bytes are not UTF-8 (buffered: a body that is not)
    trickle              streams its chunks a few bytes per write
    no-done              streams a complete reply but never sends [DONE]
    drop                 streams two chunks, then closes the connection without finishing
    mid-error            streams a chunk, then an error event (as vendors do after a 200)
    not-json             answers 200 with an HTML page
    leaky-401            a 401 whose message quotes the upstream key
    leaky-url            a 400 whose message quotes the URL it was called on
    deep                 a reply (or, streamed, its third chunk) with a field nested 300 levels deep

Under `/vendor/<name>/v1/...` replies carry reasoning text and usage details where that vendor puts
them (DeepSeek: prompt_cache_hit_tokens; Kimi: usage.cached_tokens; vLLM: `reasoning`, no details; ...).
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.support.fake_responses import FakeResponses
from tests.support.openai_errors import openai_error, type_for

UPSTREAM_KEY = "sk-upstream-secret-0123456789"
ID = "chatcmpl-Bx7fakeUpstream0001"
CREATED = 1_763_700_000
FINGERPRINT = "fp_f33640a400"


REASONING = "Let me think about it."

# vendor -> (field of the reasoning text or None, usage style)
VENDOR_REPLIES: dict[str, tuple[str | None, str]] = {
    "openai": (None, "details"),
    "deepseek": ("reasoning_content", "deepseek"),
    "qwen": ("reasoning_content", "details"),
    "zhipu": ("reasoning_content", "details"),
    "doubao": ("reasoning_content", "details"),
    "moonshot": ("reasoning_content", "moonshot"),
    "gemini": ("reasoning_content", "details"),
    "vllm": ("reasoning", "details"),
    "sglang": ("reasoning_content", "details"),
    "generic": ("reasoning_content", "details"),
}


@dataclass
class Seen:
    headers: dict[str, str]
    body: dict[str, Any]
    path: str = ""


@dataclass
class FakeOpenAI:
    requests: list[Seen] = field(default_factory=list)
    streams_cut: int = 0  # streams whose reader went away before the end
    endless_sent: int = 0  # bytes the `endless` streams got out
    hangs_cut: int = 0  # `hang` requests whose caller closed the connection
    native_responses: FakeResponses = field(default_factory=FakeResponses)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/vendor/{vendor}/v1/chat/completions", self.chat)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_post("/v1/responses", self.responses)
        app.router.add_post("/vendor/{vendor}/v1/responses", self.responses)
        return app

    async def responses(self, request: web.Request) -> web.StreamResponse:
        """OpenAI's own Responses API (see fake_responses.py)."""
        body = await request.json()
        self.requests.append(Seen({k.lower(): v for k, v in request.headers.items()}, body, request.path))
        if request.headers.get("authorization") != f"Bearer {UPSTREAM_KEY}":
            return openai_error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
        return await self.native_responses.handle(request, body)

    async def embeddings(self, request: web.Request) -> web.Response:
        """OpenAI's embeddings: a vector per input (`dimensions` long, default 4), floats or base64
        float32; `status-N` models fail with N, `sloppy` leaves out `object` and `index`."""
        body = await request.json()
        self.requests.append(Seen({k.lower(): v for k, v in request.headers.items()}, body, request.path))
        if request.headers.get("authorization") != f"Bearer {UPSTREAM_KEY}":
            return openai_error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
        model = str(body["model"]).removeprefix("fake-")
        if model.startswith("status-"):
            status = int(model.removeprefix("status-"))
            return openai_error(status, f"fake upstream says {status}", type_for(status), None)
        raw = body["input"]
        inputs = [raw] if isinstance(raw, str) or (raw and isinstance(raw[0], int)) else raw
        size = int(body.get("dimensions") or 4)
        data = []
        for i, item in enumerate(inputs):
            vector = [round((len(str(item)) + j) / 100, 4) for j in range(size)]
            embedding: Any = vector
            if body.get("encoding_format") == "base64":
                embedding = base64.b64encode(struct.pack(f"<{size}f", *vector)).decode()
            entry: dict[str, Any] = {"object": "embedding", "index": i, "embedding": embedding}
            if model == "sloppy":
                del entry["object"], entry["index"]
            data.append(entry)
        tokens = sum(len(str(item).split()) for item in inputs)
        reply = {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return web.json_response(reply)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(Seen({k.lower(): v for k, v in request.headers.items()}, body, request.path))
        vendor = request.match_info.get("vendor")
        if vendor is not None:
            return await self._vendor_reply(request, vendor, body)
        if request.headers.get("authorization") != f"Bearer {UPSTREAM_KEY}":
            return openai_error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
        model = body["model"].removeprefix("fake-")
        if model.startswith("status-"):
            status = int(model.removeprefix("status-"))
            headers = {"retry-after": "1"} if status in (429, 503) else {}
            if status == 404:  # what OpenAI answers for a model it does not have
                message = f"The model `{body['model']}` does not exist or you do not have access to it."
                return openai_error(404, message, "invalid_request_error", "model_not_found")
            return openai_error(status, f"fake upstream says {status}", type_for(status), None, headers=headers)
        if model == "leaky-url":
            return openai_error(400, f"Bad request to {request.url}", "invalid_request_error", None)
        if model == "leaky-401":
            return openai_error(401, f"Incorrect API key provided: {UPSTREAM_KEY}.", "invalid_request_error", "bad")
        if model == "hang":
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:  # the caller closed the connection
                self.hangs_cut += 1
                raise
        if model == "tool-caller":
            return await self._tool_caller(request, body)
        if model == "not-json":
            return web.Response(text="<html>502 Bad Gateway</html>", content_type="text/html")
        if model in ("truncated", "bad-utf8") and not body.get("stream"):
            whole = json.dumps(_completion(body["model"], _last_user_text(body), sloppy=False)).encode()
            broken = (
                whole[: len(whole) // 2]
                if model == "truncated"
                else whole.replace(b'"content": "', b'"content": "\xff', 1)
            )
            return web.Response(body=broken, content_type="application/json")
        text = _last_user_text(body)
        if body.get("stream"):
            return await self._stream(request, body, model, text)
        completion = _completion(body["model"], text, sloppy=model == "sloppy")
        if model == "deep":
            completion["extra"] = _nested(300)
        return web.Response(
            body=json.dumps(completion, indent=2).encode(),
            headers={
                "content-type": "application/json",
                "openai-processing-ms": "12",
                "x-request-id": "req_up",
                "set-cookie": "__cf_bm=upstream-session; Path=/; HttpOnly",  # as Cloudflare-fronted APIs do
            },
        )

    async def _tool_caller(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        """Calls the first tool with {"city": "Paris"} until the last message is a tool result; then
        answers with that result."""
        last = body["messages"][-1]
        message: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None}
        if last.get("role") == "tool":
            message["content"], finish = f"The tool said: {last.get('content')}", "stop"
        else:
            name = body["tools"][0]["function"]["name"]
            call = {"id": "call_fake1", "type": "function", "function": {"name": name, "arguments": '{"city":"Paris"}'}}
            message["tool_calls"], finish = [call], "tool_calls"
        usage = {"prompt_tokens": 30, "completion_tokens": 9, "total_tokens": 39}
        envelope = {"id": ID, "created": CREATED, "model": body["model"]}
        if not body.get("stream"):
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
            reply = {**envelope, "object": "chat.completion", "choices": [choice], "usage": usage}
            return web.json_response(reply)
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
        if message.get("tool_calls"):
            call = message["tool_calls"][0]
            deltas.append({"tool_calls": [{"index": 0, **call, "function": {**call["function"], "arguments": ""}}]})
            deltas += [
                {"tool_calls": [{"index": 0, "function": {"arguments": part}}]} for part in ('{"city":', '"Paris"}')
            ]
        else:
            words = message["content"].split(" ")
            deltas += [{"content": word + (" " if i < len(words) - 1 else "")} for i, word in enumerate(words)]
        chunks = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None} for delta in deltas]
        chunks.append({"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish})
        for choice in chunks:
            event = {**envelope, "object": "chat.completion.chunk", "choices": [choice]}
            await resp.write(f"data: {json.dumps(event)}\n\n".encode())
        if (body.get("stream_options") or {}).get("include_usage"):
            event = {**envelope, "object": "chat.completion.chunk", "choices": [], "usage": usage}
            await resp.write(f"data: {json.dumps(event)}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        return resp

    async def _stream(self, request: web.Request, body: dict[str, Any], model: str, text: str) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"}
        )
        await resp.prepare(request)
        try:
            await self._events(request, resp, body, model, text)
        except ConnectionError:
            self.streams_cut += 1
        except asyncio.CancelledError:  # the reader closed the connection while we waited
            self.streams_cut += 1
            raise
        return resp

    async def _events(
        self, request: web.Request, resp: web.StreamResponse, body: dict[str, Any], model: str, text: str
    ) -> None:
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        events = _chunks(body["model"], model, text, include_usage)
        pause = 0.05 if model == "slow" else 0.002
        newline = "\r\n" if model == "crlf" else "\n"
        if model == "slow-start":
            await asyncio.sleep(2)
        if model == "endless":  # as fast as the reader takes it, never ending
            wire = f"data: {events[1]}{newline}{newline}".encode()
            while True:
                await resp.write(wire)
                self.endless_sent += len(wire)
        for i, event in enumerate(events):
            if model == "stall" and i == 2:
                await asyncio.sleep(3600)
            if model == "drop" and i == 2:
                assert request.transport is not None
                request.transport.close()
                return
            if model == "mid-error" and i == 2:
                error = {"error": {"message": "overloaded", "type": "server_error", "param": None, "code": None}}
                await resp.write(f"data: {json.dumps(error)}{newline}{newline}".encode())
                return
            if model == "deep" and i == 2:
                event = json.dumps({**json.loads(event), "extra": _nested(300)})
            wire = f"data: {event}{newline}{newline}".encode()
            if model == "truncated" and i == 2:
                await resp.write(wire[: len(wire) // 2])
                await resp.write_eof()
                return
            if model == "bad-utf8" and i == 2:
                wire = wire.replace(b'"content":"', b'"content":"\xff\xfe', 1)
            if model == "trickle":
                for start in range(0, len(wire), 7):
                    await resp.write(wire[start : start + 7])
                    await asyncio.sleep(0.001)
                continue
            if model == "crlf":
                await resp.write(b": keep-alive\r\n\r\n")
                half = len(wire) // 2 + 1  # split inside the JSON, and between CR and LF at the end
                await resp.write(wire[:half])
                await asyncio.sleep(0)
                await resp.write(wire[half:-1])
                await resp.write(wire[-1:])
            else:
                await resp.write(wire)
            await asyncio.sleep(pause)
        if model not in ("sloppy", "no-done"):
            await resp.write(f"data: [DONE]{newline}{newline}".encode())
        await resp.write_eof()

    async def _vendor_reply(self, request: web.Request, vendor: str, body: dict[str, Any]) -> web.StreamResponse:
        if vendor == "moonshot" and any(t.get("type") == "builtin_function" for t in body.get("tools") or []):
            return await _kimi_search_reply(request, body)
        field, style = VENDOR_REPLIES[vendor]
        json_mode = (body.get("response_format") or {}).get("type") in ("json_object", "json_schema")
        text = '{"ok": true}' if json_mode else _last_user_text(body)
        usage = _vendor_usage(style)
        annotations, top = _search_results(vendor, body)
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if field:
                message[field] = REASONING
            if annotations:
                message["annotations"] = annotations
            reply = {
                "id": ID,
                "object": "chat.completion",
                "created": CREATED,
                "model": body["model"],
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": usage,
                "citations": ["https://example.com/source"],
                **top,
            }
            return web.json_response(reply)
        resp = web.StreamResponse(headers={"content-type": "text/event-stream; charset=utf-8"})
        await resp.prepare(request)

        def event(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
            chunk = {
                "id": ID,
                "object": "chat.completion.chunk",
                "created": CREATED,
                "model": body["model"],
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                **extra,
            }
            return f"data: {json.dumps(chunk)}\n\n".encode()

        # GLM's results come first; an aggregator upstream's own `citations` come on its first chunk.
        await resp.write(event({"role": "assistant", "content": ""}, citations=["https://example.com/source"], **top))
        if field:
            for piece in ("Let me ", "think about it."):
                await resp.write(event({field: piece}))
        for piece in (text[:5], text[5:]):
            await resp.write(event({"content": piece}))
        if annotations:  # OpenAI: the annotations in a delta of their own, after the text
            await resp.write(event({"annotations": annotations}))
        if vendor == "moonshot":  # Kimi streams its usage inside the last choice, whatever was asked
            finish = event({}, "stop").replace(b'"finish_reason": "stop"}', b'"finish_reason": "stop", "usage": '
                                               + json.dumps(usage).encode() + b"}")  # fmt: skip
            await resp.write(finish)
        else:
            await resp.write(event({}, "stop"))
        if vendor != "moonshot" and (body.get("stream_options") or {}).get("include_usage"):
            await resp.write(
                event({}, None, usage=usage).replace(
                    b'"choices": [{"index": 0, "delta": {}, "finish_reason": null}]', b'"choices": []'
                )
            )
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


KIMI_SEARCH_ARGUMENTS = '{"search_result":{"search_id":"srch-7f3a"},"usage":{"total_tokens":1024}}'
KIMI_ANSWER = "Hangzhou is sunny today."


async def _kimi_search_reply(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    """Kimi with its `$web_search` tool, as Moonshot documents the loop: a first turn calling the tool
    (finish_reason tool_calls); a turn that answers it with the arguments sent back unchanged, under
    the call's id, gets the answer; any other answer is a 400. Thinking must be off. `search-twice`
    in the question makes the model search again after the first answer, `search-forever` always;
    `search-and-tool` calls the client's `get_weather` beside the search; `fail-after-search` fails
    (500) once the search was answered; `search-quietly` streams a searching turn without the chunk
    that opens it (its role), so that no event of it is one the client sees."""
    messages = body["messages"]
    if body.get("thinking") != {"type": "disabled"}:
        return openai_error(400, "thinking must be disabled to use $web_search", "invalid_request_error", None)
    answered = [m for m in messages if m.get("role") == "tool"]
    calls = [c for m in messages if m.get("role") == "assistant" for c in m.get("tool_calls") or []]
    for call, answer in zip(calls, answered, strict=False):
        ok = (answer.get("tool_call_id"), answer.get("name"), answer.get("content")) == (
            call["id"],
            "$web_search",
            call["function"]["arguments"],
        )
        if not ok:
            return openai_error(400, f"tool answer does not match the call: {answer}", "invalid_request_error", None)
    question = _last_user_text(body)
    if answered and "fail-after-search" in question:
        return openai_error(500, "fake upstream says 500", "server_error", None)
    wanted = 99 if "search-forever" in question else 2 if "search-twice" in question else 1
    usage = {
        "prompt_tokens": 20 + 1024 * len(answered),
        "completion_tokens": 6,
        "total_tokens": 26 + 1024 * len(answered),
    }
    if len(answered) < wanted:
        call = {"index": 0, "id": f"$web_search-{len(answered)}", "type": "builtin_function",
                "function": {"name": "$web_search", "arguments": KIMI_SEARCH_ARGUMENTS}}  # fmt: skip
        message: dict[str, Any] = {"role": "assistant", "content": "", "tool_calls": [call]}
        if "search-and-tool" in question:  # the client's own tool called in the same turn
            weather = {"name": "get_weather", "arguments": '{"city":"Paris"}'}
            message["tool_calls"].append({"index": 1, "id": "call_w", "type": "function", "function": weather})
        finish = "tool_calls"
    else:
        message = {"role": "assistant", "content": KIMI_ANSWER}
        finish = "stop"
    if not body.get("stream"):
        choice = {"index": 0, "message": message, "finish_reason": finish}
        return web.json_response({"id": ID, "object": "chat.completion", "created": CREATED, "model": body["model"],
                                  "choices": [choice], "usage": usage})  # fmt: skip
    resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await resp.prepare(request)

    def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        chunk = {"id": f"{ID}-{len(answered)}", "object": "chat.completion.chunk", "created": CREATED,
                 "model": body["model"], "choices": choices, **extra}  # fmt: skip
        return f"data: {json.dumps(chunk)}\n\n".encode()

    if finish != "tool_calls" or "search-quietly" not in question:
        await resp.write(event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]))
    if finish == "tool_calls":
        for call in message["tool_calls"]:
            index, name = call["index"], call["function"]["name"]
            first = {**call, "function": {"name": name, "arguments": ""}}
            await resp.write(event([{"index": 0, "delta": {"tool_calls": [first]}, "finish_reason": None}]))
            arguments = call["function"]["arguments"]
            for piece in (arguments[:10], arguments[10:]):
                delta = {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}
                await resp.write(event([{"index": 0, "delta": delta, "finish_reason": None}]))
    else:
        for piece in (KIMI_ANSWER[:8], KIMI_ANSWER[8:]):
            await resp.write(event([{"index": 0, "delta": {"content": piece}, "finish_reason": None}]))
    # Kimi streams its usage inside the last choice, whatever was asked.
    await resp.write(event([{"index": 0, "delta": {}, "finish_reason": finish, "usage": usage}]))
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


def _search_results(vendor: str, body: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The sources a vendor returns when asked to search, as it returns them: OpenAI's search models
    as `url_citation` annotations on the message; GLM as a top-level `web_search` list (only with
    `search_result: true`). Qwen's compatible mode returns none (DashScope documents so)."""
    if vendor == "openai" and "web_search_options" in body:
        return [
            {"type": "url_citation", "url_citation": {"start_index": 0, "end_index": 4, "url": url, "title": "T"}}
            for url in ("https://openai.example/a", "https://openai.example/b")
        ], {}
    glm = [t.get("web_search") or {} for t in body.get("tools") or [] if t.get("type") == "web_search"]
    if vendor == "zhipu" and glm and glm[0].get("search_result"):
        results = [
            {"title": "A", "link": "https://glm.example/a", "content": "...", "media": "GLM", "refer": "ref_1"},
            {"title": "B", "link": "https://glm.example/b", "content": "...", "media": "GLM", "refer": "ref_2"},
        ]
        return [], {"web_search": results}
    return [], {}


def _vendor_usage(style: str) -> dict[str, Any]:
    usage: dict[str, Any] = {"prompt_tokens": 19, "completion_tokens": 11, "total_tokens": 30, "billed_units": 0.75}
    if style == "deepseek":
        usage.update(
            prompt_cache_hit_tokens=3, prompt_cache_miss_tokens=16, completion_tokens_details={"reasoning_tokens": 2}
        )
    elif style == "moonshot":
        usage.update(cached_tokens=3, completion_tokens_details={"reasoning_tokens": 2})
    else:
        usage.update(prompt_tokens_details={"cached_tokens": 3}, completion_tokens_details={"reasoning_tokens": 2})
    return usage


def _usage(text: str) -> dict[str, Any]:
    completion = len(text.split())
    return {
        "prompt_tokens": 19,
        "completion_tokens": completion,
        "total_tokens": 19 + completion,
        "prompt_tokens_details": {"cached_tokens": 3, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 2,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
        "billed_units": 1.5,
    }


def _completion(model: str, text: str, sloppy: bool) -> dict[str, Any]:
    if sloppy:
        return {
            "model": model,
            "choices": [{"message": {"content": text}, "finish_reason": "eos"}],
            "usage": {"prompt_tokens": 19, "completion_tokens": 2},
        }
    return {
        "id": ID,
        "object": "chat.completion",
        "created": CREATED,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None, "annotations": []},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": _usage(text),
        "service_tier": "default",
        "system_fingerprint": FINGERPRINT,
    }


def _chunks(model: str, behaviour: str, text: str, include_usage: bool) -> list[str]:
    sloppy = behaviour == "sloppy"

    def chunk(delta: dict[str, Any], finish: str | None, usage: Any = None) -> str:
        if sloppy:
            return json.dumps({"choices": [{"delta": delta, "finish_reason": finish}]}, separators=(",", ":"))
        obj: dict[str, Any] = {
            "id": ID,
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": model,
            "service_tier": "default",
            "system_fingerprint": FINGERPRINT,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if include_usage:
            obj["usage"] = usage
        obj["obfuscation"] = "x9Q"
        return json.dumps(obj, separators=(",", ":"))

    words = text.split(" ")
    pieces = [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]
    events = [chunk({"role": "assistant", "content": "", "refusal": None}, None)]
    events += [chunk({"content": p}, None) for p in pieces]
    if behaviour == "usage-in-last":
        events.append(chunk({}, "stop", _usage(text)))
        return events
    events.append(chunk({}, "stop"))
    if include_usage and not sloppy:
        usage_chunk = json.loads(chunk({}, None, _usage(text)))
        usage_chunk["choices"] = []
        events.append(json.dumps(usage_chunk, separators=(",", ":")))
    return events


def _nested(levels: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(levels - 1):
        value = [value]
    return value


def _last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages", [])):
        if message.get("role") == "user" and isinstance(message.get("content"), str):
            return str(message["content"])
    return "nothing to say"
