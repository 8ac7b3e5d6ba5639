"""The gateway watched for real: `gateway serve --workers 2` under traffic, scraped by a real Prometheus.

Every PromQL expression of the Grafana dashboard and of the alert rules must return series from the
live scrape; the request counters summed over a scrape must equal the requests sent; the access log
must have one JSON line per request with every field, and no key anywhere in the output.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from tests.conftest import CLIENT_KEY, LIMITED_KEY, checked_http, config_yaml, sdk
from tests.support.fake_anthropic import ANTHROPIC_KEY
from tests.support.fake_openai import UPSTREAM_KEY, FakeOpenAI
from tests.support.gateway_cli import make_key
from tests.support.process import GatewayProcess, cleanly_stopped
from tests.support.prometheus_server import PrometheusServer
from tests.support.redis_server import RedisServer
from tests.support.spec import Checker
from tests.support.threads import AiohttpServer

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "llm-gateway.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
USER = [{"role": "user", "content": "Hello there"}]
ACCESS_FIELDS = {
    "ts", "level", "logger", "msg", "request_id", "endpoint", "key", "team", "model", "route", "served_model",
    "upstream", "deployment", "status", "error_code", "stream", "latency_s", "ttft_s", "prompt_tokens",
    "completion_tokens", "total_tokens", "cached_tokens", "reasoning_tokens", "billed_units", "usage_estimated",
    "cost", "attempts", "attempt_outcomes", "cooldowns", "client_disconnected",
}  # fmt: skip


PRICES = """
prices:
  - {model: echo, request: 0.001}
  - {model: gpt-test, input: 1.0, output: 4.0}
"""


@dataclass
class Stack:
    gateway: GatewayProcess
    prometheus: PrometheusServer
    redis: RedisServer
    checker: Checker
    limited_keys: tuple[str, str]  # one request per minute; a budget of less than one request
    sent: int = 0  # API requests sent to the gateway (not probes or scrapes)
    request_ids: list[str] = field(default_factory=list)

    def traffic(self) -> None:
        """One round of every kind of request the dashboard and the alerts show."""
        client = sdk(self.gateway.url, self.checker)
        http = checked_http(self.checker, base_url=self.gateway.url, headers={"authorization": f"Bearer {CLIENT_KEY}"})
        for _ in range(3):
            client.chat.completions.create(model="echo", messages=USER)
            list(client.chat.completions.create(model="echo", messages=USER, stream=True))
        client.chat.completions.create(model="gpt-test", messages=USER)  # billed units
        list(
            client.chat.completions.create(
                model="gpt-test", messages=USER, stream=True, stream_options={"include_usage": True}
            )
        )
        for _ in range(3):  # a retry after a connect error; the third failure in a row cools `dead` down
            client.chat.completions.create(model="fallback", messages=USER)
        reply = client.chat.completions.with_raw_response.create(model="needs-fallback", messages=USER)
        assert reply.headers["x-gateway-model"] == "gpt-test"  # its only deployment failed: a fallback answered
        self.sent += 12
        for model in ("fake-status-500", "no-such-model"):
            with pytest.raises(openai.APIStatusError):
                client.chat.completions.create(model=model, messages=USER)
            self.sent += 1
        with pytest.raises(openai.APIError):  # the upstream fails after the first byte
            list(client.chat.completions.create(model="fake-mid-error", messages=USER, stream=True))
        body = {"model": "fake-slow", "messages": USER, "stream": True}
        with http.stream("POST", "/v1/chat/completions", json=body) as response:  # the client leaves mid-stream
            next(response.iter_raw())
        assert http.get("/v1/models").status_code == 200
        assert httpx.post(f"{self.gateway.url}/v1/chat/completions", json={}).status_code == 401
        self.sent += 4
        for key in self.limited_keys:  # the second request is over the key's rpm, or its budget
            replies = [
                httpx.post(
                    f"{self.gateway.url}/v1/chat/completions",
                    headers={"authorization": f"Bearer {key}"},
                    json={"model": "echo", "messages": USER},
                )
                for _ in range(2)
            ]
            assert replies[1].status_code == 429, replies[1].text
            self.sent += 2

    def redis_outage(self) -> None:
        self.redis.stop()
        try:
            client = sdk(self.gateway.url, self.checker)
            client.chat.completions.create(model="echo", messages=USER)
            self.sent += 1
            time.sleep(2.5)  # failed flushes, and a scrape that sees the backlog
        finally:
            self.redis.start()

    def scraped_after(self, since: float, scrapes: int = 3) -> None:
        """Wait until Prometheus has scraped the gateway `scrapes` times after `since`."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            result = self.prometheus.query('timestamp(up{job="llm-gateway"})')
            if result and float(result[0]["value"][1]) > since + scrapes:
                return
            time.sleep(0.3)
        raise AssertionError("Prometheus did not scrape the gateway")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, fake_server: tuple[FakeOpenAI, AiohttpServer]) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("live")
    redis = RedisServer(workdir, persistent=True)  # as in production: the managed keys outlive the outage
    redis.start()
    config = workdir / "gateway.yaml"
    fallback = "  - {name: needs-fallback, upstream: dead, fallbacks: [gpt-test]}\n"
    config.write_text(config_yaml(fake_server[1].url, redis.url, more_models=fallback, more=PRICES))
    limited_keys = (
        make_key(config, "--name", "one-rpm", "--rpm", "1"),
        make_key(config, "--name", "tiny-budget", "--budget", "0.0001"),
    )
    env = {"GATEWAY_LEDGER_FLUSH_INTERVAL": "0.2", "GATEWAY_REDIS_TIMEOUT": "0.3", "GATEWAY_LOG_FORMAT": "json"}
    gateway = GatewayProcess(config, "--workers", "2", env=env, workdir=workdir).start()
    prometheus = PrometheusServer(
        workdir,
        f"""
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
rule_files: ["{ALERTS}"]
scrape_configs:
  - job_name: llm-gateway
    static_configs: [{{targets: ["127.0.0.1:{gateway.port}"]}}]
""",
    ).start()
    stack = Stack(gateway, prometheus, redis, Checker(), limited_keys)
    try:
        stack.scraped_after(time.time(), scrapes=1)  # series exist before traffic, so rates see it
        stack.traffic()
        stack.redis_outage()
        started = time.time()
        stack.traffic()  # a second round: every series has grown between scrapes
        stack.scraped_after(started)
        yield stack
    finally:
        prometheus.stop()
        returncode = gateway.stop()
        redis.stop()
    assert cleanly_stopped(returncode), gateway.output()


def _dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            queries.append((f"{panel['title']} [{target['refId']}]", target["expr"]))
    return queries


def _grafana_to_promql(expr: str) -> str:
    # What Grafana does before it sends a query: its variables become values (`All` is `.*`).
    return expr.replace("$__rate_interval", "1m").replace("$model", ".*").replace("$key", ".*")


def _alert_queries() -> list[tuple[str, str]]:
    rules = yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"]
    out = []
    for rule in rules:
        match = re.fullmatch(r"(.+?)\s*(>|<|==|!=|>=|<=)\s*[0-9.e+-]+", rule["expr"].strip(), re.DOTALL)
        assert match, f"{rule['alert']}: expr is not `<query> <comparison> <threshold>`"
        out.append((rule["alert"], match.group(1)))
    return out


def _values(result: list[dict[str, Any]]) -> list[float]:
    return [float(series["value"][1]) for series in result]


def test_every_dashboard_query_returns_series_with_values(stack: Stack) -> None:
    queries = _dashboard_queries()
    assert len(queries) >= 25
    empty = []
    for name, expr in queries:
        values = _values(stack.prometheus.query(_grafana_to_promql(expr)))
        if not values or all(v != v for v in values):  # none, or only NaN
            empty.append(f"{name}: {expr}")
    assert not empty, "queries without data:\n" + "\n".join(empty)


def test_every_alert_query_returns_series(stack: Stack) -> None:
    empty = [f"{name}: {expr}" for name, expr in _alert_queries() if not stack.prometheus.query(expr)]
    assert not empty, "alert queries without series:\n" + "\n".join(empty)


def test_alerts_are_loaded_and_the_redis_condition_held(stack: Stack) -> None:
    ours = {r["alert"]: r["expr"] for r in yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"]}
    loaded = httpx.get(f"{stack.prometheus.url}/api/v1/rules").json()["data"]["groups"][0]["rules"]
    assert {r["name"] for r in loaded} == set(ours)
    assert all(r["health"] == "ok" for r in loaded), loaded
    # The outage made Redis errors: the alert's whole expression, threshold included, held.
    assert stack.prometheus.query(ours["GatewayLedgerRedisErrors"])


def _scrape_sum(url: str, metric: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(metric + "{"))


def test_request_counters_equal_requests_sent_with_two_workers(stack: Stack) -> None:
    deadline = time.monotonic() + 10
    total = 0.0
    while time.monotonic() < deadline:
        total = _scrape_sum(stack.gateway.url, "gateway_requests_total")
        if total == stack.sent:
            break
        time.sleep(0.2)
    assert total == stack.sent
    # Two worker processes ran (the traffic came long after both started).
    assert len(set(re.findall(r"Started server process \[(\d+)\]", stack.gateway.output()))) == 2


def test_access_log_has_one_json_line_per_request_and_no_secret(stack: Stack) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = [json.loads(line) for line in stack.gateway.output().splitlines() if line.startswith("{")]
        access = [line for line in lines if line["logger"] == "gateway.access"]
        if len(access) >= stack.sent:
            break
        time.sleep(0.2)
    assert len(access) == stack.sent
    for line in access:
        assert set(line) == ACCESS_FIELDS, line
    assert len({line["request_id"] for line in access}) == stack.sent
    by_status = {line["status"] for line in access}
    assert {200, 401, 404, 502} <= by_status
    billed = [line for line in access if line["billed_units"]]
    served = {line["served_model"] for line in billed}
    assert billed and all(line["key"] == "tester" for line in billed) and served == {"gpt-test", "fallback"}
    fell_back = [line for line in access if line["model"] == "needs-fallback"]
    assert fell_back and all(line["served_model"] == "gpt-test" for line in fell_back)
    assert sum(line["cooldowns"] for line in access) >= 1
    cut = [line for line in access if line["client_disconnected"]]
    assert cut and cut[0]["ttft_s"] is not None and cut[0]["attempt_outcomes"] == ["cancelled"]
    retried = [line for line in access if line["attempts"] == 2]
    assert retried and retried[0]["attempt_outcomes"] == ["connect_error", "ok"]
    # Lines about a request carry its id: the relay's note on the failed first attempt.
    retry_notes = [line for line in lines if line["logger"] == "gateway.relay" and "trying again" in line["msg"]]
    assert retry_notes and {line["request_id"] for line in retry_notes} <= {line["request_id"] for line in access}
    # Every line of the output is JSON, start-up and shutdown included, and no secret is anywhere.
    output = stack.gateway.output()
    assert all(line.startswith("{") for line in output.splitlines() if line.strip()), output[:2000]
    for secret in (CLIENT_KEY, LIMITED_KEY, UPSTREAM_KEY, ANTHROPIC_KEY, "sk-dead"):
        assert secret not in output
