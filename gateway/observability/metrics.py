"""Every Prometheus instrument of the gateway, defined once, and the observer that feeds them.

Correct with several uvicorn workers: `gateway serve --workers N` sets `PROMETHEUS_MULTIPROC_DIR`
before this module is imported, each worker writes its values there, and any worker's `/metrics`
sums them. Labels are low in cardinality: the config name of a model entry (a glob stays a glob),
upstream and key names, fixed words for outcomes; never a raw key, a request id or free text.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import time
from bisect import bisect_left
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
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

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
FALLBACKS = Counter(
    "gateway_fallbacks",
    "Requests answered by a fallback model after their own model's deployments failed.",
    ["model", "fallback"],
)
COOLDOWNS = Counter(
    "gateway_deployment_cooldowns",
    "Cooldowns started: a deployment that kept failing is tried last until it recovers.",
    ["upstream"],
)
TOKENS = Counter("gateway_tokens", "Tokens used, by model entry, key name and type.", ["model", "key", "type"])
BILLED_UNITS = Counter(
    "gateway_billed_units", "Billed units that upstreams reported, by model entry and key name.", ["model", "key"]
)
CLIENT_DISCONNECTS = Counter(
    "gateway_client_disconnects", "Streams the client left before their end.", ["endpoint", "model"]
)
SPEND = Counter(
    "gateway_spend", "Cost of served requests (the config's price table), by model entry and key.", ["model", "key"]
)
RATE_LIMITED = Counter("gateway_rate_limited", "Requests refused by their key's rpm or tpm limit.", ["key"])
BUDGET_REFUSED = Counter("gateway_budget_refused", "Requests refused because their key's budget is spent.", ["key"])
RATE_LIMIT_ERRORS = Counter(
    "gateway_rate_limit_errors",
    "Limit and budget checks or settlements that could not reach Redis (the request was served).",
)
REDIS_DEGRADED = Gauge(
    "gateway_redis_degraded",
    "1 while a part that uses Redis (ledger, limits) cannot reach it and the gateway runs degraded.",
    ["part"],
    multiprocess_mode="max",
)
CONNECTIONS_REFUSED = Counter(
    "gateway_http_refused",
    "Requests answered or closed by the connection before the app saw them, by reason.",
    ["reason"],
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
LEDGER_DROPPED = Counter(
    "gateway_ledger_log_dropped",
    "Request log entries dropped because the in-memory queue was full (their totals were kept).",
)
LEDGER_SPOOLED = Counter(
    "gateway_ledger_spooled", "Requests whose usage went to the spool file at shutdown (Redis was unreachable)."
)
BUILD_INFO = Gauge(
    "gateway_build_info", "Always 1: the gateway's version and Python.", ["version", "python"], multiprocess_mode="max"
)
BUILD_INFO.labels(__version__, platform.python_version()).set(1)

GC_PAUSES = Histogram(
    "gateway_gc_pause_seconds",
    "Collections of the cyclic garbage collector, by the oldest generation collected: each holds the "
    "event loop, and every request in it, for its length.",
    ["generation"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)
_CODE = re.compile(r"^[a-z0-9_.\-]{1,48}$")
_TOKEN_TYPES = ("prompt", "completion", "cached", "reasoning")


class _Count:
    """Increments of one counter child, summed in memory until the next flush."""

    __slots__ = ("child", "pending")

    def __init__(self, child: Any) -> None:
        self.child = child
        self.pending = 0.0

    def flush(self) -> None:
        if self.pending:
            self.child.inc(self.pending)
            self.pending = 0.0


class _Observations:
    """Observations of one histogram child, summed in memory: a count per bucket, and their sum."""

    __slots__ = ("bounds", "child", "counts", "total")

    def __init__(self, child: Any) -> None:
        self.child = child
        self.bounds: list[float] = child._upper_bounds
        self.counts = [0] * len(self.bounds)
        self.total = 0.0

    def observe(self, value: float) -> None:
        # The first bucket whose bound is at least the value, as `Histogram.observe` picks it; found
        # before the list is read, so that a flush in another thread cannot come in between.
        i = bisect_left(self.bounds, value)
        self.counts[i] += 1
        self.total += value

    def flush(self) -> None:
        # prometheus-client keeps one value per bucket (made cumulative when collected) and the sum;
        # adding to them is what `observe` does, once per observation instead of once per flush.
        # Taken first, then added: an observation made meanwhile (by a garbage collection's
        # callback, `CollectorPauses`) goes into the next flush rather than being zeroed.
        counts, self.counts = self.counts, [0] * len(self.bounds)
        total, self.total = self.total, 0.0
        for i, count in enumerate(counts):
            if count:
                self.child._buckets[i].inc(count)
        if total:
            self.child._sum.inc(total)


class _Kind:
    """What one kind of request (same endpoint, model, upstream, status, stream, key) updates."""

    __slots__ = ("billed", "disconnects", "duration", "errors", "labels", "requests", "spend", "tokens", "ttft")

    def __init__(self, observer: MetricsObserver, kind: tuple[str, str, str, int, bool, str | None]) -> None:
        endpoint, model, upstream, status, streamed, key = kind
        stream = "true" if streamed else "false"
        status_class = f"{status // 100}xx" if status else NO_VALUE
        self.labels = (endpoint, model, str(status))
        self.requests = observer.count(REQUESTS, endpoint, model, upstream, status_class, stream)
        self.duration = observer.histogram(REQUEST_DURATION, endpoint, model, stream)
        self.ttft = observer.histogram(TIME_TO_FIRST_TOKEN, model)
        self.disconnects = observer.count(CLIENT_DISCONNECTS, endpoint, model)
        self.tokens = tuple(observer.count(TOKENS, model, key, kind) for kind in _TOKEN_TYPES) if key else ()
        self.billed = observer.count(BILLED_UNITS, model, key) if key is not None else None
        self.spend = observer.count(SPEND, model, key) if key is not None else None
        self.errors: dict[str, _Count] = {}  # error code -> count


class MetricsObserver(Observer):
    """Sums each finished exchange into plain counters in memory; `flush()` adds the sums to the
    Prometheus instruments (the runtime flushes every second, and `/metrics` flushes before it renders).

    One addition per label set per flush instead of a dozen locked updates per request: the
    instruments' cost stays off the per-request path, in one worker or several.
    """

    def __init__(self) -> None:
        self._kinds: dict[tuple[str, str, str, int, bool, str | None], _Kind] = {}
        self._counts: dict[tuple[object, ...], _Count] = {}
        self._histograms: dict[tuple[object, ...], _Observations] = {}
        self._in_flight: dict[str, list[int]] = {}  # endpoint -> [requests, streams]

    def count(self, metric: Counter, *labels: str) -> _Count:
        key = (metric, *labels)
        count = self._counts.get(key)
        if count is None:
            count = self._counts[key] = _Count(metric.labels(*labels))
        return count

    def histogram(self, metric: Histogram, *labels: str) -> _Observations:
        key = (metric, *labels)
        observations = self._histograms.get(key)
        if observations is None:
            observations = self._histograms[key] = _Observations(metric.labels(*labels))
        return observations

    def started(self, exchange: Exchange) -> None:
        in_flight = self._in_flight.get(exchange.endpoint)
        if in_flight is None:
            in_flight = self._in_flight[exchange.endpoint] = [0, 0]
        in_flight[0] += 1

    def streaming(self, exchange: Exchange) -> None:
        self._in_flight[exchange.endpoint][1] += 1

    def finished(self, exchange: Exchange) -> None:
        endpoint, model = exchange.endpoint, exchange.route or NO_VALUE
        kind_key = (endpoint, model, exchange.upstream or NO_VALUE, exchange.status, exchange.stream, exchange.key_name)
        kind = self._kinds.get(kind_key)
        if kind is None:
            kind = self._kinds[kind_key] = _Kind(self, kind_key)
        in_flight = self._in_flight[endpoint]
        in_flight[0] -= 1
        kind.requests.pending += 1
        kind.duration.observe(exchange.duration or 0.0)
        if exchange.first_byte_after is not None:
            in_flight[1] -= 1
            kind.ttft.observe(exchange.first_byte_after)
        if exchange.error_code is not None:
            self._error(kind, exchange.error_code)
        if exchange.client_disconnected:
            kind.disconnects.pending += 1
        previous: str | None = None
        for attempt in exchange.attempts:
            self.count(UPSTREAM_ATTEMPTS, attempt.upstream, attempt.outcome).pending += 1
            if attempt.headers_after is not None:
                self.histogram(UPSTREAM_LATENCY, attempt.upstream).observe(attempt.headers_after)
            if previous is not None:
                self.count(UPSTREAM_RETRIES, attempt.upstream, previous).pending += 1
            if attempt.cooldown:
                self.count(COOLDOWNS, attempt.upstream).pending += 1
            previous = attempt.outcome
        if exchange.served_model is not None and exchange.served_model != exchange.model:
            self.count(FALLBACKS, model, exchange.served_model).pending += 1
        usage = exchange.usage
        if usage is not None and kind.tokens:
            prompt, completion, cached, reasoning = kind.tokens
            prompt.pending += usage.prompt_tokens
            completion.pending += usage.completion_tokens
            cached.pending += usage.cached_tokens
            reasoning.pending += usage.reasoning_tokens
            if usage.billed_units and kind.billed is not None:
                kind.billed.pending += usage.billed_units
        if exchange.cost and kind.spend is not None:
            kind.spend.pending += exchange.cost

    def _error(self, kind: _Kind, code: str) -> None:
        code = code if _CODE.match(code) else "other"
        errors = kind.errors.get(code)
        if errors is None:
            errors = kind.errors[code] = self.count(REQUEST_ERRORS, *kind.labels, code)
        errors.pending += 1

    def flush(self) -> None:
        for count in self._counts.values():
            count.flush()
        for observations in self._histograms.values():
            observations.flush()
        for endpoint, (requests, streams) in self._in_flight.items():
            IN_FLIGHT.labels(endpoint).set(requests)
            STREAMS_IN_FLIGHT.labels(endpoint).set(streams)


class CollectorPauses(Observer):
    """Times every collection of the garbage collector (it is a `gc.callbacks` entry while
    installed) into `GC_PAUSES`, summed in memory as request figures are and added at each flush.

    It takes no lock where it runs, inside the collector, which may start while this thread holds
    one (an instrument's, in a flush). No per-request hook: its cost is two clock reads per
    collection. A pause timed may include time another thread ran meanwhile, if the collection let
    it (finalizers can)."""

    def __init__(self) -> None:
        self._started = 0.0
        self._generations = tuple(_Observations(GC_PAUSES.labels(str(g))) for g in range(3))

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self._generations[info["generation"]].observe(time.perf_counter() - self._started)

    def flush(self) -> None:
        for generation in self._generations:
            generation.flush()


# prometheus-client chose where values live when it was imported: this module follows that choice.
_MULTIPROCESS_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def multiprocess_dir() -> str | None:
    return _MULTIPROCESS_DIR


def render() -> tuple[bytes, str]:
    """The exposition text for `/metrics`: this process's, or every worker's summed in multiprocess mode."""
    path = multiprocess_dir()
    if path is None:
        return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
    _forget_dead_workers(path)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    return generate_latest(registry), CONTENT_TYPE_LATEST


_LIVE_GAUGE_FILE = re.compile(r"gauge_live\w+_(\d+)\.db")


def _forget_dead_workers(path: str) -> None:
    """Drop the in-flight and queue gauges of worker processes that died (uvicorn restarts them):
    their counters stay summed, but what was in flight in a dead process is not in flight any more."""
    for name in os.listdir(path):
        match = _LIVE_GAUGE_FILE.fullmatch(name)
        if match is None:
            continue
        pid = int(match.group(1))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            with contextlib.suppress(FileNotFoundError):  # another worker's scrape got there first
                mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
        except PermissionError:
            continue  # alive, under another user
