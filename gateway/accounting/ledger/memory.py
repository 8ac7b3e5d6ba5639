"""Usage kept in the process: for a laptop or a single replica without Redis. Lost on restart."""

from __future__ import annotations

from collections import deque
from typing import Any

from gateway.accounting.ledger.base import Aggregate, Totals, UsageQuery, UsageRecord, add_into, sort_rows, usage_row
from gateway.observability.metrics import LEDGER_WRITTEN

# The request log held in memory: the latest entries of every key together.
LOG_ENTRIES = 10_000


class MemoryLedger:
    def __init__(self, log_entries: int = LOG_ENTRIES) -> None:
        self._totals: Aggregate = {}
        self._teams: dict[tuple[str, str, str], str | None] = {}
        self._log: deque[dict[str, Any]] = deque(maxlen=log_entries)

    def record(self, record: UsageRecord) -> None:
        add_into(self._totals, record.key, record.counters())
        self._teams[record.key] = record.team
        self._log.append(record.entry())
        LEDGER_WRITTEN.inc()

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def ready(self) -> bool:
        return True

    @property
    def backlog(self) -> int:
        return 0

    async def usage(self, principal: str, day: str) -> dict[str, Totals]:
        return {
            model: dict(totals)
            for (who, when, model), totals in self._totals.items()
            if who == principal and when == day
        }

    async def rows(self, query: UsageQuery) -> list[dict[str, Any]]:
        return sort_rows(
            [
                usage_row(key, day, model, self._teams.get((key, day, model)), totals)
                for (key, day, model), totals in self._totals.items()
                if query.wants(key, day, model, self._teams.get((key, day, model)))
            ]
        )

    async def requests(self, principal: str, limit: int) -> list[dict[str, Any]]:
        out = []
        for entry in reversed(self._log):
            if entry["key"] == principal:
                out.append(entry)
                if len(out) >= limit:
                    break
        return out
