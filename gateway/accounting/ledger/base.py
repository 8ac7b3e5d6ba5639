"""The ledger interface and the record of one completed request."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Protocol, TypeVar

from gateway.dialects.base import Usage

# The counters kept per key, model and day; `billed_units` is a float, the rest integers.
COUNTERS = (
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "billed_units",
)

Totals = dict[str, float]  # counter name -> value


@dataclass(slots=True)
class UsageRecord:
    principal: str  # key name
    model: str  # the model name the client asked for
    usage: Usage
    at: float = field(default_factory=time.time)
    sess_id: str | None = None

    @property
    def day(self) -> str:
        return _utc_day(int(self.at // 86400))

    @property
    def key(self) -> tuple[str, str, str]:
        """(principal, day, model): what usage is summed by."""
        return (self.principal, self.day, self.model)

    def counters(self) -> Totals:
        u = self.usage
        counts: Totals = {
            "requests": 1,
            "prompt_tokens": u.prompt_tokens,
            "completion_tokens": u.completion_tokens,
            "total_tokens": u.total_tokens,
            "cached_tokens": u.cached_tokens,
            "reasoning_tokens": u.reasoning_tokens,
        }
        if u.billed_units is not None:
            counts["billed_units"] = u.billed_units
        return counts


@lru_cache(maxsize=8)
def _utc_day(days_since_epoch: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(days_since_epoch * 86400))


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
