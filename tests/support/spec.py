"""Validation of everything the gateway sends against the OpenAI OpenAPI spec in ../shared."""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import AsyncIterator, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import httpx
from openapi_schema_validator import OAS31Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC_PATH = Path(__file__).resolve().parents[3] / "shared" / "openai-openapi" / "openapi.normalized.json"


@cache
def _registry() -> Registry:
    if not SPEC_PATH.exists():
        raise RuntimeError(f"the OpenAI spec is missing: expected {SPEC_PATH} (../shared beside the repo)")
    spec = json.loads(SPEC_PATH.read_text())
    return Registry().with_resource("urn:oai", Resource(contents=spec, specification=DRAFT202012))


@cache
def _validator(schema: str) -> OAS31Validator:
    return OAS31Validator({"$ref": f"urn:oai#/components/schemas/{schema}"}, registry=_registry())


def schema_errors(schema: str, payload: Any) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in _validator(schema).iter_errors(payload)]


def assert_valid(schema: str, payload: Any) -> None:
    errors = schema_errors(schema, payload)
    assert not errors, f"{schema} violations: {errors}\npayload: {payload}"


def sse_payloads(raw: bytes) -> list[bytes]:
    """The `data:` payloads of an SSE body; asserts it has no other kind of line but comments."""
    out = []
    for block in raw.replace(b"\r\n", b"\n").split(b"\n\n"):
        if not block:
            continue
        for line in block.split(b"\n"):
            assert line.startswith(b"data: ") or line.startswith(b":"), f"unexpected SSE line {line!r}"
            if line.startswith(b"data: "):
                out.append(line[6:])
    return out


def check_exchange(path: str, status: int, content_type: str, body: bytes, complete: bool = True) -> int:
    """Validate one response the gateway sent; returns how many payloads were checked.

    `complete=False`: the client stopped reading early; only the whole events received are checked.
    """
    if status >= 400:
        assert_valid("ErrorResponse", json.loads(body))
        return 1
    if path.endswith("/responses"):
        return _check_responses(content_type, body, complete)
    if content_type.startswith("text/event-stream"):
        if not complete:
            body = body[: body.rfind(b"\n\n") + 2]
        payloads = sse_payloads(body)
        if complete:
            assert payloads and payloads[-1] == b"[DONE]", f"stream does not end with [DONE]: {body[-200:]!r}"
        checked = 0
        for payload in payloads:
            if payload == b"[DONE]":
                assert payload is payloads[-1], "[DONE] before the end of the stream"
                continue
            obj = json.loads(payload)
            assert_valid("ErrorResponse" if "error" in obj else "CreateChatCompletionStreamResponse", obj)
            checked += 1
        return checked
    obj = json.loads(body)
    if path.endswith("/chat/completions"):
        assert_valid("CreateChatCompletionResponse", obj)
    elif path.endswith("/embeddings"):
        # The spec models float vectors only; `encoding_format: base64` (the SDK's default) gets each
        # as base64 float32: decoded here, so a vector that is not whole float32s fails too.
        for item in obj.get("data") or []:
            if isinstance(item, dict) and isinstance(item.get("embedding"), str):
                packed = base64.b64decode(item["embedding"], validate=True)
                assert len(packed) % 4 == 0, "a base64 embedding that is not whole float32s"
                item["embedding"] = list(struct.unpack(f"<{len(packed) // 4}f", packed))
        assert_valid("CreateEmbeddingResponse", obj)
    elif path.endswith("/models"):
        assert_valid("ListModelsResponse", obj)
    elif "/models/" in path:
        assert_valid("Model", obj)
    return 1


# Responses' stream events by type -> the spec's schema of each.
RESPONSE_EVENTS = {
    "response.created": "ResponseCreatedEvent",
    "response.in_progress": "ResponseInProgressEvent",
    "response.output_item.added": "ResponseOutputItemAddedEvent",
    "response.output_item.done": "ResponseOutputItemDoneEvent",
    "response.content_part.added": "ResponseContentPartAddedEvent",
    "response.content_part.done": "ResponseContentPartDoneEvent",
    "response.output_text.delta": "ResponseTextDeltaEvent",
    "response.output_text.done": "ResponseTextDoneEvent",
    "response.function_call_arguments.delta": "ResponseFunctionCallArgumentsDeltaEvent",
    "response.function_call_arguments.done": "ResponseFunctionCallArgumentsDoneEvent",
    "response.completed": "ResponseCompletedEvent",
    "error": "ResponseErrorEvent",
}


def _check_responses(content_type: str, body: bytes, complete: bool) -> int:
    """A Response, or Responses' event stream: `event: <type>` and `data: <that event>` per block,
    numbered in order, ending with `response.completed` (or `error`)."""
    if not content_type.startswith("text/event-stream"):
        assert_valid("Response", json.loads(body))
        return 1
    if not complete:
        body = body[: body.rfind(b"\n\n") + 2]
    kinds = []
    for number, block in enumerate(b for b in body.split(b"\n\n") if b):
        name, _, data = block.partition(b"\n")
        assert name.startswith(b"event: ") and data.startswith(b"data: "), f"not a Responses event: {block!r}"
        event = json.loads(data[6:])
        assert event["type"] == name[7:].decode() and event["sequence_number"] in (number, 0)
        assert_valid(RESPONSE_EVENTS[event["type"]], event)
        kinds.append(event["type"])
    if complete:
        assert kinds and kinds[-1] in ("response.completed", "error"), f"stream ends with {kinds[-1:]}"
    return len(kinds)


class Checker:
    """Counts what was validated; a violation fails the test at the point the body is read."""

    def __init__(self) -> None:
        self.checked = 0

    def done(self, response: httpx.Response, body: bytes, complete: bool) -> None:
        self.checked += check_exchange(
            response.request.url.path,
            response.status_code,
            response.headers.get("content-type", ""),
            body,
            complete,
        )


class _Tee:
    """Keeps what the client read; validates it once, when the body ends or the client closes it."""

    def __init__(self, on_done: Any) -> None:
        self._on_done = on_done
        self._parts: list[bytes] = []
        self._validated = False

    def _finish(self, complete: bool) -> None:
        if not self._validated:
            self._validated = True
            self._on_done(b"".join(self._parts), complete)


class _TeeSync(_Tee, httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream, on_done: Any) -> None:
        super().__init__(on_done)
        self._inner = inner

    def __iter__(self) -> Iterator[bytes]:
        for part in self._inner:
            self._parts.append(part)
            yield part
        self._finish(complete=True)

    def close(self) -> None:
        self._inner.close()
        self._finish(complete=False)


class _TeeAsync(_Tee, httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, on_done: Any) -> None:
        super().__init__(on_done)
        self._inner = inner

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for part in self._inner:
            self._parts.append(part)
            yield part
        self._finish(complete=True)

    async def aclose(self) -> None:
        await self._inner.aclose()
        self._finish(complete=False)


class ValidatingTransport(httpx.HTTPTransport):
    """An httpx transport that validates every response body it delivers against the spec."""

    def __init__(self, checker: Checker) -> None:
        super().__init__()
        self._checker = checker

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        stream = response.stream
        assert isinstance(stream, httpx.SyncByteStream)
        response.stream = _TeeSync(stream, lambda body, complete: self._checker.done(response, body, complete))
        return response


class AsyncValidatingTransport(httpx.AsyncHTTPTransport):
    def __init__(self, checker: Checker) -> None:
        super().__init__()
        self._checker = checker

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        stream = response.stream
        assert isinstance(stream, httpx.AsyncByteStream)
        response.stream = _TeeAsync(stream, lambda body, complete: self._checker.done(response, body, complete))
        return response
