"""The app's OpenAPI document: FastAPI's, plus `POST /v1/chat/completions`, `/v1/messages` and
`/v1/responses`, which are served by plain ASGI endpoints FastAPI never sees. The request schemas are the parts the
gateway checks (other fields pass through)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
_MESSAGE = {
    "type": "object",
    "required": ["role"],
    "properties": {
        "role": {"type": "string", "enum": ["system", "developer", "user", "assistant", "tool", "function"]},
        "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}, {"type": "null"}]},
        "name": {"type": "string"},
        "tool_call_id": {"type": "string"},
        "tool_calls": {"type": "array", "items": {"type": "object"}},
    },
}
_CHAT_REQUEST = {
    "type": "object",
    "required": ["model", "messages"],
    "properties": {
        "model": {"type": "string", "minLength": 1},
        "messages": {"type": "array", "minItems": 1, "items": _MESSAGE},
        "stream": {"type": "boolean"},
        "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "top_p": {"type": "number", "minimum": 0, "maximum": 1},
        "max_tokens": {"type": "integer", "minimum": 1},
        "max_completion_tokens": {"type": "integer", "minimum": 1},
        "n": {"type": "integer", "minimum": 1, "maximum": 128},
        "stop": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": 4}]},
        "response_format": {"type": "object", "required": ["type"], "properties": {"type": {"type": "string"}}},
        "json_mode": {"type": "boolean", "description": "Extension: the same as response_format json_object."},
        "enable_thinking": {"type": "boolean", "description": "Extension: thinking on or off."},
        "thinking": {"type": "object", "description": "Extension: {type, budget_tokens, reasoning_effort}."},
        "reasoning_effort": {"type": "string"},
        "retries": {"type": "integer", "minimum": 0, "maximum": 10, "description": "Extension: gateway retries."},
        "sess_id": {"type": "string", "description": "Extension: sticky deployment and session usage."},
    },
}


def _error_responses(*statuses: int) -> dict[str, Any]:
    schema = {"application/json": {"schema": _ERROR}}
    return {str(status): {"description": "An OpenAI-shaped error.", "content": schema} for status in statuses}


CHAT_COMPLETIONS: dict[str, Any] = {
    "post": {
        "summary": "Create a chat completion",
        "description": "OpenAI's chat completions, buffered or streamed (Server-Sent Events), with extensions.",
        "operationId": "create_chat_completion",
        "security": [{"bearer": []}],
        "requestBody": {"required": True, "content": {"application/json": {"schema": _CHAT_REQUEST}}},
        "responses": {
            "200": {
                "description": "A chat.completion object, or with `stream: true` an event stream of chunks.",
                "content": {"application/json": {"schema": {"type": "object"}}, "text/event-stream": {}},
            },
            **_error_responses(400, 401, 404, 405, 413, 429, 502, 503, 504),
        },
    }
}


_ANTHROPIC_ERROR = {
    "type": "object",
    "required": ["type", "error"],
    "properties": {
        "type": {"const": "error"},
        "error": {
            "type": "object",
            "required": ["type", "message"],
            "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
        },
    },
}
_MESSAGES_REQUEST = {
    "type": "object",
    "required": ["model", "max_tokens", "messages"],
    "properties": {
        "model": {"type": "string", "minLength": 1},
        "max_tokens": {"type": "integer", "minimum": 1},
        "messages": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["role", "content"],
                "properties": {
                    "role": {"type": "string", "enum": ["user", "assistant"]},
                    "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}]},
                },
            },
        },
        "system": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}]},
        "stream": {"type": "boolean"},
        "tools": {"type": "array", "items": {"type": "object"}},
        "tool_choice": {"type": "object"},
        "thinking": {"type": "object"},
        "stop_sequences": {"type": "array", "items": {"type": "string"}},
        "metadata": {"type": "object"},
    },
}
MESSAGES: dict[str, Any] = {
    "post": {
        "summary": "Create a message (Anthropic's Messages API)",
        "description": "Anthropic's Messages API, buffered or streamed, to models served by Anthropic upstreams. "
        "The key goes in `x-api-key` (as Anthropic's SDKs send it) or `Authorization: Bearer`.",
        "operationId": "create_message",
        "security": [{"bearer": []}],
        "requestBody": {"required": True, "content": {"application/json": {"schema": _MESSAGES_REQUEST}}},
        "responses": {
            "200": {
                "description": "A message object, or with `stream: true` Anthropic's event stream.",
                "content": {"application/json": {"schema": {"type": "object"}}, "text/event-stream": {}},
            },
            **{
                str(status): {
                    "description": "An Anthropic-shaped error.",
                    "content": {"application/json": {"schema": _ANTHROPIC_ERROR}},
                }
                for status in (400, 401, 404, 405, 413, 429, 502, 503, 504)
            },
        },
    }
}


_RESPONSES_REQUEST = {
    "type": "object",
    "required": ["model", "input"],
    "properties": {
        "model": {"type": "string", "minLength": 1},
        "input": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}]},
        "instructions": {"type": "string"},
        "stream": {"type": "boolean"},
        "store": {"type": "boolean", "description": "Must be false: nothing is stored."},
        "tools": {"type": "array", "items": {"type": "object"}},
        "tool_choice": {"anyOf": [{"type": "string"}, {"type": "object"}]},
        "reasoning": {"type": "object"},
        "text": {"type": "object"},
        "max_output_tokens": {"type": "integer", "minimum": 1},
    },
}
RESPONSES: dict[str, Any] = {
    "post": {
        "summary": "Create a response (OpenAI's Responses API, stateless)",
        "description": "Translated to chat completions for every upstream; buffered or streamed as typed events.",
        "operationId": "create_response",
        "security": [{"bearer": []}],
        "requestBody": {"required": True, "content": {"application/json": {"schema": _RESPONSES_REQUEST}}},
        "responses": {
            "200": {
                "description": "A response object, or with `stream: true` the Responses event stream.",
                "content": {"application/json": {"schema": {"type": "object"}}, "text/event-stream": {}},
            },
            **_error_responses(400, 401, 404, 405, 413, 429, 502, 503, 504),
        },
    }
}


def openapi_document(api: FastAPI) -> dict[str, Any]:
    """FastAPI's document with the chat route and the bearer scheme added; built once."""
    if api.openapi_schema is None:
        document = get_openapi(title=api.title, version=api.version, routes=api.routes)
        relayed = {"/v1/chat/completions": CHAT_COMPLETIONS, "/v1/messages": MESSAGES, "/v1/responses": RESPONSES}
        document["paths"] = {**relayed, **document["paths"]}
        components = document.setdefault("components", {})
        components.setdefault("securitySchemes", {})["bearer"] = {"type": "http", "scheme": "bearer"}
        api.openapi_schema = document
    return api.openapi_schema
