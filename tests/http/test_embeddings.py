"""`POST /v1/embeddings` with the official `openai` SDK: through the relay to an OpenAI-compatible
upstream (and the offline echo), with the key check, routing, retries, usage and errors of chat."""

from __future__ import annotations

import asyncio
import base64
import struct
import time

import httpx
import openai
import pytest

from tests.conftest import RunningGateway
from tests.support.fake_openai import UPSTREAM_KEY, FakeOpenAI
from tests.support.spec import Checker


def test_one_string_and_a_list_with_dimensions(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    one = client.embeddings.create(model="gpt-test", input="hello there")
    assert len(one.data) == 1 and len(one.data[0].embedding) == 4 and one.data[0].index == 0
    assert one.usage.prompt_tokens == 2 and one.usage.total_tokens == 2
    seen = fake.requests[-1]
    assert seen.path == "/v1/embeddings" and seen.body["model"] == "ok"  # the upstream's name for it
    assert seen.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    many = client.embeddings.create(model="gpt-test", input=["a b", "c", "d e f"], dimensions=3)
    assert [d.index for d in many.data] == [0, 1, 2] and all(len(d.embedding) == 3 for d in many.data)
    assert fake.requests[-1].body["dimensions"] == 3


def test_float_and_base64_encodings_reach_the_client_as_sent(raw: httpx.Client) -> None:
    body = {"model": "gpt-test", "input": "x y"}
    floats = raw.post("/v1/embeddings", json={**body, "encoding_format": "float"}).json()
    packed = raw.post("/v1/embeddings", json={**body, "encoding_format": "base64"}).json()
    decoded = struct.unpack("<4f", base64.b64decode(packed["data"][0]["embedding"]))
    assert decoded == pytest.approx(floats["data"][0]["embedding"])


def test_token_id_inputs_and_the_offline_echo(client: openai.OpenAI) -> None:
    echo = client.embeddings.create(model="echo", input=["same", "same", "other"], dimensions=16)
    vectors = [d.embedding for d in echo.data]
    assert len(vectors[0]) == 16 and vectors[0] == vectors[1] != vectors[2]
    assert sum(v * v for v in vectors[0]) == pytest.approx(1.0)
    tokens = client.embeddings.create(model="gpt-test", input=[[1, 2, 3], [4]])
    assert len(tokens.data) == 2


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "x"}, "model"),
        ({"model": "gpt-test"}, "input"),
        ({"model": "gpt-test", "input": ""}, "input"),
        ({"model": "gpt-test", "input": []}, "input"),
        ({"model": "gpt-test", "input": ["ok", 3.5]}, "input[1]"),
        ({"model": "gpt-test", "input": [["a"]]}, "input[0]"),
        ({"model": "gpt-test", "input": "x", "dimensions": 0}, "dimensions"),
        ({"model": "gpt-test", "input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"model": "gpt-test", "input": ["x"] * 2049}, "input"),
        ({"model": "claude-x", "input": "x"}, "model"),  # an Anthropic upstream serves no embeddings
    ],
)
def test_bad_bodies_are_400s_naming_the_field(raw: httpx.Client, body: dict[str, object], param: str) -> None:
    reply = raw.post("/v1/embeddings", json=body)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == param


def test_errors_are_the_gateway_s(raw: httpx.Client, anon: httpx.Client) -> None:
    assert anon.post("/v1/embeddings", json={"model": "gpt-test", "input": "x"}).status_code == 401
    assert raw.post("/v1/embeddings", json={"model": "nope", "input": "x"}).status_code == 404
    assert raw.post("/v1/embeddings", content=b"{not json").json()["error"]["code"] == "invalid_json"
    failed = raw.post("/v1/embeddings", json={"model": "fake-status-500", "input": "x"})
    assert failed.status_code == 502 and "fake upstream says 500" in failed.json()["error"]["message"]


def test_a_sloppy_reply_is_completed_to_the_spec(raw: httpx.Client) -> None:
    reply = raw.post("/v1/embeddings", json={"model": "fake-sloppy", "input": ["a", "b"]}).json()
    assert [(d["object"], d["index"]) for d in reply["data"]] == [("embedding", 0), ("embedding", 1)]


def test_usage_lands_in_the_ledger_and_the_metrics(
    client: openai.OpenAI, gateway: RunningGateway, checker: Checker
) -> None:
    client.embeddings.create(model="gpt-test", input=["one two three", "four"])
    day = time.strftime("%Y-%m-%d", time.gmtime())
    usage = asyncio.run(gateway.app.runtime.ledger.usage("tester", day))["gpt-test"]
    assert usage["requests"] == 1 and usage["prompt_tokens"] == 4 and usage["total_tokens"] == 4
    gateway.app.runtime.flush_observers()
    metrics = httpx.get(f"{gateway.url}/metrics").text
    assert 'gateway_requests_total{endpoint="embeddings",model="gpt-test"' in metrics


def test_models_say_which_endpoints_they_serve(raw: httpx.Client) -> None:
    models = {m["id"]: m for m in raw.get("/v1/models").json()["data"]}
    assert models["gpt-test"]["endpoints"] == ["chat.completions", "embeddings", "messages", "responses"]
    assert models["echo"]["endpoints"] == ["chat.completions", "embeddings", "messages", "responses"]
    assert raw.get("/v1/models/claude-x").json()["endpoints"] == ["chat.completions", "messages"]
