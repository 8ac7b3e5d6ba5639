"""Usage in Redis, written in batches off the hot path, exactly once, through outages and restarts.

Key layout (the `{<key name>}` hash tag keeps one key's data in one Redis Cluster slot):

    gw:{<key name>}:usage:<YYYY-MM-DD>:<model>   hash: the counters of `COUNTERS` that are not zero,
                                                 and `team` (the key's team when it was used)
    gw:{<key name>}:models:<YYYY-MM-DD>          set: the models with usage that day
    gw:{<key name>}:days                         set: the days with usage
    gw:{<key name>}:log                          stream: an entry per part of a batch written (up to
                                                 `LOG_PART` requests), fields `n` (how many) and
                                                 `entries` (theirs, oldest first: JSON,
                                                 `UsageRecord.entry`, each ended by a line end); the
                                                 oldest trimmed while the rest hold `log_entries`
    gw:{<key name>}:logged                       list: the log's marks, "<requests given> <entry id>"
                                                 for each entry, after "<requests given before them>"
    gw:{<key name>}:session:<sess_id>            hash: the counters of one client session (the
                                                 `sess_id` extension), expiring 7 days after its last use
    gw:{<key name>}:writer:<writer id>           the sequence number of the last batch applied from
                                                 one ledger (one process), kept 7 days
    gw:{usage}:keys                              set: the key names that have usage

Records are summed in memory per key, day and model, and their log entries queued. A flush turns
what is pending into batches (one per key name), each numbered by this ledger's writer id and a
sequence number, once the batches before are written; one Lua script applies a batch only if its
number is above the last one applied from that writer, so a batch re-sent after a timeout whose
write did land is not counted twice. While Redis is down the batches wait and new records keep summing: the totals take
memory per (key, day, model), the log entries one each, up to `queue_entries` (entries past that
are dropped and counted; the totals never are). At shutdown what is still unwritten goes to a spool
file in `spool_dir`; the next start (of any replica sharing the directory) replays it, and the
batch ids make a replay that overlaps an earlier write harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from gateway.accounting.ledger.base import (
    FLOAT_COUNTERS,
    Aggregate,
    Totals,
    UsageQuery,
    UsageRecord,
    add_into,
    sort_rows,
    usage_row,
)
from gateway.accounting.redis_client import REDIS_ERRORS, redis_client, rejected, warm_up
from gateway.errors import GatewayError
from gateway.observability.metrics import (
    LEDGER_DROPPED,
    LEDGER_ERRORS,
    LEDGER_QUEUE,
    LEDGER_SPOOLED,
    LEDGER_WRITTEN,
    REDIS_DEGRADED,
)

log = logging.getLogger("gateway.accounting.ledger")

BATCH_MARKER_TTL = 7 * 86400  # a spool replayed within it cannot count a written batch twice
SESSION_TTL = 7 * 86400
LOG_ENTRIES = 10_000  # requests kept in a key's log: as many at least (once there were), less than a part more
QUEUE_ENTRIES = 200_000  # log entries held in memory while Redis is unreachable
# Log entries that start a flush before the interval is over: a busy replica writes smaller batches
# more often, so that no one flush holds the event loop (or Redis) for milliseconds.
FLUSH_ENTRIES = 256
# Requests' log entries in one entry of the log stream, at most: the log is trimmed to its cap within
# as many.
LOG_PART = 256

# KEYS[1]: the writer's marker; KEYS[2]: the key's days set; KEYS[3]: the key's log stream; KEYS[4]:
# the log's marks (`:logged`); then the hashes and sets the entries name by index. ARGV: marker
# TTL, session TTL, log cap (requests), JSON payload {e: [[usage index, models index, model, day,
# team, counters]], s: [[session index, counters]]}, the batch's sequence number; then the log
# entries in parts of at most `LOG_PART` requests, two arguments a part: how many, and their JSON,
# each ended by a line end (JSON as orjson writes it has none of its own).
# Each part goes into the stream as one entry, as it came, not one entry a request: Redis spends
# about 130 us on a batch of 256 requests rather than 480 (`INFO commandstats`, the log at its cap).
# A stream entry without `n` is one request's (field `entry`), as earlier versions wrote them.
_APPLY_BATCH = """
local seq = tonumber(ARGV[5])
if seq <= tonumber(redis.call('GET', KEYS[1]) or '0') then
  return 0
end
redis.call('SET', KEYS[1], ARGV[5], 'EX', ARGV[1])
local batch = cjson.decode(ARGV[4])
local function add(hash, counters)
  for name, value in pairs(counters) do
    if name == 'billed_units' or name == 'cost' then
      redis.call('HINCRBYFLOAT', hash, name, value)
    else
      redis.call('HINCRBY', hash, name, value)
    end
  end
end
for _, e in ipairs(batch.e) do
  add(KEYS[e[1]], e[6])
  if e[5] ~= '' then redis.call('HSET', KEYS[e[1]], 'team', e[5]) end
  redis.call('SADD', KEYS[e[2]], e[3])
  redis.call('SADD', KEYS[2], e[4])
end
for _, s in ipairs(batch.s) do
  add(KEYS[s[1]], s[2])
  redis.call('EXPIRE', KEYS[s[1]], ARGV[2])
end
if #ARGV > 5 then
  -- A mark: how many requests the log had been given once an entry was added, and its id. The
  -- first is what it had been given before the oldest entry kept.
  local marks = KEYS[4]
  local last = redis.call('LINDEX', marks, -1)
  local total = last and tonumber(string.match(last, '^%d+')) or 0
  if not last then
    redis.call('RPUSH', marks, '0')
  end
  for i = 6, #ARGV, 2 do
    local id = redis.call('XADD', KEYS[3], '*', 'n', ARGV[i], 'entries', ARGV[i + 1])
    total = total + tonumber(ARGV[i])
    redis.call('RPUSH', marks, string.format('%d %s', total, id))
  end
  -- The oldest entry goes while the ones after it hold the cap. By id, not by count: a replica of
  -- an earlier version may add entries of its own meanwhile (a rolling upgrade), which are kept.
  local cap, dropped = tonumber(ARGV[3]), false
  while true do
    local second = redis.call('LINDEX', marks, 1)
    if not second or total - tonumber(string.match(second, '^%d+')) < cap then
      break
    end
    redis.call('LPOP', marks)
    dropped = true
  end
  local oldest = dropped and string.match(redis.call('LINDEX', marks, 1) or '', ' (.+)$')
  if oldest then
    redis.call('XTRIM', KEYS[3], 'MINID', oldest)
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


def log_key(prefix: str, principal: str) -> str:
    return f"{prefix}:{{{principal}}}:log"


@dataclass(slots=True)
class Batch:
    writer: str  # the ledger (process) that made it
    seq: int  # its number among that writer's batches: applied in order, each once
    principal: str
    entries: list[tuple[str, str, str, Totals]]  # (day, model, team or "", counters)
    sessions: list[tuple[str, Totals]]  # (sess_id, counters)
    records: list[bytes]  # log entries, JSON

    def requests(self) -> int:
        """How many requests' usage the batch carries (sessions repeat some of them)."""
        return sum(int(totals.get("requests", 0)) for _, _, _, totals in self.entries)

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "writer": self.writer,
                "seq": self.seq,
                "principal": self.principal,
                "entries": self.entries,
                "sessions": self.sessions,
                "records": [r.decode() for r in self.records],
            }
        )

    @classmethod
    def from_json(cls, line: bytes) -> Batch:
        data = orjson.loads(line)
        return cls(
            str(data["writer"]),
            int(data["seq"]),
            str(data["principal"]),
            [(str(d), str(m), str(t), dict(c)) for d, m, t, c in data["entries"]],
            [(str(s), dict(c)) for s, c in data["sessions"]],
            # A line end would cut a log entry in two; in JSON it can only be space between tokens.
            [str(r).replace("\n", " ").encode() for r in data["records"]],
        )


class RedisLedger:
    def __init__(
        self,
        url: str,
        *,
        prefix: str = "gw",
        flush_interval: float = 0.5,
        timeout: float = 2.0,
        cluster: bool = False,
        spool_dir: Path | None = None,
        log_entries: int = LOG_ENTRIES,
        queue_entries: int = QUEUE_ENTRIES,
        flush_entries: int = FLUSH_ENTRIES,
    ) -> None:
        self._prefix = prefix
        self._interval = flush_interval
        self._flush_entries = flush_entries
        self._redis: Any = redis_client(url, timeout=timeout, cluster=cluster)
        self._script = self._redis.register_script(_APPLY_BATCH)
        self._spool_dir = spool_dir
        self._log_entries = log_entries
        self._queue_entries = queue_entries
        self._pending: Aggregate = {}
        self._teams: dict[tuple[str, str, str], str] = {}
        self._sessions: dict[tuple[str, str], Totals] = {}  # (principal, sess_id) -> counters
        self._records: dict[str, list[bytes]] = {}  # principal -> log entries
        self._queued_entries = 0  # log entries pending or in unwritten batches
        self._unwritten: deque[Batch] = deque()
        self._writer = os.urandom(8).hex()
        self._seq = 0
        self._replayed: list[Path] = []  # spool files whose batches are in `_unwritten`
        self._registered: set[str] = set()  # key names known to be in the `gw:{usage}:keys` set
        self._task: asyncio.Task[None] | None = None
        # Log entries recorded since the last batches were made. While Redis is down no batches are
        # made, so it wakes the flush once at most: an outage is retried once an interval.
        self._fresh = 0
        self._wake = asyncio.Event()
        self._flushing = asyncio.Lock()
        self._closing = False
        self._failing = False

    def record(self, record: UsageRecord) -> None:
        counters = record.counters()
        add_into(self._pending, record.key, counters)
        if record.team:
            self._teams[record.key] = record.team
        if record.sess_id is not None:
            add_into(self._sessions, (record.principal, record.sess_id), counters)
        if self._queued_entries >= self._queue_entries:
            LEDGER_DROPPED.inc()  # the totals above still count it; only its log entry is lost
            return
        self._queued_entries += 1
        self._fresh += 1
        if self._fresh == self._flush_entries:
            self._wake.set()
        entries = self._records.get(record.principal)
        if entries is None:
            entries = self._records[record.principal] = []
        entries.append(orjson.dumps(record.entry(counters)))

    @property
    def backlog(self) -> int:
        return self.queued()

    async def start(self) -> None:
        await warm_up(self._redis)
        self._replay_spool()
        self._task = asyncio.create_task(self._run(), name="ledger-flush")

    async def _run(self) -> None:
        # Ends on `_closing` as well as on its cancellation, which was seen swallowed on its way
        # through a Redis call (most likely as that call's own TimeoutError, an outage to the
        # flush): the loop went on, and a shutdown waiting for it hung.
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._wake.wait()
            self._wake.clear()
            if self._closing:
                break
            try:
                await self.flush()
            except Exception:  # a bug must not stop every later write
                log.exception("usage flush failed")

    async def flush(self) -> bool:
        """Write what is pending; True when nothing is left unwritten. Calls at once take turns: each
        batch is written, and taken off the queue, once."""
        async with self._flushing:
            return await self._flush()

    async def _flush(self) -> bool:
        while True:
            if not self._unwritten:
                # Batched only once the batches before are written: while Redis is down, what comes
                # in keeps summing in `_pending` (bounded), and one writer's batches stay in order.
                if not (self._pending or self._sessions or self._records):
                    break
                self._unwritten.extend(self._batches())
            batch = self._unwritten[0]
            try:
                await self._apply(batch)
                await self._register(batch.principal)
            except REDIS_ERRORS as exc:
                if rejected(exc):
                    self._dead_letter(self._unwritten.popleft(), exc)
                    continue
                LEDGER_ERRORS.inc()
                LEDGER_QUEUE.set(self.queued())
                if not self._failing:
                    log.warning("usage writes to Redis failing, keeping them queued: %s", type(exc).__name__)
                    self._failing = True
                    REDIS_DEGRADED.labels("ledger").set(1)
                return False
            self._unwritten.popleft()
            self._queued_entries -= len(batch.records)
            LEDGER_WRITTEN.inc(batch.requests())
        LEDGER_QUEUE.set(0)
        self._forget_replayed()
        if self._failing:
            log.warning("usage writes to Redis recovered")
            self._failing = False
            REDIS_DEGRADED.labels("ledger").set(0)
        return True

    def queued(self) -> int:
        """Requests whose usage is not yet written: pending, or in batches waiting for Redis."""
        pending = sum(int(totals.get("requests", 0)) for totals in self._pending.values())
        return pending + sum(batch.requests() for batch in self._unwritten)

    def _batches(self) -> list[Batch]:
        """What is pending, as one batch per key name with a fresh id; pending is emptied."""
        by_principal: dict[str, Batch] = {}

        def batch_of(principal: str) -> Batch:
            if principal not in by_principal:
                self._seq += 1
                by_principal[principal] = Batch(self._writer, self._seq, principal, [], [], [])
            return by_principal[principal]

        for key, totals in self._pending.items():
            principal, day, model = key
            batch_of(principal).entries.append((day, model, self._teams.get(key, ""), totals))
        for (principal, sess_id), totals in self._sessions.items():
            batch_of(principal).sessions.append((sess_id, totals))
        for principal, records in self._records.items():
            batch_of(principal).records.extend(records)
        self._pending, self._teams, self._sessions, self._records = {}, {}, {}, {}
        self._fresh = 0
        return list(by_principal.values())

    async def _apply(self, batch: Batch) -> None:
        p, who = self._prefix, batch.principal
        log = log_key(p, who)
        keys = [f"{p}:{{{who}}}:writer:{batch.writer}", f"{p}:{{{who}}}:days", log, f"{log}ged"]
        entries: list[list[object]] = []
        sessions: list[list[object]] = []
        for day, model, team, totals in batch.entries:
            keys += [usage_key(p, who, day, model), models_key(p, who, day)]
            entries.append([len(keys) - 1, len(keys), model, day, team, _counters(totals)])
        for sess_id, totals in batch.sessions:
            keys.append(session_key(p, who, sess_id))
            sessions.append([len(keys), _counters(totals)])
        # Lua's cjson turns an empty array into an object; `ipairs` walks either the same way.
        payload = b'{"e":%s,"s":%s}' % (orjson.dumps(entries), orjson.dumps(sessions))
        args: list[object] = [BATCH_MARKER_TTL, SESSION_TTL, self._log_entries, payload, batch.seq]
        records = batch.records
        for at in range(0, len(records), LOG_PART):
            part = records[at : at + LOG_PART]
            args += [len(part), b"".join(record + b"\n" for record in part)]
        await self._script(keys=keys, args=args)

    async def _register(self, principal: str) -> None:
        # Its own slot on a cluster, so not in the batch's script; adding twice changes nothing.
        if principal not in self._registered:
            await self._redis.sadd(f"{self._prefix}:{{usage}}:keys", principal)
            self._registered.add(principal)

    # --- the spool: what shutdown could not write, for the next start ---

    def _replay_spool(self) -> None:
        if self._spool_dir is None or not self._spool_dir.is_dir():
            return
        for path in sorted(self._spool_dir.glob("ledger-*.jsonl")):
            try:
                batches = [Batch.from_json(line) for line in path.read_bytes().splitlines() if line.strip()]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.error("spool file %s unreadable (%s): moved aside as .bad", path, exc)
                with contextlib.suppress(OSError):
                    path.rename(path.with_suffix(".bad"))
                continue
            self._unwritten.extendleft(reversed(batches))
            self._queued_entries += sum(len(b.records) for b in batches)
            self._replayed.append(path)
            log.warning("replaying %d usage batches spooled at a shutdown: %s", len(batches), path.name)

    def _forget_replayed(self) -> None:
        for path in self._replayed:
            with contextlib.suppress(FileNotFoundError):  # another replica replayed it too
                path.unlink()
        self._replayed.clear()

    def _dead_letter(self, batch: Batch, exc: BaseException) -> None:
        """A batch Redis refuses (and would refuse again) must not block the ones after it: it goes
        to a file beside the spool (not replayed), or to the log."""
        LEDGER_ERRORS.inc()
        self._queued_entries -= len(batch.records)
        log.error("Redis refused a usage batch of key %s (%s): set aside", batch.principal, exc)
        if self._spool_dir is None:
            log.error("usage batch set aside: %s", batch.to_json().decode())
            return
        try:
            self._spool_dir.mkdir(parents=True, exist_ok=True)
            with open(self._spool_dir / "refused.jsonl", "ab") as out:
                out.write(batch.to_json() + b"\n")
        except OSError as error:
            log.error("could not set the batch aside (%s): %s", error, batch.to_json().decode())

    def _spool(self) -> int:
        """Write the unwritten batches to a new spool file; how many requests they carry."""
        if self._spool_dir is None:
            return 0
        if self._pending or self._sessions or self._records:
            self._unwritten.extend(self._batches())  # what came in while earlier batches waited
        self._spool_dir.mkdir(parents=True, exist_ok=True)
        name = f"ledger-{int(time.time())}-{os.getpid()}-{os.urandom(4).hex()}.jsonl"
        partial = self._spool_dir / f".{name}.partial"
        partial.write_bytes(b"".join(batch.to_json() + b"\n" for batch in self._unwritten))
        os.replace(partial, self._spool_dir / name)  # whole or not at all
        self._forget_replayed()  # their batches are in the new file
        requests = sum(batch.requests() for batch in self._unwritten)
        LEDGER_SPOOLED.inc(requests)
        return requests

    async def aclose(self) -> None:
        if self._task is not None:
            self._closing = True
            self._wake.set()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if not await self.flush():
            try:
                spooled = self._spool()
            except OSError as exc:
                log.error(
                    "Redis unreachable at shutdown and the spool failed (%s): usage of %d requests lost",
                    exc,
                    self.queued(),
                )
            else:
                if spooled or self._spool_dir is not None:
                    log.warning(
                        "Redis unreachable at shutdown: usage of %d requests spooled to %s", spooled, self._spool_dir
                    )
                else:
                    log.error(
                        "Redis unreachable at shutdown and no spool directory: usage of %d requests lost", self.queued()
                    )
        await self._redis.aclose()

    async def ready(self) -> bool:
        try:
            ok = bool(await self._redis.ping())
        except REDIS_ERRORS:
            LEDGER_ERRORS.inc()
            ok = False
        REDIS_DEGRADED.labels("ledger").set(0 if ok and not self._failing else 1)
        return ok

    # --- reading ---

    async def usage(self, principal: str, day: str) -> dict[str, Totals]:
        out: dict[str, Totals] = {}
        for row in await self.rows(UsageQuery(key=principal, since=day, until=day)):
            out[str(row["model"])] = {k: float(v) for k, v in row.items() if isinstance(v, int | float) and v}
        return out

    async def rows(self, query: UsageQuery) -> list[dict[str, Any]]:
        try:
            return await self._rows(query)
        except REDIS_ERRORS as exc:
            raise UsageStoreUnavailable(f"The usage store (Redis) is unreachable: {type(exc).__name__}.") from None

    async def _rows(self, query: UsageQuery) -> list[dict[str, Any]]:
        if query.key is not None:
            names: Iterable[str] = [query.key]
        else:
            names = sorted(m.decode() for m in await self._redis.smembers(f"{self._prefix}:{{usage}}:keys"))
        rows: list[dict[str, Any]] = []
        for name in names:
            rows += await self._key_rows(name, query)
        return sort_rows(rows)

    async def _key_rows(self, name: str, query: UsageQuery) -> list[dict[str, Any]]:
        p = self._prefix
        days = sorted(d.decode() for d in await self._redis.smembers(f"{p}:{{{name}}}:days"))
        days = [day for day in days if query.wants_day(day)]
        if not days:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for day in days:
                pipe.smembers(models_key(p, name, day))
            models_by_day = await pipe.execute()
        wanted = [
            (day, model)
            for day, models in zip(days, models_by_day, strict=True)
            for model in sorted(m.decode() for m in models)
            if query.model is None or model == query.model
        ]
        if not wanted:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for day, model in wanted:
                pipe.hgetall(usage_key(p, name, day, model))
            hashes = await pipe.execute()
        rows = []
        for (day, model), fields in zip(wanted, hashes, strict=True):
            values = {k.decode(): v.decode() for k, v in fields.items()}
            team = values.pop("team", None)
            if query.wants(name, day, model, team):
                rows.append(usage_row(name, day, model, team, {k: float(v) for k, v in values.items()}))
        return rows

    async def requests(self, principal: str, limit: int) -> list[dict[str, Any]]:
        try:
            records = await self._newest_records(log_key(self._prefix, principal), limit)
        except REDIS_ERRORS as exc:
            raise UsageStoreUnavailable(f"The usage store (Redis) is unreachable: {type(exc).__name__}.") from None
        return [orjson.loads(record) for record in records]

    async def _newest_records(self, log: str, limit: int) -> list[bytes]:
        """The log's newest `limit` entries (requests), newest first. Read a few stream entries at
        a time, as many as those read so far suggest are needed: one holds from one request to
        `LOG_PART`."""
        records: list[bytes] = []
        newest, count, batches = b"+", 1, 0
        while len(records) < limit:
            page = await self._redis.xrevrange(log, max=newest, count=count)
            for _, fields in page:
                records += reversed(_log_records(fields))
            batches += len(page)
            if len(page) < count:
                break
            newest = b"(" + page[-1][0]
            needed = limit - len(records)
            # No more than twice the last page: one small batch must not make a page of large ones.
            count = min(2 * count, -(-needed * batches // len(records)) if records else needed)
        return records[:limit]


class UsageStoreUnavailable(GatewayError):
    status = 503
    type = "server_error"
    code = "usage_store_unavailable"


def _log_records(fields: dict[bytes, bytes]) -> list[bytes]:
    """The requests' log entries in one entry of a log stream, oldest first."""
    if b"entries" in fields:
        return fields[b"entries"].splitlines()
    return [fields[b"entry"]]  # one request's, as earlier versions wrote it


def _counters(totals: Totals) -> dict[str, str]:
    # Strings, so the script's Lua never formats a large count in exponent notation.
    return {name: repr(float(v)) if name in FLOAT_COUNTERS else str(int(v)) for name, v in totals.items()}
