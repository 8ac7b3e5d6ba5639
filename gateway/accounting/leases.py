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

The budget share of a lease is a hold in Redis (`Lease.hold`), which covers what its requests cost
while it lasts. When its second is over, one step gives back the unused requests and tokens, makes the
token corrections and spends the cost of its requests that have ended, and swaps its hold for one of
what the requests still running reserve. What those requests use is sent in further steps as they
end; the last step releases that hold. Each step is guarded by the lease's stage in
`gw:{<key name>}:leases` (written by the grant; a step applies only at its stage, then moves it on),
and a lease sends its next step only once the one before is answered, so the steps apply in order
and a call sent again after its answer was lost changes nothing twice; a grant sent again counts
nothing twice. Pure: the Limiter does the I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.accounting.limits_script import Admission, Hold, LeaseStep, Scope, scope_headers, token_rings
from gateway.types import Headers

# Leases are asked for with room for twice what the replica admitted for the key in the last second
# (so one script call a second suffices at a steady rate), at least MIN_LEASE and at most MAX_LEASE.
MIN_LEASE = 4
MAX_LEASE = 4096
# The most of any limit one lease may take (the script checks it too).
LEASE_SHARE = 64
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
    id: str  # unique: its stage's field in the guards hash
    guards_key: str  # the key's hash of lease stages
    size: int = 0  # requests granted
    granted_tokens: int = 0
    second: int = 0  # Redis's second the block is counted in
    until: float = 0.0  # loop time after which it admits nothing
    counts: list[list[int]] = field(default_factory=list)  # per scope, as counted with the block
    budget_left: float = 0.0
    in_flight: int = 0
    reserved: float = 0.0  # what its requests in flight reserve
    over: bool = False
    cost: float = 0.0  # of its requests that ended since its last step
    token_delta: int = 0  # their tokens used minus their estimates
    stage: int = 0  # of its steps made so far (0: granted)
    sending: LeaseStep | None = None  # its step sent and not yet answered
    finished: bool = False  # its last step is made
    budget: Hold | None = None  # its first hold: the budget's keys
    token_rings: tuple[str, ...] = ()  # of its scopes with a tpm

    def __post_init__(self) -> None:
        self.size, self.granted_tokens = self.requests, self.tokens
        self.budget = self.hold
        self.token_rings = token_rings(self.scopes)
        if self.hold is not None:
            self.budget_left = self.hold.reservation

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
        self.reserved += reservation
        return Admission(
            self.key, self.token_rings, estimate, None, self.headers(), self.second, lease=self,
            reservation=reservation,
        )  # fmt: skip

    def settled(self, admission: Admission, tokens: int, cost: float) -> None:
        """One of its requests has ended."""
        self.in_flight -= 1
        self.reserved -= admission.reservation
        self.cost += cost
        if admission.token_rings:
            self.token_delta += tokens - admission.estimate

    def headers(self) -> Headers:
        """The rate limit headers as if the block's unused part were not counted."""
        counts = [[r - self.requests, t - self.tokens, *resets] for r, t, *resets in self.counts]
        return scope_headers(self.scopes, counts)

    def ended(self, hold: Hold | None, deadline: int) -> LeaseStep:
        """The step when its second is over: give back what it did not use, correct the tokens and
        spend the cost of its requests so far, and hold (as `hold`, made by the caller) what its
        requests still in flight reserve instead of the whole share."""
        self.over = True
        self.finished = not self.in_flight
        step = LeaseStep(
            self.guards_key, self.id, "granted", "" if self.finished else "1",
            tuple(s.requests_key for s in self.scopes), -self.requests,
            self.token_rings, self.token_delta - self.tokens, self.second,
            self.budget, self.hold, self.cost, None if self.finished else hold, deadline, lease=self,
        )  # fmt: skip
        self.stage, self.hold = 1, step.make
        self.cost, self.token_delta = 0.0, 0
        return step

    def next_step(self) -> LeaseStep | None:
        """Once it is over and its step before is answered: what its requests used since, and
        with the last of them, the release of its hold. None: nothing to send now."""
        if not self.over or self.finished or self.sending is not None:
            return None
        last = not self.in_flight
        if not last and not self.cost and not self.token_delta:
            return None
        step = LeaseStep(
            self.guards_key, self.id, str(self.stage), "" if last else str(self.stage + 1),
            token_rings=self.token_rings, token_delta=self.token_delta, second=self.second,
            budget=self.budget, release=self.hold if last else None, cost=self.cost, lease=self,
        )  # fmt: skip
        self.stage += 1
        self.finished = last
        self.cost, self.token_delta = 0.0, 0
        return step

    def unknown(self) -> LeaseStep:
        """The step for a lease whose grant is unknown (the call's answer was lost, or it was
        granted by an earlier sending of the same call): release the hold it may have made. What
        it may have counted stays counted for its minute (its second is unknown)."""
        self.over = self.finished = True
        return LeaseStep(self.guards_key, self.id, "granted", "", budget=self.hold, release=self.hold)


def lease_size(
    last_second: int,
    this_second: int,
    scopes: tuple[Scope, ...] = (),
    estimate: int = 0,
    budget: float | None = None,
    reservation: float = 0.0,
) -> int:
    """How many requests to ask a lease for, given what the replica admitted for the key in the last
    second and so far in this one, within a 64th of every limit (a lease takes twice a request's
    estimate and reservation per request); 0: not busy enough, or the limits too small, to ask."""
    size = min(2 * max(last_second, this_second), MAX_LEASE)
    for scope in scopes:
        if scope.rpm is not None:
            size = min(size, scope.rpm // LEASE_SHARE)
        if scope.tpm is not None and estimate:
            size = min(size, scope.tpm // (LEASE_SHARE * 2 * estimate))
    if budget is not None and reservation > 0:
        size = min(size, int(budget / (LEASE_SHARE * 2 * reservation)))
        while size > 0 and 2 * size * reservation * LEASE_SHARE > budget:  # as the script computes it
            size -= 1
    return size if size >= MIN_LEASE else 0
