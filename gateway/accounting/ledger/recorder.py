"""The only place usage is recorded: a finished exchange whose reply reached the client."""

from __future__ import annotations

from gateway.accounting.ledger.base import Ledger, UsageRecord
from gateway.dialects.base import Usage
from gateway.relay.exchange import Exchange, Observer


class LedgerRecorder(Observer):
    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    def finished(self, exchange: Exchange) -> None:
        # A reply that started counts, even if the upstream failed or the client left mid-stream:
        # the upstream did (and bills) the work up to there.
        # Under the model that served: the client's, or the fallback that answered for it.
        model = exchange.served_model or exchange.model
        if exchange.replied and exchange.key_name is not None and model is not None:
            usage = exchange.usage or Usage()
            self._ledger.record(UsageRecord(exchange.key_name, model, usage, sess_id=exchange.sess_id))
