"""Where usage goes: Redis when configured, the process's memory otherwise."""

from gateway.accounting.ledger.base import COUNTERS, Ledger, Totals, UsageRecord
from gateway.accounting.ledger.memory import MemoryLedger

__all__ = ["COUNTERS", "Ledger", "MemoryLedger", "Totals", "UsageRecord"]
