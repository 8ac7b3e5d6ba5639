"""Admission: rate limits and budgets per key, enforced in Redis so that every replica enforces one.

Rate limits. Each scope (the key, and the key on the models a `model_limits` pattern matches) has
two rings of 60 one-second buckets, hashes under the key's hash tag:

    gw:{<key name>}:rl:requests            field <second % 60> = "<second>:<count>"
    gw:{<key name>}:rl:tokens
    gw:{<key name>}:rl:m:<pattern>:requests   (and :tokens) for a model limit

A request is admitted when no scope's requests of the last 60 seconds would pass its `rpm` and no
scope's tokens have reached its `tpm`; it is then counted (with its estimated prompt tokens) in the
current second. So requests per minute are exact across replicas, over any 60-second window, to the
second. Tokens are settled when the request ends (the real total replaces the estimate), so `tpm`
can be passed by what requests already admitted go on to use.

Budgets. A key with a budget has, per budget period (`day`, `month`: UTC; or `total`):

    gw:{<key name>}:budget:<period>        hash: spent, held
    gw:{<key name>}:holds:<period>         sorted set: one hold per request in flight, by deadline
                                           (and one per lease, see `leases`)
    gw:{<key name>}:leases                 hash: the stage of each lease not yet settled

A request is admitted only while spent + held < budget; it then holds its reservation (its price per
request, its estimated prompt, and its output cap priced; see `PriceTable.reservation`), released when
it ends and its real cost is added to `spent`. So concurrent requests can pass a budget by at most
one request's reservation (the last one admitted) plus what requests cost beyond their reservation
(nothing when the output cap, times `n`, is set and the prompt estimate holds, or with a price per
request only; a fallback to a dearer model can cost more than the first model's reservation).
A hold whose process died is dropped after its deadline.

Everything of one key is read and written by one Lua script, atomically, in one slot. The requests
that arrive in one event-loop turn go in one script call per key, with the settlements of finished
requests (which wait up to `SETTLE_DELAY` to share a call); several calls may be in flight. A replica
busy with a key far from its limits admits most of its requests from a lease instead, counted in
Redis ahead (see `leases`): no call on the request's path, and the limits stay as exact.

When Redis cannot be reached, limits fail open by default (the request is served, a warning is logged
once, `gateway_rate_limit_errors_total` counts it, `/readyz` says degraded) and budgets use the last
balance this replica saw, plus what it served since; settlements wait in memory (bounded) until
Redis is back, and an admission Redis never confirmed adds its cost whether or not its hold is
found. With `fail_open` off such requests get 503 instead.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import orjson

from gateway.accounting.keys import Principal
from gateway.accounting.leases import Lease, lease_size
from gateway.accounting.limits_script import (
    SYNC,
    Admission,
    Hold,
    LeaseStep,
    Pending,
    Scope,
    ScriptCall,
    duration,
    scope_headers,
    token_rings,
)
from gateway.accounting.prices import PriceTable
from gateway.accounting.redis_client import REDIS_ERRORS, rejected
from gateway.errors import GatewayError
from gateway.observability import metrics
from gateway.relay.exchange import Exchange, Observer
from gateway.types import Headers

log = logging.getLogger("gateway.limits")

WINDOW = 60
# Seconds after which the hold of a request whose process died is dropped: longer than any request.
HOLD_SECONDS = 4 * 3600
# Settlements kept while Redis is unreachable; past this the oldest are dropped (and logged).
MAX_SETTLEMENTS = 100_000
# After a failed call, how long admissions skip Redis (so an outage costs no timeout per request).
RETRY_AFTER_FAILURE = 1.0
# Seconds settlements wait for a call they can share with admissions.
SETTLE_DELAY = 0.005


class RateLimited(GatewayError):
    status = 429
    type = "requests"
    code = "rate_limit_exceeded"


class BudgetExceeded(GatewayError):
    status = 429
    type = "insufficient_quota"
    code = "insufficient_quota"


class LimitsUnavailable(GatewayError):
    status = 503
    type = "server_error"
    code = "limits_unavailable"


def estimate_tokens(body_bytes: int) -> int:
    """A prompt's tokens before the upstream counts them: about four bytes of JSON per token."""
    return max(body_bytes // 4, 1)


def budget_period(period: str, now: float) -> str:
    """The current period's id: `2026-11-23` (day), `2026-11` (month) or `total`, UTC."""
    if period == "total":
        return "total"
    day = _utc_day(int(now // 86400))
    return day if period == "day" else day[:7]


@lru_cache(maxsize=4)
def _utc_day(days_since_epoch: int) -> str:
    return datetime.fromtimestamp(days_since_epoch * 86400, UTC).strftime("%Y-%m-%d")


def _label(period: str, period_id: str) -> str:
    """`month 2026-11`, `day 2026-11-23` or `total`: for messages and the last known balances."""
    return f"{period} {period_id}" if period != "total" else "total"


class Limiter:
    def __init__(
        self,
        redis: Any,
        prices: PriceTable | None = None,
        *,
        prefix: str = "gw",
        reserve_output_tokens: int = 1024,
        fail_open: bool = True,
    ) -> None:
        self._redis = redis
        self._prices = prices or PriceTable([])
        self._prefix = prefix
        self._reserve_output = reserve_output_tokens
        self._fail_open = fail_open
        self._sync = redis.register_script(SYNC)
        self._pending: dict[str, Pending] = {}
        self._scheduled: asyncio.Handle | None = None
        self._due = 0.0  # the loop time `_scheduled` runs at
        self._calls: set[asyncio.Task[None]] = set()
        self._scopes: dict[tuple[object, ...], tuple[Scope, ...]] = {}
        self._balances: dict[tuple[str, str], float] = {}  # (key, period) -> spent + held, as last seen
        self._down_until = 0.0
        self._failing = False
        self._hold_prefix = os.urandom(6).hex()  # hold ids: unique per process, then a counter
        self._hold_ids = itertools.count()
        self._leases: dict[tuple[object, ...], Lease] = {}  # by shape: the one admissions take from
        self._live: set[Lease] = set()  # leases whose second is not over
        self._asking: set[tuple[object, ...]] = set()  # shapes with a lease asked for, unanswered
        self._rates: dict[tuple[object, ...], list[int]] = {}  # by shape: see `_busy`

    # --- admission ---

    def scopes(self, principal: Principal, model: str) -> tuple[Scope, ...]:
        """The rate limits a request of `principal` for `model` counts against."""
        cache_key = (principal.name, principal.rpm, principal.tpm, principal.model_limits, model)
        found = self._scopes.get(cache_key)
        if found is None:
            base = f"{self._prefix}:{{{principal.name}}}:rl"
            scopes = []
            if principal.rpm is not None or principal.tpm is not None:
                scopes.append(Scope(f"{base}:requests", f"{base}:tokens", principal.rpm, principal.tpm, ""))
            for pattern, rpm, tpm in principal.matching_model_limits(model):
                scopes.append(Scope(f"{base}:m:{pattern}:requests", f"{base}:m:{pattern}:tokens", rpm, tpm, pattern))
            if len(self._scopes) > 10_000:  # model names come from clients
                self._scopes.clear()
            found = self._scopes[cache_key] = tuple(scopes)
        return found

    async def admit(
        self, principal: Principal, model: str, estimate: int, max_output: int | None = None, choices: int = 1
    ) -> Admission | None:
        """Count a request against its key's limits and budget: `RateLimited` or `BudgetExceeded`
        when over. None: nothing to limit. `choices`: the request's `n` (each may use `max_output`)."""
        scopes = self.scopes(principal, model)
        if not scopes and principal.budget is None:
            return None
        now = time.time()
        second = int(now)
        counted = estimate if any(s.tpm is not None for s in scopes) else 0
        reservation, period = 0.0, ""
        if principal.budget is not None:
            period = budget_period(principal.budget_period, now)
            output = (self._reserve_output if max_output is None else max_output) * max(choices, 1)
            reservation = self._prices.reservation(model, estimate, output)
        shape = (principal.name, scopes, principal.budget, period)
        busy = self._busy(shape, second)
        lease = self._leases.get(shape)
        if lease is not None:
            taken = lease.take(counted, reservation, asyncio.get_running_loop().time())
            if taken is not None:
                return taken
        hold = None
        if principal.budget is not None:
            hold = self._hold(principal, period, reservation)
        if time.monotonic() < self._down_until:
            return self._admit_offline(principal, scopes, counted, hold, second)
        asked = None
        size = 0
        if shape not in self._asking:
            size = lease_size(busy[2], busy[1], scopes, counted, principal.budget, reservation)
        if size:
            self._asking.add(shape)
            lease_hold = None if hold is None else self._hold(principal, period, 2 * size * reservation)
            lease_id = f"{self._hold_prefix}L{next(self._hold_ids)}"
            guards = f"{self._prefix}:{{{principal.name}}}:leases"
            asked = Lease(principal.name, shape, scopes, size, 2 * size * counted, lease_hold, lease_id, guards)
        future = asyncio.get_running_loop().create_future()
        self._queue(principal.name).admissions.append(
            ((scopes, counted, hold, principal.budget, second + HOLD_SECONDS, second, asked), future)
        )
        self._kick()
        try:
            result = await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():  # admitted, then cancelled before it resumed
                self._release(principal.name, counted, hold, second, future.result())
            raise
        if result is None:  # Redis unreachable
            return self._admit_offline(principal, scopes, counted, hold, second)
        refused, counts, spent, held, second, leased, _ = result
        if leased and asked is not None:  # what the lease counted is not this request's to see
            counts = [[r - asked.size, t - asked.granted_tokens, *resets] for r, t, *resets in counts]
        headers = scope_headers(scopes, counts)
        if hold is not None:
            self._balances[(principal.name, hold.period)] = float(spent) + float(held)
        if refused > 0:
            scope = scopes[refused - 1]
            requests, _, r_reset, t_reset = counts[refused - 1]
            metrics.RATE_LIMITED.labels(principal.name).inc()
            by_requests = scope.rpm is not None and requests + 1 > scope.rpm
            wait = r_reset if by_requests else t_reset
            what = f"requests per minute ({scope.rpm})" if by_requests else f"tokens per minute ({scope.tpm})"
            where = f" on models `{scope.label}`" if scope.label else ""
            raise RateLimited(
                f"Rate limit reached for key `{principal.name}`{where}: {what}. Try again in {duration(wait)}.",
                type="requests" if by_requests else "tokens",
                headers=[(b"retry-after", str(max(wait, 1)).encode()), *headers],
            )
        if refused < 0:
            assert hold is not None
            raise self._over_budget(principal, hold, float(spent) + float(held), headers)
        return Admission(principal.name, token_rings(scopes), counted, hold, headers, second)

    def _hold(self, principal: Principal, period: str, amount: float) -> Hold:
        base = f"{self._prefix}:{{{principal.name}}}"
        label = _label(principal.budget_period, period)
        return Hold(f"{base}:budget:{period}", f"{base}:holds:{period}", self._hold_member(amount), amount, label)

    def _hold_member(self, amount: float) -> str:
        """A hold's member in its sorted set: unique, and ending in its amount."""
        return f"{self._hold_prefix}{next(self._hold_ids)}:{amount!r}"

    def _busy(self, shape: tuple[object, ...], second: int) -> list[int]:
        """Counts this replica's admissions of one shape: [this second, in it, in the one before]."""
        busy = self._rates.get(shape)
        if busy is None:
            if len(self._rates) > 10_000:  # model names come from clients
                self._rates.clear()
            busy = self._rates[shape] = [second, 0, 0]
        elif busy[0] != second:
            busy[2] = busy[1] if busy[0] == second - 1 else 0
            busy[0], busy[1] = second, 0
        busy[1] += 1
        return busy

    # --- leases ---

    def _start_lease(self, lease: Lease) -> None:
        self._leases[lease.shape] = lease
        self._live.add(lease)
        asyncio.get_running_loop().call_at(lease.until, self._end_lease, lease)

    def _end_lease(self, lease: Lease) -> None:
        """Its second is over: the first of its steps (see `leases`)."""
        if lease.over:
            return
        self._live.discard(lease)
        if self._leases.get(lease.shape) is lease:
            del self._leases[lease.shape]
        share, hold = lease.hold, None
        if share is not None and lease.in_flight:  # a hold of what the requests in flight reserve
            amount = lease.reserved
            hold = Hold(share.budget_key, share.holds_key, self._hold_member(amount), amount, share.period)
        self._send_step(lease, lease.ended(hold, lease.second + HOLD_SECONDS))

    def _advance(self, lease: Lease) -> None:
        """Send a lease's next step, if it has one to send now."""
        step = lease.next_step()
        if step is not None:
            self._send_step(lease, step)

    def _send_step(self, lease: Lease, step: LeaseStep) -> None:
        lease.sending = step
        released, made = step.release, step.make
        if released is not None and (lease.key, released.period) in self._balances:
            self._balances[(lease.key, released.period)] -= released.reservation - (made.reservation if made else 0.0)
        self._queue(lease.key).steps.append(step)
        self._kick(settle_only=True)

    def _answered(self, steps: list[LeaseStep]) -> None:
        """These steps reached Redis (or never will): their leases may send their next ones."""
        for step in steps:
            lease = step.lease
            if lease is not None and lease.sending is step:
                lease.sending = None
                self._advance(lease)

    def _admit_offline(
        self, principal: Principal, scopes: tuple[Scope, ...], counted: int, hold: Hold | None, second: int
    ) -> Admission | None:
        """Redis is unreachable: rate limits fail open (or refuse), budgets use the last known balance.
        The admission is unconfirmed: its settlement adds its cost whether or not its hold is found."""
        if not self._fail_open:
            # The script may have run before its answer was lost: release a hold it may have made.
            self._release(principal.name, counted, hold, second, None)
            raise LimitsUnavailable("The gateway cannot check this key's limits now; try again shortly.")
        if hold is not None and principal.budget is not None:
            # A replica that never saw the key's balance counts from zero: what it serves during the
            # outage is still bounded by one budget.
            balance_key = (principal.name, hold.period)
            known = self._balances.get(balance_key, 0.0)
            if known >= principal.budget:
                raise self._over_budget(principal, hold, known, [])
            self._balances[balance_key] = known + hold.reservation
        return Admission(principal.name, token_rings(scopes), counted, hold, [], second, confirmed=False)

    def _release(self, name: str, counted: int, hold: Hold | None, second: int, result: list[Any] | None) -> None:
        """Give back what an admission took for a request that will not run. `result`: the script's
        answer (None: unknown, the hold may or may not exist)."""
        if hold is None or (result is not None and result[0] != 0):
            return
        self.settle(Admission(name, (), counted, hold, [], second, confirmed=result is not None), 0, 0.0)

    def _over_budget(self, principal: Principal, hold: Hold, spent: float, headers: Headers) -> BudgetExceeded:
        metrics.BUDGET_REFUSED.labels(principal.name).inc()
        return BudgetExceeded(
            f"Key `{principal.name}` has used its budget ({principal.budget:g}) for {hold.period}: "
            f"{spent:.6g} spent or held by requests in flight.",
            headers=headers,
        )

    async def balance(self, principal: Principal) -> tuple[float, float] | None:
        """(spent, held by requests in flight) in the key's current budget period; None without a budget.
        While Redis is unreachable: the last balance this replica saw (as spent)."""
        if principal.budget is None:
            return None
        period = budget_period(principal.budget_period, time.time())
        label = _label(principal.budget_period, period)
        try:
            spent, held = await self._redis.hmget(
                f"{self._prefix}:{{{principal.name}}}:budget:{period}", "spent", "held"
            )
        except REDIS_ERRORS:
            return self._balances.get((principal.name, label), 0.0), 0.0
        return float(spent or 0), max(float(held or 0), 0.0)

    # --- settling ---

    def settle(self, admission: Admission, tokens: int, cost: float) -> None:
        """Replace a request's estimated tokens by what it used, and its hold by its cost (sent with
        the next script call of its key)."""
        lease = admission.lease
        if lease is not None:  # settled with a step of its lease
            lease.settled(admission, tokens, cost)
            if lease.budget is not None and (admission.key, lease.budget.period) in self._balances:
                self._balances[(admission.key, lease.budget.period)] += cost
            self._advance(lease)
            return
        if admission.hold is None and (not admission.token_rings or tokens == admission.estimate):
            return
        if admission.hold is not None:
            balance_key = (admission.key, admission.hold.period)
            if balance_key in self._balances:
                self._balances[balance_key] += cost - admission.hold.reservation
        self._queue_settlement(admission, tokens, cost)

    def _queue_settlement(self, admission: Admission, tokens: int, cost: float) -> None:
        self._queue(admission.key).settlements.append((admission, tokens, cost))
        self._kick(settle_only=True)

    # --- the script calls ---

    def _queue(self, name: str) -> Pending:
        pending = self._pending.get(name)
        if pending is None:
            pending = self._pending[name] = Pending()
        return pending

    def _kick(self, settle_only: bool = False) -> None:
        """Send what is pending once this loop turn is over: the requests that arrived in it share
        one call per key. Settlements alone wait a little longer, to share calls too."""
        loop = asyncio.get_running_loop()
        due = loop.time() + (SETTLE_DELAY if settle_only else 0.0)
        if self._scheduled is not None:
            if self._due <= due:
                return
            self._scheduled.cancel()
        self._due = due
        self._scheduled = loop.call_at(due, self._send_pending)

    def _send_pending(self) -> None:
        self._scheduled = None
        wait = self._down_until - time.monotonic()
        if wait > 0 and not any(p.admissions for p in self._pending.values()):
            # Redis is failing: settlements wait for the next try rather than fail again now.
            loop = asyncio.get_running_loop()
            self._due = loop.time() + wait
            self._scheduled = loop.call_at(self._due, self._send_pending)
            return
        pending, self._pending = self._pending, {}
        for name, waiting in pending.items():
            task = asyncio.get_running_loop().create_task(self._call(name, waiting))
            self._calls.add(task)
            task.add_done_callback(self._calls.discard)

    async def _call(self, name: str, pending: Pending) -> None:
        """One script call for one key; every waiting admission gets an answer (None: unreachable),
        whatever happens."""
        results = None
        sent = asyncio.get_running_loop().time()
        try:
            answer = await self._sync(keys=(call := ScriptCall(pending)).keys, args=[call.payload])
            results = orjson.loads(answer)
        except REDIS_ERRORS as exc:
            if rejected(exc):  # the same call would fail again: not an outage
                log.error("limits script refused a call for key %s (%s): its settlements are dropped", name, exc)
                self._answered(pending.steps)
            else:
                self._failed(exc)
                self._requeue(name, pending.settlements, pending.steps)
        except Exception:
            log.exception("limits script call for key %s failed", name)
            self._answered(pending.steps)
        else:
            self._recovered()
            self._answered(pending.steps)
        finally:
            for args, future in pending.admissions:
                if args[6] is not None:
                    self._asking.discard(args[6].shape)
                    if results is None:  # perhaps granted: release the hold it may have made
                        self._queue(name).steps.append(args[6].unknown())
                        self._kick(settle_only=True)
                if not future.done() and results is None:
                    future.set_result(None)
        if results is None:
            return
        for (args, future), result in zip(pending.admissions, results, strict=True):
            lease = args[6]
            if lease is not None and result[5] == 1:
                lease.granted(result[4], result[6], sent, result[1])
                self._start_lease(lease)
            elif lease is not None and result[5] == 2:  # granted by an earlier sending of this call
                self._send_step(lease, lease.unknown())  # (its hold is in the balance just seen)
            if not future.done():
                future.set_result(result)
            else:  # its request was cancelled while waiting (the client left)
                self._release(name, args[1], args[2], args[5], result)

    def _requeue(self, name: str, settlements: list[tuple[Admission, int, float]], steps: list[LeaseStep]) -> None:
        if not settlements and not steps:
            return
        self._queue(name).steps[:0] = steps  # in order: a lease's steps apply only one after another
        queue = self._queue(name).settlements
        queue[:0] = settlements
        total = sum(len(p.settlements) for p in self._pending.values())
        if total > MAX_SETTLEMENTS:
            del queue[: min(len(queue), total - MAX_SETTLEMENTS)]
            log.error("Redis unreachable: settlements over %d dropped (budgets undercount them)", MAX_SETTLEMENTS)
        self._kick(settle_only=True)  # tried again once Redis may be back, even if no request comes

    def _failed(self, exc: BaseException) -> None:
        metrics.RATE_LIMIT_ERRORS.inc()
        metrics.REDIS_DEGRADED.labels("limits").set(1)
        self._down_until = time.monotonic() + RETRY_AFTER_FAILURE
        if not self._failing:
            log.warning("rate limits in Redis unreachable, serving without them: %s", type(exc).__name__)
            self._failing = True

    def _recovered(self) -> None:
        if self._failing:
            log.warning("rate limits in Redis reachable again")
            metrics.REDIS_DEGRADED.labels("limits").set(0)
            self._failing = False

    @property
    def degraded(self) -> bool:
        return self._failing

    async def aclose(self) -> None:
        """Send the settlements and lease steps still waiting, and those their answers lead to (for
        two seconds at most)."""
        self._down_until = 0.0
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            for lease in list(self._live):  # (granted by a call that was in flight, too)
                self._end_lease(lease)
            if self._scheduled is not None:
                self._scheduled.cancel()
                self._scheduled = None
            self._send_pending()
            if not self._calls:
                return
            await asyncio.wait(self._calls, timeout=deadline - time.monotonic())


class LimitSettler(Observer):
    """Settles a finished request's tokens and cost against its key's limits and budget."""

    def __init__(self, limiter: Limiter) -> None:
        self._limiter = limiter

    def finished(self, exchange: Exchange) -> None:
        admission = exchange.admission
        if admission is not None:
            used = exchange.usage.total_tokens if exchange.usage is not None and exchange.replied else 0
            self._limiter.settle(admission, used, exchange.cost)
