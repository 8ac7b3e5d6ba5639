"""One request log entry per request with every field the issue lists, estimated usage for a
stream its client left, prices applied, and usage read back by the operator and by the key itself
(including the legacy billing endpoints chat front-ends query)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.config import parse_config
from tests.conftest import RunningGateway, checked_http, config_yaml
from tests.conftest import sdk as make_sdk
from tests.support.gateway_cli import make_key
from tests.support.spec import Checker

ADMIN = "admin-token-for-records"
PRICES = """
prices:
  - model: gpt-test
    input: 2.0
    output: 8.0
    request: 0.01
  - model: "fake-*"
    request: 0.5
"""
USER = [{"role": "user", "content": "hello brave new world"}]
LONG = [{"role": "user", "content": " ".join(f"word{i}" for i in range(200))}]


@pytest.fixture
def team_gateway(
    start_gateway: Callable[..., RunningGateway], fake_url: str, redis_url: str, tmp_path: Path
) -> tuple[RunningGateway, str]:
    text = config_yaml(fake_url, redis_url, more=PRICES)
    config = tmp_path / "gateway.yaml"
    config.write_text(text)
    key = make_key(config, "--name", "ana", "--team", "research", "--budget", "5", "--budget-period", "month")
    return start_gateway(parse_config(text), admin_token=ADMIN), key


def _admin(gateway: RunningGateway) -> httpx.Client:
    return httpx.Client(base_url=gateway.url, headers={"authorization": f"Bearer {ADMIN}"}, timeout=10)


def _entries(gateway: RunningGateway, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 10
    while True:
        entries: list[dict[str, Any]] = (
            _admin(gateway).get("/admin/usage/requests", params={"key": "ana"}).json()["data"]
        )
        if len(entries) >= count or time.monotonic() > deadline:
            return entries
        time.sleep(0.05)


def _leave_after_first_event(url: str, key: str) -> None:
    body = {"model": "fake-slow", "messages": LONG, "stream": True}
    with (
        httpx.Client(timeout=10) as http,
        http.stream("POST", f"{url}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}) as r,
    ):
        for line in r.iter_lines():
            if '"content":"word' in line:
                break  # the client leaves mid-stream, before any usage


def test_every_request_gets_one_full_log_entry(team_gateway: tuple[RunningGateway, str], checker: Checker) -> None:
    gateway, key = team_gateway
    sdk = make_sdk(gateway.url, checker, key=key)
    reply = sdk.chat.completions.create(
        model="gpt-test", messages=USER, metadata={"trace": "t-1"}, extra_body={"sess_id": "conv-1"}
    )
    assert reply.usage is not None
    chunks = list(
        sdk.chat.completions.create(
            model="gpt-test", messages=USER, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[-1].usage is not None
    _leave_after_first_event(gateway.url, key)

    left, streamed, buffered = _entries(gateway, 3)
    price = 0.01 + (reply.usage.prompt_tokens * 2.0 + reply.usage.completion_tokens * 8.0) / 1e6
    assert buffered["key"] == "ana" and buffered["team"] == "research"
    assert buffered["model"] == "gpt-test" and buffered["upstream"] == "fake" and buffered["deployment"] == "ok"
    assert buffered["metadata"] == {"trace": "t-1"} and buffered["sess_id"] == "conv-1"
    assert buffered["status"] == 200 and buffered["stream"] is False and buffered["estimated"] is False
    assert buffered["latency_ms"] > 0 and buffered["request_id"].startswith("req_")
    assert buffered["usage"]["prompt_tokens"] == reply.usage.prompt_tokens
    assert buffered["usage"]["cached_tokens"] == reply.usage.prompt_tokens_details.cached_tokens  # type: ignore[union-attr]
    assert buffered["cost"] == pytest.approx(price)
    assert streamed["stream"] is True and streamed["estimated"] is False
    assert streamed["usage"]["total_tokens"] == chunks[-1].usage.total_tokens  # type: ignore[union-attr]

    # The client left before the usage chunk: counted from the prompt and the text relayed, marked.
    assert left["model"] == "fake-slow" and left["stream"] is True and left["estimated"] is True
    assert left["usage"]["prompt_tokens"] > 200 and left["usage"]["completion_tokens"] >= 1
    assert left["cost"] == 0.5

    rows = _admin(gateway).get("/admin/usage", params={"team": "research"}).json()["data"]
    assert {(row["key"], row["model"]) for row in rows} == {("ana", "gpt-test"), ("ana", "fake-slow")}
    gpt = next(row for row in rows if row["model"] == "gpt-test")
    assert gpt["requests"] == 2 and gpt["team"] == "research" and gpt["cost"] == pytest.approx(2 * price, rel=0.01)
    assert next(row for row in rows if row["model"] == "fake-slow")["estimated_requests"] == 1
    assert _admin(gateway).get("/admin/usage", params={"team": "nobody"}).json()["data"] == []
    bad = _admin(gateway).get("/admin/usage", params={"since": "yesterday"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "since"


def test_a_key_reads_its_own_usage_and_balance(team_gateway: tuple[RunningGateway, str], checker: Checker) -> None:
    gateway, key = team_gateway
    make_sdk(gateway.url, checker, key=key).chat.completions.create(model="fake-a", messages=USER)
    make_sdk(gateway.url, checker).chat.completions.create(model="fake-a", messages=USER)  # another key
    http = checked_http(checker, base_url=gateway.url, headers={"authorization": f"Bearer {key}"})
    _entries(gateway, 1)

    own = http.get("/v1/usage").json()
    assert own["key"] == "ana" and [(r["key"], r["requests"], r["cost"]) for r in own["data"]] == [("ana", 1, 0.5)]
    assert own["budget"]["amount"] == 5 and own["budget"]["period"] == "month"
    assert own["budget"]["spent"] == 0.5 and own["budget"]["remaining"] == 4.5

    for prefix in ("", "/v1"):
        subscription = http.get(f"{prefix}/dashboard/billing/subscription").json()
        assert subscription["object"] == "billing_subscription" and subscription["hard_limit_usd"] == 5
        usage = http.get(f"{prefix}/dashboard/billing/usage").json()
        assert usage["total_usage"] == pytest.approx(50.0)  # cents
        assert usage["daily_costs"][0]["line_items"] == [{"name": "fake-a", "cost": 50.0}]
        old = http.get(
            f"{prefix}/dashboard/billing/usage", params={"start_date": "2001-01-01", "end_date": "2001-02-01"}
        )
        assert old.json()["total_usage"] == 0
    for day in ("2026-13-01", "2026-W47", "20261123"):
        assert http.get("/v1/usage", params={"until": day}).status_code == 400
    first = http.get("/dashboard/billing/usage", params={"end_date": "0001-01-01"})
    assert first.status_code == 400 and first.json()["error"]["param"] == "end_date"
    infinite = _admin(gateway).patch("/admin/keys/ana", json={"budget": "inf"})
    assert infinite.status_code == 400 and infinite.json()["error"]["param"] == "budget"
    anon = httpx.get(f"{gateway.url}/dashboard/billing/subscription")
    assert anon.status_code == 401
