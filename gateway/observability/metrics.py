"""Every Prometheus instrument of the gateway, defined once, and the observer that feeds them.

Correct with several uvicorn workers: `gateway serve --workers N` sets `PROMETHEUS_MULTIPROC_DIR`
before this module is imported, each worker writes its values there, and any worker's `/metrics`
sums them. Labels are low in cardinality: the config name of a model entry (a glob stays a glob),
upstream and key names, fixed words for outcomes; never a raw key, a request id or free text.
"""

from __future__ import annotations

import os
import platform
import re
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

from gateway import __version__
from gateway.relay.exchange import Exchange, Observer

# Seconds: from a cached answer in milliseconds to a long generation of several minutes.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
NO_VALUE = "none"  # the label value when a request ended before it had one (no key, no model, ...)

REQUESTS = Counter(
    "gateway_requests",
    "Requests finished, by endpoint, model entry, last upstream, status class and streamed or not.",
    ["endpoint", "model", "upstream", "status_class", "stream"],
)
REQUEST_ERRORS = Counter(
    "gateway_request_errors",
    "Requests that ended in an error (before or after the first byte), by status sent and error code.",
    ["endpoint", "model", "status", "code"],
)
REQUEST_DURATION = Histogram(
    "gateway_request_duration_seconds",
    "Time from a request's arrival to the end of its reply.",
    ["endpoint", "model", "stream"],
    buckets=LATENCY_BUCKETS,
)
TIME_TO_FIRST_TOKEN = Histogram(
    "gateway_time_to_first_token_seconds",
    "Streams: time from a request's arrival until its first events went to the client.",
    ["model"],
    buckets=LATENCY_BUCKETS,
)
UPSTREAM_LATENCY = Histogram(
    "gateway_upstream_latency_seconds",
    "Time from sending a request upstream to the upstream's response headers.",
    ["upstream"],
    buckets=LATENCY_BUCKETS,
)
UPSTREAM_ATTEMPTS = Counter(
    "gateway_upstream_attempts",
    "Attempts on upstreams, by outcome (ok, rate_limited, server_error, timeout, connect_error, ...).",
    ["upstream", "outcome"],
)
UPSTREAM_RETRIES = Counter(
    "gateway_upstream_retries",
    "Attempts after a request's first, by the upstream tried and the outcome of the attempt before.",
    ["upstream", "reason"],
)
TOKENS = Counter("gateway_tokens", "Tokens used, by model entry, key name and type.", ["model", "key", "type"])
BILLED_UNITS = Counter(
    "gateway_billed_units", "Billed units that upstreams reported, by model entry and key name.", ["model", "key"]
)
CLIENT_DISCONNECTS = Counter(
    "gateway_client_disconnects", "Streams the client left before their end.", ["endpoint", "model"]
)
IN_FLIGHT = Gauge(
    "gateway_requests_in_flight", "Requests being handled now.", ["endpoint"], multiprocess_mode="livesum"
)
STREAMS_IN_FLIGHT = Gauge(
    "gateway_streams_in_flight", "Streams sending events now.", ["endpoint"], multiprocess_mode="livesum"
)
LEDGER_QUEUE = Gauge(
    "gateway_ledger_queue_depth",
    "Requests whose usage is recorded in memory but not yet written to the store.",
    multiprocess_mode="livesum",
)
LEDGER_WRITTEN = Counter("gateway_ledger_records_written", "Requests whose usage has been written to the store.")
LEDGER_ERRORS = Counter("gateway_ledger_redis_errors", "Failed writes and reads of the usage store (Redis).")
BUILD_INFO = Gauge(
    "gateway_build_info", "Always 1: the gateway's version and Python.", ["version", "python"], multiprocess_mode="max"
)
BUILD_INFO.labels(__version__, platform.python_version()).set(1)

_CODE = re.compile(r"^[a-z0-9_.\-]{1,48}$")
_TOKEN_TYPES = ("prompt", "completion", "cached", "reasoning")


class MetricsObserver(Observer):
    """Turns each exchange into counter and histogram updates; label children are cached."""

    def __init__(self) -> None:
        self._children: dict[tuple[object, ...], Any] = {}

    def _child(self, metric: Counter | Gauge | Histogram, *labels: str) -> Any:
        key = (metric, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def started(self, exchange: Exchange) -> None:
        self._child(IN_FLIGHT, exchange.endpoint).inc()

    def streaming(self, exchange: Exchange) -> None:
        self._child(STREAMS_IN_FLIGHT, exchange.endpoint).inc()

    def finished(self, exchange: Exchange) -> None:
        child = self._child
        endpoint = exchange.endpoint
        model = exchange.route or NO_VALUE
        stream = "true" if exchange.stream else "false"
        child(IN_FLIGHT, endpoint).dec()
        if exchange.first_byte_after is not None:
            child(STREAMS_IN_FLIGHT, endpoint).dec()
            child(TIME_TO_FIRST_TOKEN, model).observe(exchange.first_byte_after)
        status_class = f"{exchange.status // 100}xx" if exchange.status else "none"
        upstream = exchange.upstream or NO_VALUE
        child(REQUESTS, endpoint, model, upstream, status_class, stream).inc()
        child(REQUEST_DURATION, endpoint, model, stream).observe(exchange.duration or 0.0)
        if exchange.error_code is not None:
            code = exchange.error_code if _CODE.match(exchange.error_code) else "other"
            child(REQUEST_ERRORS, endpoint, model, str(exchange.status), code).inc()
        if exchange.client_disconnected:
            child(CLIENT_DISCONNECTS, endpoint, model).inc()
        previous: str | None = None
        for attempt in exchange.attempts:
            child(UPSTREAM_ATTEMPTS, attempt.upstream, attempt.outcome).inc()
            if attempt.headers_after is not None:
                child(UPSTREAM_LATENCY, attempt.upstream).observe(attempt.headers_after)
            if previous is not None:
                child(UPSTREAM_RETRIES, attempt.upstream, previous).inc()
            previous = attempt.outcome
        usage = exchange.usage
        if usage is not None and exchange.key_name is not None:
            key = exchange.key_name
            counts = (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens, usage.reasoning_tokens)
            for kind, count in zip(_TOKEN_TYPES, counts, strict=True):
                if count:
                    child(TOKENS, model, key, kind).inc(count)
            if usage.billed_units:
                child(BILLED_UNITS, model, key).inc(usage.billed_units)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def render() -> tuple[bytes, str]:
    """The exposition text for `/metrics`: this process's, or every worker's summed in multiprocess mode."""
    path = multiprocess_dir()
    if path is None:
        return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    return generate_latest(registry), CONTENT_TYPE_LATEST
