"""What the gateway reads of any client body besides the model: routing, limits and the ledger."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.types import JSON


@dataclass(frozen=True, slots=True)
class Hints:
    sess_id: str | None = None  # sticky deployment, session usage (the `sess_id` extension)
    retries: int | None = None  # the client's `retries` extension
    max_output: int | None = None  # the output cap, for budget reservations
    metadata: JSON | None = None  # the client's tags, for the request log
