"""Requests and tokens per minute per key, enforced in Redis so that every replica enforces one limit.

Each key has two rings of 60 one-second buckets (hashes under the key's hash tag, so one script
touches one Redis Cluster slot):

    gw:{<key name>}:rl:requests   field <second % 60> = "<second>:<count>"
    gw:{<key name>}:rl:tokens     field <second % 60> = "<second>:<tokens>"

A request is admitted by one script, atomically: it sums the buckets of the last 60 seconds, and
refuses when the requests would pass `rpm` or the tokens have reached `tpm`; else it counts the
request (and its estimated prompt tokens) in the current second. So requests per minute are exact
across replicas, over any 60-second window, to the second. Tokens are settled when the request ends
(the reply's real total replaces the estimate), so `tpm` can be passed by what requests admitted
before it was reached go on to use: at most the tokens of the requests in flight.

When Redis cannot be reached, limits fail open (the request is served, a warning is logged once,
`gateway_rate_limit_errors_total` counts it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from gateway.accounting.keys import Principal
from gateway.errors import GatewayError
from gateway.observability import metrics
from gateway.relay.exchange import Exchange, Observer
from gateway.types import Headers

log = logging.getLogger("gateway.limits")

WINDOW = 60

# Shared by both scripts. `now` is the current second; `add` puts n (which may be negative: an
# estimate was too high) into its bucket, never below zero.
_BUCKETS = """
local now = tonumber(ARGV[1])
local function used(key)
  local all = redis.call('HGETALL', key)
  local total, oldest = 0, now
  for i = 1, #all, 2 do
    local sec, n = string.match(all[i + 1], '(%d+):(%d+)')
    sec = tonumber(sec)
    if sec > now - 60 then
      total = total + tonumber(n)
      if sec < oldest then oldest = sec end
    end
  end
  return total, oldest
end
local function add(key, n)
  local slot = tostring(now % 60)
  local cur = redis.call('HGET', key, slot)
  local count = 0
  if cur then
    local sec, c = string.match(cur, '(%d+):(%d+)')
    if tonumber(sec) == now then count = tonumber(c) end
  end
  count = math.max(count + n, 0)
  redis.call('HSET', key, slot, now .. ':' .. count)
  redis.call('EXPIRE', key, 120)
  return count
end
"""

# KEYS: requests ring, tokens ring. ARGV: now (s), rpm (0: none), tpm (0: none), estimated tokens.
# Returns {admitted 0/1, requests used (with this one when admitted), tokens used, seconds until the
# oldest counted second leaves the window}.
_ADMIT = (
    _BUCKETS
    + """
local rpm, tpm, estimate = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local requests, r_oldest = used(KEYS[1])
local tokens, t_oldest = used(KEYS[2])
if (rpm > 0 and requests + 1 > rpm) or (tpm > 0 and tokens >= tpm) then
  return {0, requests, tokens, r_oldest + 60 - now, t_oldest + 60 - now}
end
add(KEYS[1], 1)
if estimate > 0 then add(KEYS[2], estimate) end
return {1, requests + 1, tokens + estimate, r_oldest + 60 - now, t_oldest + 60 - now}
"""
)

# KEYS: tokens ring. ARGV: now (s), tokens to add (may be negative).
_SETTLE = _BUCKETS + "return add(KEYS[1], tonumber(ARGV[2]))\n"


class RateLimited(GatewayError):
    status = 429
    type = "requests"
    code = "rate_limit_exceeded"


@dataclass(frozen=True, slots=True)
class Admission:
    """What admission counted for a request, and the headers its reply carries."""

    key: str
    tpm: int | None
    estimate: int
    headers: Headers


def limit_headers(
    rpm: int | None, tpm: int | None, requests: int, tokens: int, request_reset: int, token_reset: int
) -> Headers:
    """OpenAI's `x-ratelimit-*` headers for the limits a key has."""
    out: Headers = []
    if rpm is not None:
        out += [
            (b"x-ratelimit-limit-requests", str(rpm).encode()),
            (b"x-ratelimit-remaining-requests", str(max(rpm - requests, 0)).encode()),
            (b"x-ratelimit-reset-requests", duration(request_reset if requests >= rpm else 0).encode()),
        ]
    if tpm is not None:
        out += [
            (b"x-ratelimit-limit-tokens", str(tpm).encode()),
            (b"x-ratelimit-remaining-tokens", str(max(tpm - tokens, 0)).encode()),
            (b"x-ratelimit-reset-tokens", duration(token_reset if tokens >= tpm else 0).encode()),
        ]
    return out


def duration(seconds: int) -> str:
    """As OpenAI writes them: `0s`, `17s`, `1m0s`."""
    seconds = max(seconds, 0)
    return f"{seconds // 60}m{seconds % 60}s" if seconds >= 60 else f"{seconds}s"


def estimate_tokens(body_bytes: int) -> int:
    """A prompt's tokens before the upstream counts them: about four bytes of JSON per token."""
    return max(body_bytes // 4, 1)


class Limiter:
    def __init__(self, redis: Any, prefix: str = "gw") -> None:
        self._redis = redis
        self._prefix = prefix
        self._admit = redis.register_script(_ADMIT)
        self._settle = redis.register_script(_SETTLE)
        self._failing = False
        self._pending: set[asyncio.Task[None]] = set()

    def _keys(self, name: str) -> list[str]:
        return [f"{self._prefix}:{{{name}}}:rl:requests", f"{self._prefix}:{{{name}}}:rl:tokens"]

    async def admit(self, principal: Principal, estimate: int) -> Admission | None:
        """Count a request against its key's limits; `RateLimited` when over. None: nothing to limit
        (or Redis unreachable: limits fail open)."""
        if principal.rpm is None and principal.tpm is None:
            return None
        counted = estimate if principal.tpm is not None else 0
        try:
            ok, requests, tokens, r_reset, t_reset = await self._admit(
                keys=self._keys(principal.name),
                args=[int(time.time()), principal.rpm or 0, principal.tpm or 0, counted],
            )
        except (TimeoutError, RedisError, OSError) as exc:
            self._failed(exc)
            return None
        if self._failing:
            log.warning("rate limits in Redis reachable again")
            self._failing = False
        headers = limit_headers(principal.rpm, principal.tpm, requests, tokens, r_reset, t_reset)
        if not ok:
            metrics.RATE_LIMITED.labels(principal.name).inc()
            by_requests = principal.rpm is not None and requests + 1 > principal.rpm
            wait = r_reset if by_requests else t_reset
            what = f"requests per minute ({principal.rpm})" if by_requests else f"tokens per minute ({principal.tpm})"
            raise RateLimited(
                f"Rate limit reached for key `{principal.name}`: {what}. Try again in {duration(wait)}.",
                type="requests" if by_requests else "tokens",
                headers=[(b"retry-after", str(max(wait, 1)).encode()), *headers],
            )
        return Admission(principal.name, principal.tpm, counted, headers)

    def settle(self, admission: Admission, used: int) -> None:
        """Replace a request's estimated tokens by what it used (in the background)."""
        delta = used - admission.estimate
        if admission.tpm is None or delta == 0:
            return
        task = asyncio.get_running_loop().create_task(self._settle_now(admission.key, delta))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _settle_now(self, name: str, delta: int) -> None:
        try:
            await self._settle(keys=self._keys(name)[1:], args=[int(time.time()), delta])
        except (TimeoutError, RedisError, OSError) as exc:
            self._failed(exc)

    def _failed(self, exc: BaseException) -> None:
        metrics.RATE_LIMIT_ERRORS.inc()
        if not self._failing:
            log.warning("rate limits in Redis unreachable, serving without them: %s", type(exc).__name__)
            self._failing = True

    async def aclose(self) -> None:
        if self._pending:
            await asyncio.wait(self._pending, timeout=2)


class LimitSettler(Observer):
    """Settles a finished request's tokens against its key's per-minute limit."""

    def __init__(self, limiter: Limiter) -> None:
        self._limiter = limiter

    def finished(self, exchange: Exchange) -> None:
        admission = exchange.admission
        if admission is not None and admission.tpm is not None:
            used = exchange.usage.total_tokens if exchange.usage is not None and exchange.replied else 0
            self._limiter.settle(admission, used)
