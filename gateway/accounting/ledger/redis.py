"""Usage in Redis, written in batches off the hot path, exactly once, through outages.

Key layout (the `{principal}` hash tag keeps one key's data in one Redis Cluster slot):

    gw:{<key name>}:usage:<YYYY-MM-DD>:<model>   hash: requests, prompt_tokens, completion_tokens,
                                                 total_tokens, cached_tokens, reasoning_tokens,
                                                 billed_units (only when an upstream reported them)
    gw:{<key name>}:models:<YYYY-MM-DD>          set: the models with usage that day
    gw:{<key name>}:session:<sess_id>            hash: the same counters for one client session
                                                 (the `sess_id` extension), expiring 7 days after its last use
    gw:{<key name>}:batch:<batch id>             marker of a written batch, kept one day

Records are summed in memory per key, day and model. Every flush turns what is pending into batches
(one per key name) with fresh ids; a Lua script applies a batch only if its marker is new, so a batch
re-sent after a timeout whose write did land is not counted twice. While Redis is down the same
batches are retried and new records keep summing in memory, so memory stays bounded by the number of
(key, day, model) combinations and nothing is lost while the process lives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Any

import orjson
from redis.exceptions import RedisError

from gateway.accounting.ledger.base import Aggregate, Totals, UsageRecord, add_into
from gateway.accounting.redis_client import redis_client
from gateway.observability.metrics import LEDGER_ERRORS, LEDGER_QUEUE, LEDGER_WRITTEN

log = logging.getLogger("gateway.accounting.ledger")

BATCH_MARKER_TTL = 86400

SESSION_TTL = 7 * 86400

# KEYS[1]: the batch marker. ARGV[1]: marker TTL; ARGV[2]: session TTL; ARGV[3]: JSON entries, each
# [key index, counters, set key index or 0, set member]: counters go into KEYS[index]; with a set
# index the member is added to that set, without one the hash is a session and gets the session TTL.
_APPLY_BATCH = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  return 0
end
for _, entry in ipairs(cjson.decode(ARGV[3])) do
  local hash = KEYS[entry[1]]
  for name, value in pairs(entry[2]) do
    if name == 'billed_units' then
      redis.call('HINCRBYFLOAT', hash, name, value)
    else
      redis.call('HINCRBY', hash, name, value)
    end
  end
  if entry[3] > 0 then
    redis.call('SADD', KEYS[entry[3]], entry[4])
  else
    redis.call('EXPIRE', hash, ARGV[2])
  end
end
return 1
"""


def usage_key(prefix: str, principal: str, day: str, model: str) -> str:
    return f"{prefix}:{{{principal}}}:usage:{day}:{model}"


def models_key(prefix: str, principal: str, day: str) -> str:
    return f"{prefix}:{{{principal}}}:models:{day}"


def session_key(prefix: str, principal: str, sess_id: str) -> str:
    return f"{prefix}:{{{principal}}}:session:{sess_id}"


@dataclass(slots=True)
class Batch:
    id: str
    principal: str
    entries: list[tuple[str, str, Totals]]  # (day, model, counters)
    sessions: list[tuple[str, Totals]]  # (sess_id, counters)

    def requests(self) -> int:
        """How many requests' usage the batch carries (sessions repeat some of them)."""
        return sum(int(totals.get("requests", 0)) for _, _, totals in self.entries)


class RedisLedger:
    def __init__(
        self,
        url: str,
        *,
        prefix: str = "gw",
        flush_interval: float = 0.5,
        timeout: float = 2.0,
        cluster: bool = False,
    ) -> None:
        self._prefix = prefix
        self._interval = flush_interval
        self._redis: Any = redis_client(url, timeout=timeout, cluster=cluster)
        self._script = self._redis.register_script(_APPLY_BATCH)
        self._pending: Aggregate = {}
        self._sessions: dict[tuple[str, str], Totals] = {}  # (principal, sess_id) -> counters
        self._unwritten: list[Batch] = []
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    def record(self, record: UsageRecord) -> None:
        counters = record.counters()
        add_into(self._pending, record.key, counters)
        if record.sess_id is not None:
            add_into(self._sessions, (record.principal, record.sess_id), counters)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ledger-flush")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.flush()

    async def flush(self) -> bool:
        """Write what is pending; True when nothing is left unwritten."""
        if self._pending or self._sessions:
            self._unwritten.extend(self._batches(self._pending, self._sessions))
            self._pending, self._sessions = {}, {}
        while self._unwritten:
            batch = self._unwritten[0]
            try:
                await self._apply(batch)
            except (TimeoutError, RedisError, OSError) as exc:
                LEDGER_ERRORS.inc()
                LEDGER_QUEUE.set(self.queued())
                if not self._failing:
                    log.warning("usage writes to Redis failing, keeping them queued: %s", type(exc).__name__)
                    self._failing = True
                return False
            self._unwritten.pop(0)
            LEDGER_WRITTEN.inc(batch.requests())
        LEDGER_QUEUE.set(0)
        if self._failing:
            log.warning("usage writes to Redis recovered")
            self._failing = False
        return True

    def queued(self) -> int:
        """Requests whose usage is not yet written: pending, or in batches waiting for Redis."""
        pending = sum(int(totals.get("requests", 0)) for totals in self._pending.values())
        return pending + sum(batch.requests() for batch in self._unwritten)

    def _batches(self, pending: Aggregate, sessions: dict[tuple[str, str], Totals]) -> list[Batch]:
        by_principal: dict[str, Batch] = {}

        def batch_of(principal: str) -> Batch:
            if principal not in by_principal:
                by_principal[principal] = Batch(os.urandom(12).hex(), principal, [], [])
            return by_principal[principal]

        for (principal, day, model), totals in pending.items():
            batch_of(principal).entries.append((day, model, totals))
        for (principal, sess_id), totals in sessions.items():
            batch_of(principal).sessions.append((sess_id, totals))
        return list(by_principal.values())

    async def _apply(self, batch: Batch) -> None:
        keys = [f"{self._prefix}:{{{batch.principal}}}:batch:{batch.id}"]
        payload: list[list[object]] = []

        def counters(totals: Totals) -> dict[str, str]:
            return {name: _number(name, value) for name, value in totals.items()}

        for day, model, totals in batch.entries:
            keys += [
                usage_key(self._prefix, batch.principal, day, model),
                models_key(self._prefix, batch.principal, day),
            ]
            payload.append([len(keys) - 1, counters(totals), len(keys), model])
        for sess_id, totals in batch.sessions:
            keys.append(session_key(self._prefix, batch.principal, sess_id))
            payload.append([len(keys), counters(totals), 0, ""])
        await self._script(keys=keys, args=[BATCH_MARKER_TTL, SESSION_TTL, orjson.dumps(payload)])

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if not await self.flush():
            lost = sum(len(b.entries) + len(b.sessions) for b in self._unwritten)
            log.error("Redis unreachable at shutdown: %d usage totals could not be written", lost)
        await self._redis.aclose()

    async def ready(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except (TimeoutError, RedisError, OSError):
            LEDGER_ERRORS.inc()
            return False

    async def usage(self, principal: str, day: str) -> dict[str, Totals]:
        models = await self._redis.smembers(models_key(self._prefix, principal, day))
        out: dict[str, Totals] = {}
        for raw in sorted(models):
            model = raw.decode()
            fields = await self._redis.hgetall(usage_key(self._prefix, principal, day, model))
            out[model] = {k.decode(): float(v) for k, v in fields.items()}
        return out


def _number(name: str, value: float) -> str:
    # Strings, so the script's Lua never formats a large count in exponent notation.
    return repr(float(value)) if name == "billed_units" else str(int(value))
