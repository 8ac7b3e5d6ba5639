"""The ledger interface and the record of one completed request."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol, TypeVar

import orjson

from gateway.dialects.base import Usage

# Token counts kept per key, model and day, as the upstreams report them (see `Usage`).
TOKEN_FIELDS = (
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "audio_tokens",
    "image_tokens",
    "video_tokens",
    "citation_tokens",
    "accepted_prediction_tokens",
    "rejected_prediction_tokens",
)
# Every counter of a usage row. `billed_units` and `cost` are floats, the rest integers;
# `estimated_requests` counts the requests whose tokens the gateway estimated.
COUNTERS = ("requests", *TOKEN_FIELDS, "billed_units", "cost", "estimated_requests")
FLOAT_COUNTERS = frozenset({"billed_units", "cost"})

Totals = dict[str, float]  # counter name -> value

# OpenAI's bounds on `metadata`: what of it the request log keeps, so a client cannot make it large.
METADATA_PAIRS, METADATA_KEY_CHARS, METADATA_VALUE_CHARS = 16, 64, 512


def bounded_metadata(metadata: Mapping[str, object] | None) -> dict[str, str] | None:
    """The client's `metadata` within OpenAI's bounds (16 pairs, keys of 64 characters, values of
    512); a value that is not a string is kept as its JSON."""
    if not metadata:
        return None
    out: dict[str, str] = {}
    for key, value in list(metadata.items())[:METADATA_PAIRS]:
        if not isinstance(value, str):
            try:
                value = orjson.dumps(value).decode()
            except orjson.JSONEncodeError:
                value = "?"
        out[str(key)[:METADATA_KEY_CHARS]] = value[:METADATA_VALUE_CHARS]
    return out


@dataclass(slots=True)
class UsageRecord:
    """One request whose reply reached its client: what the ledger aggregates and logs."""

    principal: str  # key name
    model: str  # the model that answered: the client's, or the fallback that answered for it
    usage: Usage
    at: float = field(default_factory=time.time)
    sess_id: str | None = None
    request_id: str = ""
    team: str | None = None
    requested_model: str | None = None  # the model the client asked for, when another answered
    upstream: str | None = None  # the upstream's config name
    deployment: str | None = None  # the model name sent to the upstream
    endpoint: str = "chat.completions"
    cost: float = 0.0
    latency_ms: float = 0.0
    status: int = 200
    stream: bool = False
    metadata: dict[str, str] | None = None  # the client's `metadata` field, bounded (`bounded_metadata`)

    @property
    def day(self) -> str:
        return _utc_day(int(self.at // 86400))

    @property
    def key(self) -> tuple[str, str, str]:
        """(principal, day, model): what usage is summed by."""
        return (self.principal, self.day, self.model)

    def counters(self) -> Totals:
        """The non-zero counters this request adds to its key, model and day."""
        u = self.usage
        counts: Totals = {"requests": 1}
        for name in TOKEN_FIELDS:
            value = getattr(u, name)
            if value:
                counts[name] = value
        if u.billed_units:
            counts["billed_units"] = u.billed_units
        if self.cost:
            counts["cost"] = self.cost
        if u.estimated:
            counts["estimated_requests"] = 1
        return counts

    def entry(self, counters: Totals | None = None) -> dict[str, Any]:
        """The request log's entry: everything known about the request, zero counts left out.
        `counters`: this record's `counters()`, when already made."""
        usage = dict(counters if counters is not None else self.counters())
        del usage["requests"]
        usage.pop("cost", None)
        usage.pop("estimated_requests", None)
        out: dict[str, object] = {
            "request_id": self.request_id,
            "at": round(self.at, 3),
            "key": self.principal,
            "team": self.team,
            "model": self.model,
            "requested_model": self.requested_model,
            "upstream": self.upstream,
            "deployment": self.deployment,
            "endpoint": self.endpoint,
            "status": self.status,
            "stream": self.stream,
            "latency_ms": round(self.latency_ms, 3),
            "usage": usage,
            "estimated": self.usage.estimated,
            "cost": self.cost,
            "sess_id": self.sess_id,
            "metadata": self.metadata,
        }
        return {name: value for name, value in out.items() if value is not None}


@lru_cache(maxsize=8)
def _utc_day(days_since_epoch: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(days_since_epoch * 86400))


@dataclass(frozen=True, slots=True)
class UsageQuery:
    """Which usage rows to read; every given filter must match. Days are `YYYY-MM-DD`, UTC, inclusive."""

    key: str | None = None
    team: str | None = None
    model: str | None = None
    since: str | None = None
    until: str | None = None

    def wants_day(self, day: str) -> bool:
        return (self.since is None or day >= self.since) and (self.until is None or day <= self.until)

    def wants(self, key: str, day: str, model: str, team: str | None) -> bool:
        return (
            (self.key is None or key == self.key)
            and (self.model is None or model == self.model)
            and (self.team is None or team == self.team)
            and self.wants_day(day)
        )


def usage_row(key: str, day: str, model: str, team: str | None, totals: Mapping[str, float]) -> dict[str, Any]:
    """One row of a usage answer: every counter present (0 when none), integers where they are counts."""
    row: dict[str, Any] = {"key": key, "team": team, "model": model, "day": day}
    for name in COUNTERS:
        value = totals.get(name, 0)
        row[name] = float(value) if name in FLOAT_COUNTERS else int(value)
    return row


def sort_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda row: (str(row["day"]), str(row["key"]), str(row["model"])))


# (principal, day, model) -> counters
Aggregate = dict[tuple[str, str, str], Totals]
K = TypeVar("K")


def add_into(aggregate: dict[K, Totals], key: K, counters: Totals) -> None:
    """Sum `counters` into the totals kept under `key`."""
    totals = aggregate.get(key)
    if totals is None:
        totals = aggregate[key] = defaultdict(float)
    for name, value in counters.items():
        totals[name] += value


class Ledger(Protocol):
    def record(self, record: UsageRecord) -> None:
        """Queue a record; never blocks and never raises."""
        ...

    async def start(self) -> None: ...

    async def aclose(self) -> None:
        """Write what is queued (best effort) and release connections."""
        ...

    async def ready(self) -> bool:
        """Whether the store is reachable now."""
        ...

    async def usage(self, principal: str, day: str) -> dict[str, Totals]:
        """Totals per model for one key and one UTC day (`YYYY-MM-DD`), as stored."""
        ...

    async def rows(self, query: UsageQuery) -> list[dict[str, Any]]:
        """Usage per key, model and day (see `usage_row`), sorted by day, key and model."""
        ...

    async def requests(self, principal: str, limit: int) -> list[dict[str, Any]]:
        """The key's latest request log entries (see `UsageRecord.entry`), newest first."""
        ...

    @property
    def backlog(self) -> int:
        """Requests recorded but not yet written to the store."""
        ...
