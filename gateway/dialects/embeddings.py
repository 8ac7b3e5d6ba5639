"""`/v1/embeddings` to OpenAI-compatible upstreams: the body goes as sent (the model name replaced),
the reply comes back as sent, parsed for its usage and the spec's required fields."""

from __future__ import annotations

from typing import Any

import orjson

from gateway.dialects.base import (
    DecodedReply,
    Target,
    UpstreamRequest,
    Usage,
    decode_error,
    embedded_error,
)
from gateway.dialects.normalize import token_count
from gateway.dialects.openai import json_object, openai_headers
from gateway.errors import UpstreamProtocolError
from gateway.protocol.embeddings import EmbeddingsRequest


class EmbeddingsTranslator:
    def build_request(self, request: EmbeddingsRequest, target: Target) -> UpstreamRequest:
        upstream = target.upstream
        body = {**request.body, "model": target.model}
        return UpstreamRequest(
            method="POST",
            url=f"{upstream.base_url or ''}/embeddings",
            headers=openai_headers(upstream, stream=False),
            body=orjson.dumps(body),
            upstream=upstream.name,
        )

    def decode_reply(self, body: bytes, request: EmbeddingsRequest) -> DecodedReply:
        obj = json_object(body, "reply")
        if "error" in obj and "data" not in obj:
            raise embedded_error(obj)
        data = obj.get("data")
        if not isinstance(data, list):
            raise UpstreamProtocolError("The upstream's embeddings reply has no `data` array.")
        changed = _fill_in(obj, data, request.model)
        usage = obj.get("usage")
        counted = None
        if isinstance(usage, dict):
            prompt = token_count(usage.get("prompt_tokens"))
            counted = Usage(prompt, 0, token_count(usage.get("total_tokens")) or prompt)
        return DecodedReply(orjson.dumps(obj) if changed else body, counted)

    def stream_decoder(self, request: EmbeddingsRequest) -> Any:
        raise AssertionError("embeddings do not stream")

    decode_error = staticmethod(decode_error)


def _fill_in(obj: dict[str, Any], data: list[Any], model: str) -> bool:
    """The fields the spec requires that a sloppy upstream left out; whether any was."""
    changed = False
    if obj.get("object") != "list":
        obj["object"], changed = "list", True
    if not isinstance(obj.get("model"), str):
        obj["model"], changed = model, True
    if not isinstance(obj.get("usage"), dict):
        obj["usage"], changed = {"prompt_tokens": 0, "total_tokens": 0}, True
    for i, item in enumerate(data):
        if isinstance(item, dict):
            if item.get("object") != "embedding":
                item["object"], changed = "embedding", True
            if not isinstance(item.get("index"), int):
                item["index"], changed = i, True
    return changed
