"""The Redis ledger against a real redis-server started by the test suite."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson
import pytest
import redis

from gateway.accounting.ledger import UsageRecord
from gateway.accounting.ledger.base import UsageQuery, bounded_metadata
from gateway.accounting.ledger.redis import FLUSH_ENTRIES, LOG_PART, Batch, RedisLedger, usage_key
from gateway.config import parse_config
from gateway.dialects.base import Usage
from tests.conftest import RunningGateway, checked_http, config_yaml
from tests.conftest import sdk as make_sdk
from tests.support.redis_server import RedisServer, request_log
from tests.support.spec import Checker

USER = [{"role": "user", "content": "hello brave new world"}]


def _today() -> str:
    return time.strftime("%Y-%m-%d", time.gmtime())


def _wait_for(read: Callable[[], object], expected: object, seconds: float = 5) -> object:
    deadline = time.monotonic() + seconds
    value = read()
    while value != expected and time.monotonic() < deadline:
        time.sleep(0.05)
        value = read()
    return value


async def _polled(read: Callable[[], Awaitable[object]], seconds: float = 5) -> None:
    """Until `read()` is truthy, or `seconds` are over."""
    for _ in range(int(seconds / 0.02)):
        if await read():
            return
        await asyncio.sleep(0.02)


@pytest.fixture
def redis_gateway(start_gateway: Callable[..., RunningGateway], fake_url: str, redis_url: str) -> RunningGateway:
    return start_gateway(parse_config(config_yaml(fake_url, redis_url)))


def test_usage_readable_in_redis_as_documented(redis_gateway: RunningGateway, redis_url: str, checker: Checker) -> None:
    sdk = make_sdk(redis_gateway.url, checker)
    sdk.chat.completions.create(model="gpt-test", messages=USER)
    sdk.chat.completions.create(model="gpt-test", messages=USER)
    list(sdk.chat.completions.create(model="gpt-test", messages=USER, stream=True))
    sdk.chat.completions.create(model="echo", messages=USER)

    r = redis.Redis.from_url(redis_url, decode_responses=True)
    key = f"gw:{{tester}}:usage:{_today()}:gpt-test"
    _wait_for(lambda: r.hget(key, "requests"), "3")
    # The echo request may land in a later flush than the three before it.
    _wait_for(lambda: r.hget(f"gw:{{tester}}:usage:{_today()}:echo", "requests"), "1")
    assert r.hgetall(key) == {
        "requests": "3",
        "prompt_tokens": "57",
        "completion_tokens": "12",
        "total_tokens": "69",
        "cached_tokens": "9",
        "reasoning_tokens": "6",
        "billed_units": "4.5",
    }
    assert r.smembers(f"gw:{{tester}}:models:{_today()}") == {"gpt-test", "echo"}
    echo = r.hgetall(f"gw:{{tester}}:usage:{_today()}:echo")
    assert echo["requests"] == "1" and echo["completion_tokens"] == "4" and "billed_units" not in echo


def test_redis_outage_loses_nothing_and_counts_once(
    redis_gateway: RunningGateway, redis_server: RedisServer, redis_url: str, checker: Checker
) -> None:
    sdk = make_sdk(redis_gateway.url, checker)
    http = checked_http(checker, base_url=redis_gateway.url)
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    key = f"gw:{{tester}}:usage:{_today()}:gpt-test"
    sdk.chat.completions.create(model="gpt-test", messages=USER)
    assert _wait_for(lambda: r.hget(key, "requests"), "1") == "1"

    redis_server.stop()
    try:
        # Requests are still served, so the replica stays in the Service: ready, but degraded.
        ready = http.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "degraded"
        assert ready.json()["checks"]["ledger"] == "unreachable"
        for _ in range(3):  # requests succeed while Redis is down
            assert sdk.chat.completions.create(model="gpt-test", messages=USER).choices
        list(sdk.chat.completions.create(model="gpt-test", messages=USER, stream=True))
        time.sleep(0.3)  # several failed flushes
    finally:
        redis_server.start()  # same port, empty (it keeps nothing on disk)

    assert _wait_for(lambda: r.hget(key, "requests"), "4", seconds=10) == "4"
    time.sleep(0.3)  # further flushes must not add anything twice
    assert r.hget(key, "requests") == "4"
    assert r.hget(key, "prompt_tokens") == str(4 * 19)
    assert http.get("/readyz").status_code == 200


def test_session_usage_is_recorded(redis_gateway: RunningGateway, redis_url: str, checker: Checker) -> None:
    sdk = make_sdk(redis_gateway.url, checker)
    for _ in range(2):
        sdk.chat.completions.create(model="gpt-test", messages=USER, extra_body={"sess_id": "conv-7"})
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    key = "gw:{tester}:session:conv-7"
    assert _wait_for(lambda: r.hget(key, "requests"), "2") == "2"
    assert r.hget(key, "prompt_tokens") == "38"
    assert 0 < r.ttl(key) <= 7 * 86400
    assert r.hget(f"gw:{{tester}}:usage:{_today()}:gpt-test", "requests") == "2"


async def test_a_batch_resent_after_it_landed_is_not_counted_twice(redis_url: str) -> None:
    ledger = RedisLedger(redis_url, flush_interval=60)
    ledger.record(UsageRecord("alice", "m1", Usage(10, 5, 15, 2, 1, 0.25)))
    ledger.record(UsageRecord("alice", "m1", Usage(10, 5, 15, 2, 1, None)))
    ledger.record(UsageRecord("bob", "m2", Usage(1, 1, 2)))
    batches = ledger._batches()
    for batch in batches:  # as if the reply to the first write was lost and it was sent again
        await ledger._apply(batch)
        await ledger._apply(batch)
    alice = await ledger.usage("alice", _today())
    assert alice == {
        "m1": {
            "requests": 2.0,
            "prompt_tokens": 20.0,
            "completion_tokens": 10.0,
            "total_tokens": 30.0,
            "cached_tokens": 4.0,
            "reasoning_tokens": 2.0,
            "billed_units": 0.25,
        }
    }
    assert (await ledger.usage("bob", _today()))["m2"]["requests"] == 1.0
    assert len(await ledger.requests("alice", 10)) == 2  # one log entry per request, however often sent
    await ledger.aclose()


async def test_flushes_at_once_write_each_batch_once(redis_url: str) -> None:
    ledger = RedisLedger(redis_url, flush_interval=60)
    for round_ in range(3):
        for name in ("gus", "hal", "ida"):
            ledger.record(UsageRecord(name, "m", Usage(1, 1, 2), request_id=f"{name}{round_}"))
        assert all(await asyncio.gather(*(ledger.flush() for _ in range(4))))
    for name in ("gus", "hal", "ida"):
        assert (await ledger.usage(name, _today()))["m"]["requests"] == 3
        assert [e["request_id"] for e in await ledger.requests(name, 10)] == [f"{name}{i}" for i in (2, 1, 0)]
    assert ledger.queued() == 0
    await ledger.aclose()


async def test_close_ends_the_flush_loop_when_a_redis_call_swallows_its_cancellation(redis_url: str) -> None:
    """A cancellation that meets a Redis call's own timeout can come out of it as a TimeoutError,
    which the flush takes for an outage: closing must not wait for the loop forever."""
    ledger = RedisLedger(redis_url, flush_interval=60, flush_entries=1)
    await ledger.start()
    calls = 0

    async def swallowing(batch: object) -> None:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise TimeoutError  # Redis still "down" for the closing flush
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            raise TimeoutError from None

    ledger._apply = swallowing  # type: ignore[method-assign]
    ledger.record(UsageRecord("joy", "m", Usage(1, 1, 2), request_id="r0"))
    await _polled(lambda: asyncio.sleep(0, calls))
    closing = asyncio.ensure_future(ledger.aclose())
    done, _ = await asyncio.wait({closing}, timeout=5)  # not `wait_for`: its own cancel would end the loop
    if not done:
        closing.cancel()
    assert done and closing.result() is None
    assert ledger.queued() == 1  # kept (no spool here), not written twice or lost from the count


@pytest.mark.parametrize("entries", [None, 10])
async def test_a_busy_ledger_writes_before_its_interval_is_over(redis_url: str, entries: int | None) -> None:
    """After FLUSH_ENTRIES log entries by default, or as many as `flush_entries` says."""
    name = f"fay{entries}"
    ledger = RedisLedger(redis_url, flush_interval=60, **({} if entries is None else {"flush_entries": entries}))
    entries = entries or FLUSH_ENTRIES
    await ledger.start()
    for i in range(entries - 1):
        ledger.record(UsageRecord(name, "m", Usage(1, 1, 2), request_id=f"r{i}"))
    await asyncio.sleep(0.2)
    assert await ledger.usage(name, _today()) == {}  # fewer entries wait for the interval
    ledger.record(UsageRecord(name, "m", Usage(1, 1, 2), request_id="last"))
    await _polled(lambda: ledger.usage(name, _today()))
    assert (await ledger.usage(name, _today()))["m"]["requests"] == entries
    assert (await ledger.requests(name, 1))[0]["request_id"] == "last"
    await ledger.aclose()


async def test_a_busy_ledger_waits_out_its_interval_while_redis_is_down(
    redis_server: RedisServer, redis_url: str
) -> None:
    ledger = RedisLedger(redis_url, flush_interval=0.5, timeout=0.2)
    await ledger.start()
    tries = 0
    flush = ledger.flush

    async def counted() -> bool:
        nonlocal tries
        tries += 1
        return await flush()

    ledger.flush = counted  # type: ignore[method-assign]
    redis_server.stop()
    try:
        for _ in range(3):  # a busy second: entries enough for several early flushes
            for i in range(FLUSH_ENTRIES * 2):
                ledger.record(UsageRecord("gus", "m", Usage(1, 1, 2), request_id=f"r{i}"))
            await asyncio.sleep(0.3)
        assert 1 <= tries <= 3  # one try per interval, not one per batch of entries
    finally:
        redis_server.start()

    async def drained() -> bool:
        return not ledger.backlog

    await _polled(drained)  # written by its own flushes: a second flusher could lose a batch
    assert (await ledger.usage("gus", _today()))["m"]["requests"] == FLUSH_ENTRIES * 6
    await ledger.aclose()


async def test_keys_share_a_cluster_hash_tag_per_key_name() -> None:
    assert usage_key("gw", "team-a", "2026-11-21", "gpt-4o").startswith("gw:{team-a}:")


async def test_records_queued_while_down_are_written_on_close(redis_server: RedisServer, redis_url: str) -> None:
    ledger = RedisLedger(redis_url, flush_interval=60, timeout=0.2)
    redis_server.stop()
    try:
        ledger.record(UsageRecord("carol", "m", Usage(3, 4, 7)))
        assert await ledger.flush() is False
        ledger.record(UsageRecord("carol", "m", Usage(3, 4, 7)))
        assert await ledger.flush() is False
    finally:
        redis_server.start()
    await asyncio.sleep(0)
    ledger2 = RedisLedger(redis_url)
    await ledger.aclose()  # the final flush writes both
    assert (await ledger2.usage("carol", _today()))["m"]["requests"] == 2.0
    await ledger2.aclose()


async def test_what_shutdown_could_not_write_is_spooled_and_replayed_once(
    redis_server: RedisServer, redis_url: str, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    ledger = RedisLedger(redis_url, flush_interval=60, timeout=0.2, spool_dir=spool)
    ledger.record(UsageRecord("dora", "m", Usage(3, 4, 7), request_id="r2", sess_id="s"))
    ledger.record(UsageRecord("dora", "m", Usage(3, 4, 7), request_id="r3"))
    redis_server.stop()
    try:
        await ledger.aclose()  # Redis unreachable: the two records go to a spool file
    finally:
        redis_server.start()
    files = list(spool.glob("ledger-*.jsonl"))
    assert len(files) == 1 and not list(spool.glob(".*partial"))
    copy = files[0].read_bytes()

    # The next start replays it, and deletes it once written.
    replay = RedisLedger(redis_url, flush_interval=60, spool_dir=spool)
    await replay.start()
    assert await replay.flush()
    assert not list(spool.glob("ledger-*.jsonl"))
    # A replica that replayed the same file (shared directory) adds nothing: the batch ids are kept.
    (spool / "ledger-copy.jsonl").write_bytes(copy)
    again = RedisLedger(redis_url, flush_interval=60, spool_dir=spool)
    await again.start()
    assert await again.flush()
    usage = await replay.usage("dora", _today())
    assert usage["m"]["requests"] == 2.0
    assert [e["request_id"] for e in await replay.requests("dora", 10)] == ["r3", "r2"]
    assert (await replay.rows(UsageQuery(key="dora")))[0]["requests"] == 2
    await replay.aclose()
    await again.aclose()


async def test_an_unreadable_spool_file_is_moved_aside(redis_url: str, tmp_path: Path) -> None:
    (tmp_path / "ledger-bad.jsonl").write_bytes(b"not json\n")
    ledger = RedisLedger(redis_url, flush_interval=60, spool_dir=tmp_path)
    await ledger.start()
    assert (tmp_path / "ledger-bad.bad").exists() and await ledger.flush()
    await ledger.aclose()


async def test_the_log_queue_is_bounded_and_the_totals_are_not(redis_server: RedisServer, redis_url: str) -> None:
    ledger = RedisLedger(redis_url, flush_interval=60, timeout=0.2, queue_entries=2)
    redis_server.stop()
    try:
        for i in range(5):
            ledger.record(UsageRecord("erin", "m", Usage(1, 1, 2), request_id=f"r{i}"))
        assert await ledger.flush() is False
        assert ledger.backlog == 5
    finally:
        redis_server.start()
    assert await ledger.flush()
    assert (await ledger.usage("erin", _today()))["m"]["requests"] == 5.0  # every request counted
    assert len(await ledger.requests("erin", 10)) == 2  # log entries past the bound were dropped
    await ledger.aclose()


@pytest.mark.parametrize(
    ("batches", "per_batch", "cap"),
    [
        (3, 400, 50),  # each batch more than one stream entry (LOG_PART requests each at most)
        (40, 3, 10),  # a quiet key: a few requests a batch
        (1, 10_500, 100),  # after an outage: one batch of many parts
        (2, 100, 500),  # under the cap: nothing trimmed
        (2, 256, 256),  # the newest part alone holds the cap
        (1, 1000, 300),  # one batch: three of its four parts go, then the rest would hold too few
    ],
)
async def test_the_request_log_is_trimmed_to_its_cap_in_whole_entries_and_keeps_the_newest(
    redis_url: str, batches: int, per_batch: int, cap: int
) -> None:
    name = f"tia{batches}x{per_batch}"
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    ledger = RedisLedger(redis_url, flush_interval=60, log_entries=cap)
    ids = []
    for batch in range(batches):
        for i in range(per_batch):
            ids.append(f"req-{batch}-{i}")
            ledger.record(UsageRecord(name, "m", Usage(1, 1, 2), request_id=ids[-1]))
        assert await ledger.flush()
    # every request counted
    assert (await ledger.usage(name, _today()))["m"]["requests"] == batches * per_batch
    # The newest, in order: at least the cap, fewer than the cap and one more stream entry.
    log = [entry["request_id"] for entry in request_log(r, name)]
    assert log == ids[len(ids) - len(log) :]
    assert min(cap, len(ids)) <= len(log) < cap + min(per_batch, LOG_PART)
    assert [e["request_id"] for e in await ledger.requests(name, cap)] == log[::-1][:cap]
    await ledger.aclose()


async def test_the_newest_requests_are_read_across_stream_entries_of_any_size(redis_url: str) -> None:
    ledger = RedisLedger(redis_url, flush_interval=60)
    ids = []
    for size in (1, 700, 1, 1, 5, 2, 300, 1):  # a batch of 700 is three stream entries
        for _ in range(size):
            ids.append(f"r{len(ids)}")
            ledger.record(UsageRecord("ned", "m", Usage(1, 1, 2), request_id=ids[-1]))
        assert await ledger.flush()
    newest_first = ids[::-1]
    for limit in (1, 2, 3, 9, 10, 300, 301, 310, 1000, 1011, 5000):
        assert [e["request_id"] for e in await ledger.requests("ned", limit)] == newest_first[:limit]
    await ledger.aclose()


async def test_a_log_written_one_entry_a_request_is_read_and_trimmed(redis_url: str) -> None:
    """As versions before batch entries wrote it: field `entry`, one request each."""
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    for i in range(5):
        r.xadd("gw:{olga}:log", {"entry": orjson.dumps({"request_id": f"old{i}"}).decode()})
    ledger = RedisLedger(redis_url, flush_interval=60, log_entries=4)
    ledger.record(UsageRecord("olga", "m", Usage(1, 1, 2), request_id="new0"))
    assert await ledger.flush()
    # The old entries stay, and are read, until the new ones alone hold the cap.
    assert [e["request_id"] for e in await ledger.requests("olga", 3)] == ["new0", "old4", "old3"]
    for i in range(1, 5):
        ledger.record(UsageRecord("olga", "m", Usage(1, 1, 2), request_id=f"new{i}"))
        assert await ledger.flush()
    assert [e["request_id"] for e in await ledger.requests("olga", 10)] == ["new4", "new3", "new2", "new1"]
    assert r.xlen("gw:{olga}:log") == 4
    await ledger.aclose()


async def test_a_replica_of_an_earlier_version_writing_meanwhile_leaves_the_log_its_cap(redis_url: str) -> None:
    """A rolling upgrade: an old replica adds an entry a request (and trims by entries, about its
    cap) while a new one adds parts. The log still holds the newest requests, at least its cap."""
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    cap, written = 1000, []
    ledger = RedisLedger(redis_url, flush_interval=60, log_entries=cap)
    for round_ in range(8):
        for i in range(300):
            written.append(f"new{round_}-{i}")
            ledger.record(UsageRecord("pia", "m", Usage(1, 1, 2), request_id=written[-1]))
        assert await ledger.flush()
        for i in range(250):  # as the earlier version wrote: XADD each, then XTRIM MAXLEN ~ cap
            written.append(f"old{round_}-{i}")
            r.xadd("gw:{pia}:log", {"entry": orjson.dumps({"request_id": written[-1]}).decode()})
            r.xtrim("gw:{pia}:log", maxlen=cap, approximate=True, limit=0)
        log = [e["request_id"] for e in request_log(r, "pia")]
        assert log == written[len(written) - len(log) :] and len(log) >= min(cap, len(written))
    await ledger.aclose()


async def test_the_newest_few_requests_are_read_from_few_stream_entries(redis_url: str) -> None:
    ledger = RedisLedger(redis_url, flush_interval=60)
    for i in range(10 * LOG_PART):
        ledger.record(UsageRecord("quin", "m", Usage(1, 1, 2), request_id=f"r{i}"))
    assert await ledger.flush()
    read: list[int] = []
    xrevrange = ledger._redis.xrevrange

    async def counted(*args: object, **kwargs: object) -> object:  # the real client, its pages counted
        page = await xrevrange(*args, **kwargs)
        read.append(len(page))
        return page

    ledger._redis.xrevrange = counted
    for limit, entries in ((1, 1), (LOG_PART, 1), (LOG_PART + 1, 2), (3 * LOG_PART, 3)):
        read.clear()
        assert len(await ledger.requests("quin", limit)) == limit
        assert sum(read) == entries, limit
    await ledger.aclose()


def test_a_spooled_log_entry_with_a_line_end_stays_one_entry() -> None:
    line = orjson.dumps(
        {"writer": "w", "seq": 1, "principal": "p", "entries": [], "sessions": [], "records": ['{"a":\n1}']}
    )
    assert Batch.from_json(line).records == [b'{"a": 1}']


async def test_a_batch_redis_refuses_is_set_aside_and_the_rest_written(redis_url: str, tmp_path: Path) -> None:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    r.set("gw:{zed}:days", "not a set")  # the batch's script fails on it, and would every time
    ledger = RedisLedger(redis_url, flush_interval=60, spool_dir=tmp_path)
    ledger.record(UsageRecord("zed", "m", Usage(1, 1, 2)))
    ledger.record(UsageRecord("amy", "m", Usage(1, 1, 2)))
    assert await ledger.flush()
    assert (await ledger.usage("amy", _today()))["m"]["requests"] == 1.0
    refused = (tmp_path / "refused.jsonl").read_text().splitlines()
    assert len(refused) == 1 and '"principal":"zed"' in refused[0]
    await ledger.aclose()


def test_the_request_log_keeps_metadata_within_openai_s_bounds() -> None:
    big = {f"k{i}": "v" * 1000 for i in range(40)} | {"x" * 100: {"nested": [1, 2]}}
    kept = bounded_metadata(big)
    assert kept is not None and len(kept) == 16 and all(len(v) == 512 for v in kept.values())
    assert bounded_metadata({"n": {"a": 1}}) == {"n": '{"a":1}'} and bounded_metadata({}) is None
