"""Metrics from finished exchanges: the right series and values, low-cardinality labels, /metrics."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Histogram, generate_latest

from gateway.config import parse_config
from gateway.dialects.base import Usage
from gateway.errors import ModelNotFound, UpstreamConnectError, UpstreamTimeout
from gateway.observability.metrics import LATENCY_BUCKETS, CollectorPauses, MetricsObserver, _Observations
from gateway.relay import Exchanges
from tests.conftest import CLIENT_KEY, config_yaml

DURATION = {"endpoint": "chat.completions", "model": "m-buffered", "stream": "false"}


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def observed() -> Iterator[tuple[Exchanges, MetricsObserver]]:
    metrics = MetricsObserver()
    yield Exchanges([metrics]), metrics


def test_a_buffered_request_with_a_retry(observed: tuple[Exchanges, MetricsObserver]) -> None:
    exchanges, metrics = observed
    labels = {"endpoint": "chat.completions", "model": "m-buffered", "upstream": "b", "status_class": "2xx"}
    before = {
        "requests": _value("gateway_requests_total", **labels, stream="false"),
        "prompt": _value("gateway_tokens_total", model="m-buffered", key="alice", type="prompt"),
        "billed": _value("gateway_billed_units_total", model="m-buffered", key="alice"),
        "retries": _value("gateway_upstream_retries_total", upstream="b", reason="connect_error"),
        "attempts": _value("gateway_upstream_attempts_total", upstream="a", outcome="connect_error"),
        "latency": _value("gateway_upstream_latency_seconds_count", upstream="b"),
        "duration": _value("gateway_request_duration_seconds_count", **DURATION),
    }
    exchange = exchanges.open("r1", "chat.completions")
    exchange.key_name, exchange.model, exchange.route = "alice", "m-buffered", "m-buffered"
    exchange.attempt("a", "x").end(UpstreamConnectError("down").outcome)
    ok = exchange.attempt("b", "x")
    ok.answered(200)
    ok.end("ok")
    exchange.status, exchange.usage = 200, Usage(10, 5, 15, 4, 2, 0.5)
    exchange.finish()
    assert _value("gateway_requests_total", **labels, stream="false") == before["requests"]  # not flushed yet
    metrics.flush()
    assert _value("gateway_requests_total", **labels, stream="false") == before["requests"] + 1
    assert _value("gateway_tokens_total", model="m-buffered", key="alice", type="prompt") == before["prompt"] + 10
    assert _value("gateway_tokens_total", model="m-buffered", key="alice", type="cached") >= 4
    assert _value("gateway_tokens_total", model="m-buffered", key="alice", type="reasoning") >= 2
    assert _value("gateway_billed_units_total", model="m-buffered", key="alice") == before["billed"] + 0.5
    assert _value("gateway_upstream_retries_total", upstream="b", reason="connect_error") == before["retries"] + 1
    assert _value("gateway_upstream_attempts_total", upstream="a", outcome="connect_error") == before["attempts"] + 1
    assert _value("gateway_upstream_latency_seconds_count", upstream="b") == before["latency"] + 1
    assert _value("gateway_request_duration_seconds_count", **DURATION) == before["duration"] + 1


def test_streams_in_flight_and_time_to_first_token(observed: tuple[Exchanges, MetricsObserver]) -> None:
    exchanges, metrics = observed
    ttft = _value("gateway_time_to_first_token_seconds_count", model="m-stream")
    exchange = exchanges.open("r2", "chat.completions")
    exchange.route, exchange.stream = "m-stream", True
    exchange.attempt("b", "x").answered(200)
    exchange.streaming()
    exchange.status = 200  # the HTTP layer sent the response's start
    metrics.flush()
    assert _value("gateway_requests_in_flight", endpoint="chat.completions") >= 1
    assert _value("gateway_streams_in_flight", endpoint="chat.completions") >= 1
    exchange.fail(UpstreamTimeout("stalled"))  # after the first byte
    exchange.client_disconnected = True
    exchange.finish()
    metrics.flush()
    assert _value("gateway_streams_in_flight", endpoint="chat.completions") == 0
    assert _value("gateway_requests_in_flight", endpoint="chat.completions") == 0
    assert _value("gateway_time_to_first_token_seconds_count", model="m-stream") == ttft + 1
    errors = {"endpoint": "chat.completions", "model": "m-stream", "status": "200", "code": "upstream_timeout"}
    assert _value("gateway_request_errors_total", **errors) >= 1
    assert _value("gateway_client_disconnects_total", endpoint="chat.completions", model="m-stream") >= 1
    assert _value("gateway_upstream_attempts_total", upstream="b", outcome="timeout") >= 1


def test_labels_never_carry_what_a_client_made_up(observed: tuple[Exchanges, MetricsObserver]) -> None:
    exchanges, metrics = observed
    exchange = exchanges.open("r3", "chat.completions")
    exchange.model = "made-up model name\nwith a line break"  # no route matched it
    exchange.fail(ModelNotFound(exchange.model))
    exchange.finish()
    odd = exchanges.open("r4", "chat.completions")
    odd.error_code = "Upstream said: no way!"  # an upstream's own code, free text
    odd.status = 400
    odd.finish()
    metrics.flush()
    text = generate_latest(REGISTRY).decode()
    assert "made-up" not in text and "no way" not in text and "r3" not in text
    labels = {"endpoint": "chat.completions", "model": "none", "status": "404", "code": "model_not_found"}
    assert _value("gateway_request_errors_total", **labels) >= 1
    assert _value("gateway_request_errors_total", endpoint="chat.completions", model="none", status="400", code="other")


@pytest.mark.parametrize("value", [0.0, 0.005, 0.0051, 0.3, 1.0, 299.0, 300.0, 301.0, 1e9])
def test_summed_observations_equal_prometheus_observe(value: float) -> None:
    registry = CollectorRegistry()
    direct = Histogram("direct_seconds", "d", buckets=LATENCY_BUCKETS, registry=registry)
    summed = Histogram("summed_seconds", "s", buckets=LATENCY_BUCKETS, registry=registry)
    observations = _Observations(summed)
    for _ in range(3):
        direct.observe(value)
        observations.observe(value)
    observations.flush()
    observations.flush()  # a second flush adds nothing

    def samples(name: str) -> dict[tuple[str, str], float]:
        return {
            (sample.name.removeprefix(name), sample.labels.get("le", "")): sample.value
            for metric in registry.collect()
            for sample in metric.samples
            if sample.name.startswith(name) and not sample.name.endswith("_created")
        }

    assert samples("direct_seconds") == samples("summed_seconds")
    assert samples("summed_seconds")[("_count", "")] == 3


def test_an_observation_made_during_a_flush_goes_into_the_next() -> None:
    """What a garbage collection's callback observes while a flush is adding (the collector may run
    on any allocation) is neither lost nor counted twice."""
    registry = CollectorRegistry()
    histogram = Histogram("flushed_seconds", "f", buckets=LATENCY_BUCKETS, registry=registry)
    observations = _Observations(histogram)
    bucket = histogram._buckets[0]
    add = bucket.inc

    def inc_then_observe(amount: float) -> None:
        add(amount)
        bucket.inc = add  # once
        observations.observe(0.001)  # as if a collection ran now

    bucket.inc = inc_then_observe
    observations.observe(0.001)
    observations.flush()
    observations.flush()
    assert registry.get_sample_value("flushed_seconds_count") == 2
    assert registry.get_sample_value("flushed_seconds_sum") == pytest.approx(0.002)


def test_collections_are_timed_by_generation() -> None:
    pauses = CollectorPauses()
    before = {g: _value("gateway_gc_pause_seconds_count", generation=g) for g in "012"}
    gc.callbacks.append(pauses)
    try:
        gc.collect(0)
        gc.collect(2)
    finally:
        gc.callbacks.remove(pauses)
    pauses.flush()
    assert _value("gateway_gc_pause_seconds_count", generation="0") >= before["0"] + 1
    assert _value("gateway_gc_pause_seconds_count", generation="2") >= before["2"] + 1
    assert _value("gateway_gc_pause_seconds_sum", generation="2") > 0


def test_a_running_gateway_times_collections_until_it_stops(start_gateway: Any) -> None:
    config = f"""
keys: [{{name: tester, key: {CLIENT_KEY}}}]
upstreams: [{{name: local, dialect: echo}}]
models: [{{name: echo, upstream: local}}]
"""
    running = start_gateway(parse_config(config))
    watches = [c for c in gc.callbacks if isinstance(c, CollectorPauses)]
    assert len(watches) == 1
    before = _value("gateway_gc_pause_seconds_count", generation="2")
    gc.collect()  # the gateway runs in this process: its watch times this collection
    response = httpx.get(f"{running.url}/metrics")
    line = next(x for x in response.text.splitlines() if x.startswith('gateway_gc_pause_seconds_count{generation="2"}'))
    assert float(line.rsplit(" ", 1)[1]) >= before + 1
    running.server.close()
    assert not [c for c in gc.callbacks if isinstance(c, CollectorPauses)]


def test_metrics_endpoint_counts_the_request_just_made(start_gateway: Any) -> None:
    config = f"""
keys: [{{name: tester, key: {CLIENT_KEY}}}]
upstreams: [{{name: local, dialect: echo}}]
models: [{{name: echo-metrics-test, upstream: local}}]
"""
    running = start_gateway(parse_config(config))
    with httpx.Client(base_url=running.url) as http:
        http.post(
            "/v1/chat/completions",
            headers={"authorization": f"Bearer {CLIENT_KEY}"},
            json={"model": "echo-metrics-test", "messages": [{"role": "user", "content": "hi"}]},
        )
        response = http.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    assert "gateway_build_info{" in response.text
    # This worker's sums are flushed before rendering: the request just made is counted.
    labels = 'endpoint="chat.completions",model="echo-metrics-test",status_class="2xx",stream="false",upstream="local"'
    assert f"gateway_requests_total{{{labels}}} 1.0" in response.text


def test_metrics_turned_off(start_gateway: object, fake_url: str) -> None:
    running = start_gateway(parse_config(config_yaml(fake_url)), metrics=False)  # type: ignore[operator]
    response = httpx.get(f"{running.url}/metrics")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found" and "x-request-id" in response.headers


def test_a_dead_workers_in_flight_gauges_are_dropped(tmp_path: Path) -> None:
    """Multiprocess mode, as with several workers: each process below is one worker."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    dead = (
        "from gateway.observability.metrics import IN_FLIGHT, REQUESTS\n"
        "IN_FLIGHT.labels('chat.completions').set(3)\n"
        "REQUESTS.labels('chat.completions', 'm', 'u', '2xx', 'false').inc(5)\n"
    )
    subprocess.run([sys.executable, "-c", dead], env=env, check=True, timeout=60)
    assert any(p.name.startswith("gauge_livesum_") for p in tmp_path.iterdir())
    alive = "from gateway.observability.metrics import render\nprint(render()[0].decode())\n"
    text = subprocess.run(
        [sys.executable, "-c", alive], env=env, check=True, timeout=60, capture_output=True, text=True
    ).stdout
    assert 'gateway_requests_in_flight{endpoint="chat.completions"}' not in text  # the dead worker's is gone
    assert 'status_class="2xx",stream="false",upstream="u"} 5.0' in text  # its counts stay
    assert not any(p.name.startswith("gauge_livesum_") and "in_flight" in p.name for p in tmp_path.iterdir())


def test_a_metrics_token_guards_the_metrics(start_gateway: Any, fake_url: str) -> None:
    running = start_gateway(parse_config(config_yaml(fake_url)), metrics_token="scrape-secret")
    assert httpx.get(f"{running.url}/metrics").status_code == 401
    wrong = httpx.get(f"{running.url}/metrics", headers={"authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "scrape-secret" not in wrong.text
    right = httpx.get(f"{running.url}/metrics", headers={"authorization": "Bearer scrape-secret"})
    assert right.status_code == 200 and "gateway_build_info" in right.text
