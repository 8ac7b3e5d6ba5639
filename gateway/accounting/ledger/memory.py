"""Usage kept in the process: for a laptop or a single replica without Redis. Lost on restart."""

from __future__ import annotations

from gateway.accounting.ledger.base import Aggregate, Totals, UsageRecord, add_into
from gateway.observability.metrics import LEDGER_WRITTEN


class MemoryLedger:
    def __init__(self) -> None:
        self._totals: Aggregate = {}

    def record(self, record: UsageRecord) -> None:
        add_into(self._totals, record.key, record.counters())
        LEDGER_WRITTEN.inc()

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def ready(self) -> bool:
        return True

    async def usage(self, principal: str, day: str) -> dict[str, Totals]:
        return {
            model: dict(totals)
            for (who, when, model), totals in self._totals.items()
            if who == principal and when == day
        }
