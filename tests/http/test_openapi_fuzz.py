"""Every endpoint of the app's own OpenAPI document fuzzed with schemathesis: valid and invalid inputs
alike, no client input may get a 5xx. Counted in the output."""

from __future__ import annotations

import os
from typing import Any

import pytest
import schemathesis
from schemathesis.generation import GenerationMode

from gateway.config import parse_config
from gateway.http.app import create_app
from tests.conftest import CLIENT_KEY
from tests.conftest import test_settings as make_settings

EXAMPLES = int(os.environ.get("GATEWAY_SCHEMATHESIS_EXAMPLES", "150"))
CONFIG = f"""
keys: [{{name: fuzz, key: {CLIENT_KEY}}}]
upstreams: [{{name: local, dialect: echo}}]
models: [{{name: echo, upstream: local}}]
"""

app = create_app(make_settings(access_log=False), parse_config(CONFIG))
schema = schemathesis.openapi.from_asgi("/openapi.json", app)
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], max_examples=EXAMPLES)
CALLS: dict[str, int] = {}


@schema.parametrize()
def test_no_input_to_any_endpoint_gets_a_5xx(case: Any) -> None:
    response = case.call(headers={"authorization": f"Bearer {CLIENT_KEY}", **(case.headers or {})})
    CALLS[case.operation.label] = CALLS.get(case.operation.label, 0) + 1
    assert response.status_code < 500, (case.operation.label, case.body, response.text[:500])
    content_type = (response.headers.get("content-type") or [""])[0]  # schemathesis keeps every value
    if response.status_code >= 400 and content_type.startswith("application/json"):
        body = response.json()
        if case.operation.path.startswith("/v1/messages"):  # Anthropic's API, Anthropic's error shape
            assert body["type"] == "error" and set(body["error"]) == {"type", "message"}
        else:
            assert set(body["error"]) == {"message", "type", "param", "code"}


def test_the_document_describes_the_chat_route_and_count(capsys: pytest.CaptureFixture[str]) -> None:
    assert "/v1/chat/completions" in schema.raw_schema["paths"]
    with capsys.disabled():
        print(f"\nschemathesis: {sum(CALLS.values())} requests over {len(CALLS)} operations: {CALLS}")
