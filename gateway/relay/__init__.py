"""One request end to end: the per-request record (`Exchange`) and the relay that moves its bytes."""

from gateway.relay.exchange import Attempt, Exchange, Exchanges, Observer
from gateway.relay.relay import Relay, Reply, Stream

__all__ = ["Attempt", "Exchange", "Exchanges", "Observer", "Relay", "Reply", "Stream"]
