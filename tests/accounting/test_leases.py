"""Admission leases against a real Redis (one server and a three-master cluster): a busy key is
admitted mostly without a script call, and once the leases are over Redis counts exactly what was
admitted, no more; a key near its limit is never admitted past it, from two replicas at once."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from gateway.accounting.keys import Principal
from gateway.accounting.leases import MAX_LEASE, MIN_LEASE, lease_size
from gateway.accounting.limits import Limiter, RateLimited
from gateway.accounting.limits_script import Admission, Scope
from gateway.accounting.prices import PriceTable
from gateway.accounting.redis_client import redis_client
from gateway.config.model import Price
from tests.conftest import RedisBackend, config_yaml
from tests.support.gateway_cli import make_key
from tests.support.process import GatewayProcess
from tests.support.redis_server import RedisServer

PRICES = PriceTable([Price(model="m", request=0.001, input=1.0, output=2.0)])


def _limiter(backend: RedisBackend) -> tuple[Limiter, list[int]]:
    """A limiter on the backend, and a list that counts its script calls."""
    limiter = Limiter(redis_client(backend.url, timeout=2, cluster=backend.cluster), PRICES)
    calls = [0]
    sync = limiter._sync

    async def counted(**kwargs: Any) -> Any:
        calls[0] += 1
        return await sync(**kwargs)

    limiter._sync = counted
    return limiter, calls


def _settle_all(limiter: Limiter, admitted: Sequence[Admission | None], tokens: int, cost: float) -> None:
    """Every request ends, each having used `tokens` and cost `cost`."""
    for admission in admitted:
        assert admission is not None
        limiter.settle(admission, tokens, cost)


def _asks_lease(payload: bytes) -> bool:
    """Whether a script call asks for a lease (lease ids hold an `L`; hold ids are lowercase hex)."""
    return b"L" in payload.split(b'"a":', 1)[1]


def _ring_total(backend: RedisBackend, key: str) -> int:
    """What a rate-limit ring counts over the last minute."""
    now = time.time()
    total = 0
    for value in backend.client().hgetall(key).values():
        second, count = (int(part) for part in value.split(":"))
        total += count if second > now - 60 else 0
    return total


async def test_a_busy_key_is_admitted_from_leases_and_redis_then_counts_exactly_what_was(
    redis_backend: RedisBackend,
) -> None:
    limiter, calls = _limiter(redis_backend)
    busy = Principal("busy", rpm=1_000_000, tpm=1_000_000_000, budget=1000.0, budget_period="total")
    admitted: list[Admission] = []
    for _ in range(400):
        admission = await limiter.admit(busy, "m", 10)
        assert admission is not None
        admitted.append(admission)
    assert calls[0] < 40  # a few to grow the lease, then about one a second
    assert sum(a.lease is not None for a in admitted) > 350
    _settle_all(limiter, admitted[:200], 15, 0.001)
    await asyncio.sleep(1.1)  # every lease is over: their unused parts are given back
    # Requests that outlive their lease: its hold waits for them.
    _settle_all(limiter, admitted[200:], 15, 0.001)
    await limiter.aclose()

    r = redis_backend.client()
    assert _ring_total(redis_backend, "gw:{busy}:rl:requests") == 400
    assert _ring_total(redis_backend, "gw:{busy}:rl:tokens") == 400 * 15
    budget = r.hgetall("gw:{busy}:budget:total")
    assert float(budget["spent"]) == pytest.approx(0.4)
    assert float(budget["held"]) == pytest.approx(0, abs=1e-9)
    assert r.zcard("gw:{busy}:holds:total") == 0


async def test_two_replicas_never_admit_past_a_limit_leases_were_granted_under(redis_backend: RedisBackend) -> None:
    one, _ = _limiter(redis_backend)
    two, _ = _limiter(redis_backend)
    shared = Principal("shared", rpm=2000)
    admitted = [0, 0]

    async def replica(n: int, limiter: Limiter) -> None:
        for i in range(1500):
            try:
                await limiter.admit(shared, "m", 10)
            except RateLimited:
                pass
            else:
                admitted[n] += 1
            if i % 16 == 0:
                await asyncio.sleep(0)  # let the other replica in now and then

    await asyncio.gather(replica(0, one), replica(1, two))
    total = sum(admitted)
    # Never past the limit; short of it by at most the unused leases the replicas ended with.
    assert 2000 - 2 * (2000 // 64) <= total <= 2000
    assert min(admitted) > 0
    await asyncio.sleep(1.1)
    await one.aclose()
    await two.aclose()
    assert _ring_total(redis_backend, "gw:{shared}:rl:requests") == total


async def test_a_lease_s_admissions_see_the_count_after_them(redis_backend: RedisBackend) -> None:
    limiter, calls = _limiter(redis_backend)
    principal = Principal("counted", rpm=100_000)
    await asyncio.sleep(1 - time.time() % 1)  # all in one second: no lease ends in the middle
    remaining = []
    for _ in range(100):
        admission = await limiter.admit(principal, "m", 10)
        assert admission is not None
        remaining.append(int(dict(admission.headers)[b"x-ratelimit-remaining-requests"]))
    assert remaining == list(range(99_999, 99_899, -1))
    assert calls[0] < 20
    await limiter.aclose()


async def test_a_small_limit_gets_no_lease(redis_backend: RedisBackend) -> None:
    limiter, calls = _limiter(redis_backend)
    principal = Principal("small", rpm=200, budget=1.0, budget_period="day")
    for _ in range(50):
        admission = await limiter.admit(principal, "m", 10)
        assert admission is not None and admission.lease is None
    assert calls[0] == 50
    await limiter.aclose()


def test_two_gateways_serve_a_busy_key_from_leases_and_never_past_its_rpm(
    tmp_path: Path, fake_url: str, redis_backend: RedisBackend
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(config_yaml(fake_url, redis_backend.url))
    key = make_key(config, "--name", "thousand", "--rpm", "1000", env=redis_backend.env)
    env = {"GATEWAY_ACCESS_LOG": "false", "GATEWAY_LEDGER_FLUSH_INTERVAL": "0.1", **redis_backend.env}
    r = redis_backend.client()
    with (
        GatewayProcess(config, workdir=tmp_path, env=env) as one,
        GatewayProcess(config, workdir=tmp_path, env=env) as two,
    ):
        before = _script_calls(r)
        far = asyncio.run(_load([one.url, two.url], key, 400))  # under half the limit: leases
        calls = _script_calls(r) - before
        assert far == [200] * 400
        assert calls < 100  # about 40; the ledger's writes are among these calls
        statuses = far + asyncio.run(_load([one.url, two.url], key, 1000))
        served = statuses.count(200)
        assert set(statuses) == {200, 429}
        # Never past the limit; short of it by at most the unused leases (a 64th of it each).
        assert 1000 - 2 * (1000 // 64) <= served <= 1000
        time.sleep(1.5)  # every lease over and given back
        assert _ring_total(redis_backend, "gw:{thousand}:rl:requests") == served
    day = time.strftime("%Y-%m-%d", time.gmtime())
    assert r.hget(f"gw:{{thousand}}:usage:{day}:echo", "requests") == str(served)


async def _load(urls: list[str], key: str, count: int, clients: int = 16) -> list[int]:
    """`count` chat requests from `clients` clients at once, each sending one after another, over
    `urls` in turn: the statuses."""
    statuses: list[int] = []

    async def client(n: int) -> None:
        async with httpx.AsyncClient(headers={"authorization": f"Bearer {key}"}, timeout=30) as http:
            for i in range(n, count, clients):
                body = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}
                statuses.append((await http.post(f"{urls[i % len(urls)]}/v1/chat/completions", json=body)).status_code)

    await asyncio.gather(*(client(n) for n in range(clients)))
    return statuses


def _script_calls(r: Any) -> int:
    """EVALSHA calls Redis has run (on every master of a cluster)."""
    stats = r.info("commandstats")
    if "cmdstat_evalsha" in stats:
        return int(stats["cmdstat_evalsha"]["calls"])
    return sum(int(node.get("cmdstat_evalsha", {}).get("calls", 0)) for node in stats.values())


def _lossy(limiter: Limiter, lose: Callable[[bytes], bool]) -> None:
    """Calls whose payload `lose` picks run in Redis, then their answer is lost (a timeout)."""
    sync = limiter._sync

    async def call(**kwargs: Any) -> Any:
        answer = await sync(**kwargs)
        if lose(kwargs["args"][0]):
            raise redis.exceptions.TimeoutError("the answer was lost")
        return answer

    limiter._sync = call


def _settled_exactly(backend: RedisBackend, key: str, requests: int, tokens: int, spent: float) -> None:
    r = backend.client()
    assert _ring_total(backend, f"gw:{{{key}}}:rl:requests") == requests
    assert _ring_total(backend, f"gw:{{{key}}}:rl:tokens") == tokens
    budget = r.hgetall(f"gw:{{{key}}}:budget:total")
    assert float(budget["spent"]) == pytest.approx(spent)
    assert float(budget["held"]) == pytest.approx(0, abs=1e-9)
    assert r.zcard(f"gw:{{{key}}}:holds:total") == 0
    assert r.hlen(f"gw:{{{key}}}:leases") == 0  # every guard used


async def test_a_lease_s_settlements_resent_after_a_lost_answer_apply_once(redis_backend: RedisBackend) -> None:
    limiter, _ = _limiter(redis_backend)
    lost = []

    def lose(payload: bytes) -> bool:  # the first two calls with settlements only
        if b'"a":[]' in payload and len(lost) < 2:
            lost.append(payload)
            return True
        return False

    _lossy(limiter, lose)
    principal = Principal("resent", rpm=1_000_000, tpm=1_000_000_000, budget=1000.0, budget_period="total")
    admitted = [await limiter.admit(principal, "m", 10) for _ in range(200)]
    assert sum(a is not None and a.lease is not None for a in admitted) > 150
    _settle_all(limiter, admitted, 15, 0.001)
    await asyncio.sleep(1.2)  # leases over: their give-backs and final settlements go (and are lost)
    await asyncio.sleep(1.2)  # sent again once the second after the failure is over
    await limiter.aclose()
    assert len(lost) == 2
    _settled_exactly(redis_backend, "resent", 200, 200 * 15, 0.2)


async def test_a_lease_granted_by_a_call_whose_answer_was_lost_holds_nothing_for_long(
    redis_backend: RedisBackend,
) -> None:
    limiter, _ = _limiter(redis_backend)
    lost = []

    def lose(payload: bytes) -> bool:  # the first call that asks for a lease
        if _asks_lease(payload) and not lost:
            lost.append(payload)
            return True
        return False

    _lossy(limiter, lose)
    principal = Principal("lost", rpm=1_000_000, budget=1000.0, budget_period="total")
    admitted = [await limiter.admit(principal, "m", 10) for _ in range(20)]
    assert len(lost) == 1
    _settle_all(limiter, admitted, 15, 0.001)
    await asyncio.sleep(1.2)
    await limiter.aclose()
    r = redis_backend.client()
    budget = r.hgetall("gw:{lost}:budget:total")
    assert float(budget["spent"]) == pytest.approx(0.02)  # the unknown admission's cost counted too
    assert float(budget["held"]) == pytest.approx(0, abs=1e-9)
    assert r.zcard("gw:{lost}:holds:total") == 0
    assert r.hlen("gw:{lost}:leases") == 0  # the lost grant's stage too
    # What the lost grant counted stays counted (it cannot be told apart): early refusals, never late.
    # (Requests admitted in the second after the failure, without Redis, are not counted: fail-open.)
    confirmed = sum(a is not None and a.confirmed for a in admitted)
    assert _ring_total(redis_backend, "gw:{lost}:rl:requests") >= confirmed + 1 + 4


async def test_when_a_lease_is_over_it_holds_only_what_its_requests_in_flight_reserve(
    redis_backend: RedisBackend,
) -> None:
    limiter, _ = _limiter(redis_backend)
    principal = Principal("long", rpm=1_000_000, tpm=1_000_000_000, budget=1000.0, budget_period="total")
    await asyncio.sleep(1 - time.time() % 1)
    admitted = [await limiter.admit(principal, "m", 10) for _ in range(50)]
    assert all(a is not None for a in admitted) and admitted[-1] and admitted[-1].lease is not None
    reservation = PRICES.reservation("m", 10, 1024)
    running = admitted.pop()  # a long stream: it outlives its lease by far
    _settle_all(limiter, admitted, 1000, 0.001)
    await asyncio.sleep(1.2)  # the lease is over: given back, its ended requests settled

    r = redis_backend.client()
    budget = r.hgetall("gw:{long}:budget:total")
    assert float(budget["held"]) == pytest.approx(reservation)  # the running request's only
    assert float(budget["spent"]) == pytest.approx(49 * 0.001)
    assert _ring_total(redis_backend, "gw:{long}:rl:requests") == 50
    assert _ring_total(redis_backend, "gw:{long}:rl:tokens") == 49 * 1000 + 10

    limiter.settle(running, 500, 0.002)  # after its lease: its tokens corrected at once
    await asyncio.sleep(0.1)
    assert _ring_total(redis_backend, "gw:{long}:rl:tokens") == 49 * 1000 + 500
    await limiter.aclose()
    _settled_exactly(redis_backend, "long", 50, 49 * 1000 + 500, 49 * 0.001 + 0.002)


async def test_a_lease_s_steps_apply_in_order_when_an_answer_is_lost(redis_backend: RedisBackend) -> None:
    limiter, _ = _limiter(redis_backend)
    lost = []

    def lose(payload: bytes) -> bool:  # the first call with a lease step: it applies, its answer is lost
        if b'"l":[[' in payload and not lost:
            lost.append(payload)
            return True
        return False

    _lossy(limiter, lose)
    principal = Principal("steps", rpm=1_000_000, tpm=1_000_000_000, budget=1000.0, budget_period="total")
    await asyncio.sleep(1 - time.time() % 1)
    admitted = [await limiter.admit(principal, "m", 10) for _ in range(50)]
    _settle_all(limiter, admitted[:30], 15, 0.001)
    await asyncio.sleep(1.05)  # the lease is over: its first step goes, and its answer is lost
    # Meanwhile its other requests end: their step must wait.
    _settle_all(limiter, admitted[30:], 15, 0.001)
    await asyncio.sleep(1.5)  # the first step sent again (a no-op), then the next
    await limiter.aclose()
    assert len(lost) == 1
    _settled_exactly(redis_backend, "steps", 50, 50 * 15, 0.05)


async def test_a_call_sent_again_counts_its_grant_and_holds_once(redis_backend: RedisBackend) -> None:
    limiter, _ = _limiter(redis_backend)
    sync = limiter._sync
    twice = []

    async def again(**kwargs: Any) -> Any:  # as redis-py does after a timeout: the same call again
        if _asks_lease(kwargs["args"][0]) and not twice:
            twice.append(await sync(**kwargs))
        return await sync(**kwargs)

    limiter._sync = again
    principal = Principal("twice", rpm=1_000_000, budget=1000.0, budget_period="total")
    admitted = [await limiter.admit(principal, "m", 10) for _ in range(20)]
    assert len(twice) == 1
    _settle_all(limiter, admitted, 15, 0.001)
    await asyncio.sleep(1.2)
    await limiter.aclose()
    r = redis_backend.client()
    budget = r.hgetall("gw:{twice}:budget:total")
    assert float(budget["held"]) == pytest.approx(0, abs=1e-9)  # no hold counted twice
    assert float(budget["spent"]) == pytest.approx(0.02)
    assert r.hlen("gw:{twice}:leases") == 0


async def test_a_call_to_a_stalled_redis_times_out_once_and_is_not_sent_again(
    redis_server: RedisServer, redis_url: str
) -> None:
    limiter = Limiter(redis_client(redis_url, timeout=0.3), PRICES)
    principal = Principal("stalled", rpm=1_000_000)
    await limiter.admit(Principal("first", rpm=10), "m", 10)  # the script loaded in Redis
    assert redis_server.proc is not None
    redis_server.proc.send_signal(signal.SIGSTOP)  # stalled: it takes the call, and answers late
    try:
        started = time.monotonic()
        admission = await limiter.admit(principal, "m", 10)
        waited = time.monotonic() - started
    finally:
        redis_server.proc.send_signal(signal.SIGCONT)
    assert admission is not None and not admission.confirmed  # served without limits, after one timeout
    assert waited < 0.55
    await asyncio.sleep(0.3)
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    ring = r.hgetall("gw:{stalled}:rl:requests")
    assert sum(int(v.split(":")[1]) for v in ring.values()) == 1  # the call ran once, when Redis woke
    await limiter.aclose()


def test_a_lease_is_asked_for_with_room_for_twice_the_last_second() -> None:
    assert lease_size(0, 1) == 0  # not busy enough
    assert lease_size(0, MIN_LEASE // 2) == MIN_LEASE
    assert lease_size(300, 10) == 600
    assert lease_size(10, 300) == 600
    assert lease_size(10 * MAX_LEASE, 0) == MAX_LEASE
    # Within a 64th of every limit, or none at all.
    rpm, tpm = Scope("r", "t", 1000, None, ""), Scope("r", "t", None, 64 * 2 * 10 * 100, "")
    assert lease_size(300, 0, (rpm,)) == 1000 // 64
    assert lease_size(300, 0, (rpm, tpm), estimate=10) == 15
    assert lease_size(300, 0, (tpm,), estimate=10) == 100
    assert lease_size(300, 0, budget=64 * 2 * 0.5 * 7, reservation=0.5) == 7
    assert lease_size(300, 0, (Scope("r", "t", 200, None, ""),)) == 0
    # The size the script accepts, to the last bit of the budget's floating point.
    reservation = 0.0034706796979120393
    size = lease_size(10_000, 0, budget=1000.0, reservation=reservation)
    assert size and 2 * size * reservation * 64 <= 1000.0
