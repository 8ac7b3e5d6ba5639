"""One request end to end: the per-request record (`Exchange`) and the relay that moves its bytes."""

from gateway.relay.exchange import Attempt, Exchange, Exchanges, Observer
from gateway.relay.relay import Relay, Reply
from gateway.relay.stream import Stream

__all__ = ["Attempt", "Exchange", "Exchanges", "Observer", "Relay", "Reply", "Stream"]
