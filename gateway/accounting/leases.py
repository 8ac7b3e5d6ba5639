"""Admission leases: a replica admits most requests of a busy key without a Redis round trip.

When a key is far from its limits, the script call that admits one of its requests may also grant the
replica a lease: a block of requests (and of estimated tokens, and of budget) counted in Redis at
once, in the key's current second, as if that many requests had been admitted. The replica then
admits requests from the block by itself until the block runs out or Redis's second is over, and
gives back what it did not use. So Redis counts never fall short of what was admitted, and limits stay
exact across replicas: a lease can only make another replica refuse early, by its unused part for at
most a second, and none is granted unless it is at most a 64th of every limit (of the budget too)
and every limit stays within half of it with the lease counted.

The `x-ratelimit-remaining-*` headers of a request admitted from a lease count this replica's
admissions exactly and other replicas' as they were when the lease was granted.

The budget share of a lease is one hold in Redis (`LEASE_HOLD`): the requests admitted from it add
their cost to `spent` as they end, and the hold is released once the lease is over and its last
request has ended. Until then a request's cost counts twice (in `spent` and in the hold): budgets
refuse early, never late. Pure: the Limiter does the I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.accounting.limits_script import Admission, Hold, Scope, scope_headers
from gateway.types import Headers

# Leases are asked for with room for twice what the replica admitted for the key in the last second
# (so one script call a second suffices at a steady rate), at least MIN_LEASE and at most MAX_LEASE.
MIN_LEASE = 4
MAX_LEASE = 4096
# A lease ends this long before Redis's second (as measured from when its call was sent) is over.
MARGIN = 0.002


@dataclass(slots=True, eq=False)
class Lease:
    """A block of admissions a replica holds for one key (and set of scopes) in one second."""

    key: str
    shape: tuple[object, ...]  # what admissions it serves: key, limits, model scopes, budget period
    scopes: tuple[Scope, ...]
    requests: int  # admissions left
    tokens: int  # estimated tokens left
    hold: Hold | None  # its budget share in Redis (reservation: the amount), None without a budget
    size: int = 0  # requests granted
    granted_tokens: int = 0
    second: int = 0  # Redis's second the block is counted in
    until: float = 0.0  # loop time after which it admits nothing
    counts: list[list[int]] = field(default_factory=list)  # per scope, as counted with the block
    share: Hold | None = None  # what its admissions carry: the budget to add their cost to
    budget_left: float = 0.0
    in_flight: int = 0
    over: bool = False

    def __post_init__(self) -> None:
        self.size, self.granted_tokens = self.requests, self.tokens
        if self.hold is not None:
            self.budget_left = self.hold.reservation
            self.share = Hold(self.hold.budget_key, self.hold.holds_key, "", 0.0, self.hold.period)

    def granted(self, second: int, usec: int, sent: float, counts: list[list[int]]) -> None:
        """The script granted it in Redis's `second` (`usec` into it); its call was sent at loop
        time `sent`, so Redis's second is over no sooner than `sent` plus what was left of it."""
        self.second, self.counts = second, counts
        self.until = sent + (1_000_000 - usec) / 1_000_000 - MARGIN

    def take(self, estimate: int, reservation: float, now: float) -> Admission | None:
        """One admission from the block, or None when it cannot cover this request."""
        if self.over or now >= self.until or self.requests < 1 or self.tokens < estimate:
            return None
        if self.hold is not None and self.budget_left < reservation:
            return None
        self.requests -= 1
        self.tokens -= estimate
        self.budget_left -= reservation
        self.in_flight += 1
        rings = tuple(s.tokens_key for s in self.scopes if s.tpm is not None)
        return Admission(self.key, rings, estimate, self.share, self.headers(), self.second, lease=self)

    def headers(self) -> Headers:
        """The rate limit headers as if the block's unused part were not counted."""
        unused_tokens = self.tokens
        counts = [[r - self.requests, t - unused_tokens, *resets] for r, t, *resets in self.counts]
        return scope_headers(self.scopes, counts)

    def unused(self) -> tuple[Admission | None, Admission | None]:
        """What to give back when it is over, as settlements of no tokens: the unused requests
        from every scope's requests ring, the unused tokens from every tokens ring."""
        requests = tuple(s.requests_key for s in self.scopes)
        tokens = tuple(s.tokens_key for s in self.scopes if s.tpm is not None)
        return (
            Admission(self.key, requests, self.requests, None, [], self.second) if self.requests else None,
            Admission(self.key, tokens, self.tokens, None, [], self.second) if self.tokens and tokens else None,
        )


def lease_size(last_second: int, this_second: int) -> int:
    """How many requests to ask a lease for, given what the replica admitted for the key in the last
    second and so far in this one; 0: not busy enough to ask."""
    size = min(2 * max(last_second, this_second), MAX_LEASE)
    return size if size >= MIN_LEASE else 0
