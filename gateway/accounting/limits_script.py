"""The one Lua script of admission (rate limits and budgets of one key, atomically, in one slot),
the records it counts with, and how one call's keys and payload are built. Pure: no I/O."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from gateway.types import Headers

if TYPE_CHECKING:
    from gateway.accounting.leases import Lease

BUDGET_TTL = {"day": 3 * 86400, "month": 62 * 86400, "total": 0}
# Seconds a key's lease guards are kept after its last lease was granted: longer than any request.
GUARD_TTL = 4 * 3600

# KEYS: every Redis key the batch names. ARGV[1]: JSON
#   {s: settlements [[token ring indices], token delta, budget index, holds index, hold, reservation, cost,
#                    confirmed (1: the hold is known to be in Redis), second of admission],
#    l: lease steps  [guard hash index, lease id, stage it applies at, stage after ('': none left),
#                     [requests ring indices], requests delta, [token ring indices], token delta, second,
#                     budget index, holds index, hold to release, its amount, cost,
#                     hold to make, its amount, its deadline],
#    a: admissions  [[[requests index, tokens index, rpm, tpm], ...], estimate,
#                     budget index, holds index, budget, hold, reservation, deadline, budget TTL,
#                     lease asked for: 0 or [requests, tokens, amount, hold, guard hash index, lease id,
#                                            guard TTL]]}
# (index 0: none). Returns JSON: per admission [refused (0; i: scope i; -1: budget), per scope
# [requests, tokens, requests reset, tokens reset] as counted after it, spent, held, the second,
# lease: 1 granted, 0 not, 2 granted before (the call was sent again), microseconds into the second].
# A hold is added to `held` only when it is new, so a call sent again adds nothing twice.
SYNC = """
-- Redis's clock, not the replicas': their skew cannot move a request to another second.
local time = redis.call('TIME')
local now, usec = tonumber(time[1]), tonumber(time[2])
local batch = cjson.decode(ARGV[1])
local rings = {}
local function ring(key)
  local r = rings[key]
  if r then return r end
  local all = redis.call('HGETALL', key)
  r = {total = 0, oldest = now, slots = {}}
  for i = 1, #all, 2 do
    local sec, n = string.match(all[i + 1], '(%d+):(%d+)')
    sec, n = tonumber(sec), tonumber(n)
    if sec > now - 60 then
      r.total = r.total + n
      if sec < r.oldest then r.oldest = sec end
    end
    if sec == now then r.slots[all[i]] = n end
  end
  rings[key] = r
  return r
end
local function add(key, n)
  local r = ring(key)
  local slot = tostring(now % 60)
  local before = r.slots[slot] or 0
  local count = math.max(before + n, 0)
  r.slots[slot] = count
  r.total = r.total + count - before
  redis.call('HSET', key, slot, now .. ':' .. count)
  redis.call('EXPIRE', key, 120)
end
local function add_at(key, sec, n)
  -- A correction goes to the second its estimate was counted in, while that is in the window.
  if sec == now then return add(key, n) end
  if sec <= now - 60 then return end
  local r = ring(key)
  local slot = tostring(sec % 60)
  local cur = redis.call('HGET', key, slot)
  local before = 0
  if cur then
    local s, c = string.match(cur, '(%d+):(%d+)')
    if tonumber(s) == sec then before = tonumber(c) end
  end
  local count = math.max(before + n, 0)
  r.total = r.total + count - before
  redis.call('HSET', key, slot, sec .. ':' .. count)
end
local function release_stale(budget, holds)
  local stale = redis.call('ZRANGEBYSCORE', holds, '-inf', now)
  if #stale > 0 then
    local sum = 0
    for _, hold in ipairs(stale) do sum = sum + tonumber(string.match(hold, ':([^:]+)$')) end
    redis.call('HINCRBYFLOAT', budget, 'held', -sum)
    redis.call('ZREMRANGEBYSCORE', holds, '-inf', now)
  end
end
for _, s in ipairs(batch.s) do
  local apply = true
  if s[4] > 0 and s[5] ~= '' then
    local removed = redis.call('ZREM', KEYS[s[4]], s[5]) == 1
    if removed then redis.call('HINCRBYFLOAT', KEYS[s[3]], 'held', -tonumber(s[6])) end
    -- A confirmed hold found gone: this settlement was applied before (its first answer was lost).
    if s[8] == 1 then apply = removed end
  end
  if apply then
    if s[3] > 0 and tonumber(s[7]) > 0 then redis.call('HINCRBYFLOAT', KEYS[s[3]], 'spent', s[7]) end
    if s[2] ~= 0 then for _, t in ipairs(s[1]) do add_at(KEYS[t], s[9], s[2]) end end
  end
end
for _, l in ipairs(batch.l or {}) do
  -- A lease's steps go from stage to stage: each applies once, and only after the one before.
  local guards = KEYS[l[1]]
  if redis.call('HGET', guards, l[2]) == l[3] then
    if l[4] == '' then redis.call('HDEL', guards, l[2]) else redis.call('HSET', guards, l[2], l[4]) end
    if l[6] ~= 0 then for _, r in ipairs(l[5]) do add_at(KEYS[r], l[9], l[6]) end end
    if l[8] ~= 0 then for _, t in ipairs(l[7]) do add_at(KEYS[t], l[9], l[8]) end end
    if l[10] > 0 then
      local budget, holds = KEYS[l[10]], KEYS[l[11]]
      if l[12] ~= '' and redis.call('ZREM', holds, l[12]) == 1 then
        redis.call('HINCRBYFLOAT', budget, 'held', -tonumber(l[13]))
      end
      if tonumber(l[14]) > 0 then redis.call('HINCRBYFLOAT', budget, 'spent', l[14]) end
      if l[15] ~= '' and redis.call('ZADD', holds, l[17], l[15]) == 1 then
        redis.call('HINCRBYFLOAT', budget, 'held', l[16])
      end
    end
  end
end
local out = {}
for _, a in ipairs(batch.a) do
  local refused, counts = 0, {}
  for i, scope in ipairs(a[1]) do
    local r, t = ring(KEYS[scope[1]]), ring(KEYS[scope[2]])
    if refused == 0 and ((scope[3] > 0 and r.total + 1 > scope[3]) or (scope[4] > 0 and t.total >= scope[4])) then
      refused = i
    end
  end
  local spent, held = 0, 0
  if a[3] > 0 then
    release_stale(KEYS[a[3]], KEYS[a[4]])
    spent = tonumber(redis.call('HGET', KEYS[a[3]], 'spent') or '0')
    held = tonumber(redis.call('HGET', KEYS[a[3]], 'held') or '0')
    if refused == 0 and spent + held >= tonumber(a[5]) then refused = -1 end
  end
  local function count(n, tokens, hold, amount)
    for _, scope in ipairs(a[1]) do
      add(KEYS[scope[1]], n)
      if scope[4] > 0 and tokens > 0 then add(KEYS[scope[2]], tokens) end
    end
    if a[3] > 0 and tonumber(amount) > 0 and redis.call('ZADD', KEYS[a[4]], a[8], hold) == 1 then
      held = tonumber(redis.call('HINCRBYFLOAT', KEYS[a[3]], 'held', amount))
      if a[9] > 0 then
        redis.call('EXPIRE', KEYS[a[3]], a[9])
        redis.call('EXPIRE', KEYS[a[4]], a[9])
      end
    end
  end
  local leased = 0
  if refused == 0 then
    count(1, a[2], a[6], a[7])
    -- A lease only while it is at most a 64th of every limit, and every limit stays within half
    -- of it with the lease counted.
    local lease = a[10]
    if type(lease) == 'table' and lease[1] then
      local amount, budget = tonumber(lease[3]), tonumber(a[5])
      local ok = a[3] == 0 or (amount * 64 <= budget and (spent + held + amount) * 2 <= budget)
      for _, scope in ipairs(a[1]) do
        local r, t = ring(KEYS[scope[1]]), ring(KEYS[scope[2]])
        if (scope[3] > 0 and (lease[1] * 64 > scope[3] or (r.total + lease[1]) * 2 > scope[3])) or
           (scope[4] > 0 and (lease[2] * 64 > scope[4] or (t.total + lease[2]) * 2 > scope[4])) then
          ok = false
        end
      end
      if ok then
        if redis.call('HSETNX', KEYS[lease[5]], lease[6], 'granted') == 1 then
          count(lease[1], lease[2], lease[4], lease[3])
          redis.call('EXPIRE', KEYS[lease[5]], lease[7])
          leased = 1
        else
          leased = 2
        end
      end
    end
  end
  for _, scope in ipairs(a[1]) do
    local r, t = ring(KEYS[scope[1]]), ring(KEYS[scope[2]])
    counts[#counts + 1] = {r.total, t.total, r.oldest + 60 - now, t.oldest + 60 - now}
  end
  out[#out + 1] = {refused, counts, tostring(spent), tostring(held), now, leased, usec}
end
return cjson.encode(out)
"""


@dataclass(frozen=True, slots=True)
class Scope:
    """One rate limit a request counts against: the key's own, or the key's on some models."""

    requests_key: str
    tokens_key: str
    rpm: int | None
    tpm: int | None
    label: str  # for messages: "" (the key) or the model pattern


# Hold and Admission are made per request: plain slotted dataclasses (frozen ones cost more to make).
@dataclass(slots=True)
class Hold:
    """A request's reservation against its key's budget for one period."""

    budget_key: str
    holds_key: str
    member: str  # "<random id>:<amount>", unique
    reservation: float
    period: str  # e.g. `month 2026-11`, for messages and the last known balance


@dataclass(slots=True)
class Admission:
    """What admission counted for a request, and the headers its reply carries."""

    key: str
    token_rings: tuple[str, ...]  # the tokens rings of scopes with a tpm, settled at the end
    estimate: int
    hold: Hold | None
    headers: Headers
    second: int  # when it was counted (Unix seconds): where its token correction goes
    confirmed: bool = True  # counted by Redis (else admitted while Redis was unreachable)
    lease: Lease | None = None  # the lease it was admitted from, without a call to Redis
    reservation: float = 0.0  # what it reserves of its lease's budget share


@dataclass(slots=True)
class LeaseStep:
    """A change to what a lease counted in Redis, applied once, at its stage (see `leases`)."""

    guards_key: str
    lease_id: str
    stage: str  # the stage it applies at
    next_stage: str  # "": the lease is done
    request_rings: tuple[str, ...] = ()
    request_delta: int = 0
    token_rings: tuple[str, ...] = ()
    token_delta: int = 0
    second: int = 0
    budget: Hold | None = None  # a hold of the key's budget in the period: its keys are the step's
    release: Hold | None = None
    cost: float = 0.0
    make: Hold | None = None
    deadline: int = 0
    lease: Lease | None = None  # told when the step is answered, to send its next one


@dataclass(slots=True)
class Pending:
    """What waits for a key's next script call."""

    # ((scopes, counted tokens, hold, budget, hold deadline, second, lease asked for or None),
    #  the waiting request's future)
    admissions: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = field(default_factory=list)
    settlements: list[tuple[Admission, int, float]] = field(default_factory=list)  # (admission, tokens, cost)
    steps: list[LeaseStep] = field(default_factory=list)


class ScriptCall:
    """The keys and the JSON payload of one script call (see `_SYNC`)."""

    def __init__(self, pending: Pending) -> None:
        self.keys: list[str] = []
        self._index: dict[str, int] = {}
        settlements = [
            [
                [self._at(ring) for ring in a.token_rings],
                (tokens - a.estimate if a.confirmed else tokens) if a.token_rings else 0,
                self._at(a.hold.budget_key if a.hold else None),
                self._at(a.hold.holds_key if a.hold and a.hold.reservation > 0 else None),
                a.hold.member if a.hold else "",
                repr(a.hold.reservation) if a.hold else "0",
                repr(cost),
                1 if a.confirmed else 0,
                a.second,
            ]
            for a, tokens, cost in pending.settlements
        ]
        steps = [
            [
                self._at(step.guards_key),
                step.lease_id,
                step.stage,
                step.next_stage,
                [self._at(ring) for ring in step.request_rings],
                step.request_delta,
                [self._at(ring) for ring in step.token_rings],
                step.token_delta,
                step.second,
                self._at(step.budget.budget_key if step.budget else None),
                self._at(step.budget.holds_key if step.budget else None),
                step.release.member if step.release else "",
                repr(step.release.reservation) if step.release else "0",
                repr(step.cost),
                step.make.member if step.make else "",
                repr(step.make.reservation) if step.make else "0",
                step.deadline,
            ]
            for step in pending.steps
        ]
        admissions = [
            [
                [[self._at(s.requests_key), self._at(s.tokens_key), s.rpm or 0, s.tpm or 0] for s in scopes],
                counted,
                self._at(hold.budget_key if hold else None),
                self._at(hold.holds_key if hold else None),
                repr(float(budget)) if hold else "0",
                hold.member if hold else "",
                repr(hold.reservation) if hold else "0",
                deadline,
                BUDGET_TTL[hold.period.split(" ")[0]] if hold else 0,
                self._lease(lease),
            ]
            for (scopes, counted, hold, budget, deadline, _, lease), _ in pending.admissions
        ]
        # Lua's cjson reads an empty array as an empty object; `ipairs` walks both alike.
        self.payload = orjson.dumps({"s": settlements, "l": steps, "a": admissions})

    def _lease(self, lease: Lease | None) -> object:
        if lease is None:
            return 0
        hold = lease.hold
        amount, member = (repr(hold.reservation), hold.member) if hold else ("0", "")
        return [lease.requests, lease.tokens, amount, member, self._at(lease.guards_key), lease.id, GUARD_TTL]

    def _at(self, key: str | None) -> int:
        """The key's 1-based index in KEYS (0: none)."""
        if key is None:
            return 0
        if key not in self._index:
            self.keys.append(key)
            self._index[key] = len(self.keys)
        return self._index[key]


def limit_headers(
    rpm: int | None, tpm: int | None, requests: int, tokens: int, request_reset: int, token_reset: int
) -> Headers:
    """OpenAI's `x-ratelimit-*` headers for the limits a key has."""
    out: Headers = []
    if rpm is not None:
        out += [
            (b"x-ratelimit-limit-requests", str(rpm).encode()),
            (b"x-ratelimit-remaining-requests", str(max(rpm - requests, 0)).encode()),
            (b"x-ratelimit-reset-requests", duration(request_reset if requests else 0).encode()),
        ]
    if tpm is not None:
        out += [
            (b"x-ratelimit-limit-tokens", str(tpm).encode()),
            (b"x-ratelimit-remaining-tokens", str(max(tpm - tokens, 0)).encode()),
            (b"x-ratelimit-reset-tokens", duration(token_reset if tokens else 0).encode()),
        ]
    return out


def duration(seconds: int) -> str:
    """As OpenAI writes them: `0s`, `17s`, `1m0s`."""
    seconds = max(seconds, 0)
    return f"{seconds // 60}m{seconds % 60}s" if seconds >= 60 else f"{seconds}s"


def scope_headers(scopes: tuple[Scope, ...], counts: list[list[int]]) -> Headers:
    """The headers of the scope with the fewest requests left, and of the one with the fewest tokens left."""
    if len(scopes) == 1:  # the usual case
        s, c = scopes[0], counts[0]
        return limit_headers(s.rpm, s.tpm, c[0], c[1], c[2], c[3])
    requests = [(s.rpm - c[0], s, c) for s, c in zip(scopes, counts, strict=True) if s.rpm is not None]
    tokens = [(s.tpm - c[1], s, c) for s, c in zip(scopes, counts, strict=True) if s.tpm is not None]
    out: Headers = []
    if requests:
        _, s, c = min(requests, key=lambda item: item[0])
        out += limit_headers(s.rpm, None, c[0], 0, c[2], 0)
    if tokens:
        _, s, c = min(tokens, key=lambda item: item[0])
        out += limit_headers(None, s.tpm, 0, c[1], 0, c[3])
    return out


def token_rings(scopes: Iterable[Scope]) -> tuple[str, ...]:
    """The tokens rings of the scopes with a tpm: where an admission's tokens are counted."""
    return tuple(s.tokens_key for s in scopes if s.tpm is not None)
