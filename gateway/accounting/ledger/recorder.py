"""The only place usage is recorded: a finished exchange whose reply reached the client."""

from __future__ import annotations

from gateway.accounting.ledger.base import Ledger, UsageRecord, bounded_metadata
from gateway.dialects.base import Usage
from gateway.relay.exchange import Exchange, Observer


class LedgerRecorder(Observer):
    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    def finished(self, exchange: Exchange) -> None:
        # A reply that started counts, even if the upstream failed or the client left mid-stream:
        # the upstream did (and bills) the work up to there. So does a request that failed after
        # some rounds with its upstream were served (usage set, no reply). An exchange finishes once,
        # whatever its attempts and retries were, so a request is recorded once.
        model = exchange.served_model or exchange.model
        if (exchange.replied or exchange.usage is not None) and exchange.key_name is not None and model is not None:
            self._ledger.record(record_of(exchange, model))


def record_of(exchange: Exchange, model: str) -> UsageRecord:
    attempt = exchange.attempts[-1] if exchange.attempts else None
    return UsageRecord(
        exchange.key_name or "",
        model,
        exchange.usage or Usage(),
        at=exchange.at,
        sess_id=exchange.sess_id,
        request_id=exchange.request_id,
        team=exchange.team,
        requested_model=exchange.model if exchange.model != model else None,
        upstream=attempt.upstream if attempt is not None else None,
        deployment=attempt.model if attempt is not None else None,
        endpoint=exchange.endpoint,
        cost=exchange.cost,
        latency_ms=(exchange.duration or 0.0) * 1000,
        status=exchange.status,
        stream=exchange.stream,
        metadata=bounded_metadata(exchange.metadata),
    )
