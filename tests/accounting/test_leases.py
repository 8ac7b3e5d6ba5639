"""Admission leases against a real Redis (one server and a three-master cluster): a busy key is
admitted mostly without a script call, and once the leases are over Redis counts exactly what was
admitted, no more; a key near its limit is never admitted past it, from two replicas at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

from gateway.accounting.keys import Principal
from gateway.accounting.leases import MAX_LEASE, MIN_LEASE, lease_size
from gateway.accounting.limits import Limiter, RateLimited
from gateway.accounting.limits_script import Admission
from gateway.accounting.prices import PriceTable
from gateway.accounting.redis_client import redis_client
from gateway.config.model import Price
from tests.conftest import RedisBackend

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
    for admission in admitted[:200]:
        limiter.settle(admission, 15, 0.001)
    await asyncio.sleep(1.1)  # every lease is over: their unused parts are given back
    for admission in admitted[200:]:  # requests that outlive their lease: its hold waits for them
        limiter.settle(admission, 15, 0.001)
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
    limiter = Limiter(redis_client(redis_backend.url, timeout=2, cluster=redis_backend.cluster), PRICES)
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
    for admission in admitted:
        assert admission is not None
        limiter.settle(admission, 15, 0.001)
    await asyncio.sleep(1.2)  # leases over: their give-backs and final settlements go (and are lost)
    await asyncio.sleep(1.2)  # sent again once the second after the failure is over
    await limiter.aclose()
    assert len(lost) == 2
    _settled_exactly(redis_backend, "resent", 200, 200 * 15, 0.2)


async def test_a_lease_granted_by_a_call_whose_answer_was_lost_holds_nothing_for_long(
    redis_backend: RedisBackend,
) -> None:
    limiter = Limiter(redis_client(redis_backend.url, timeout=2, cluster=redis_backend.cluster), PRICES)
    lost = []

    def lose(payload: bytes) -> bool:  # the first call that asks for a lease
        if b'"a":[[' in payload and b"L" in payload.split(b'"a":', 1)[1] and not lost:
            lost.append(payload)
            return True
        return False

    _lossy(limiter, lose)
    principal = Principal("lost", rpm=1_000_000, budget=1000.0, budget_period="total")
    admitted = [await limiter.admit(principal, "m", 10) for _ in range(20)]
    assert len(lost) == 1
    for admission in admitted:
        assert admission is not None
        limiter.settle(admission, 15, 0.001)
    await asyncio.sleep(1.2)
    await limiter.aclose()
    r = redis_backend.client()
    budget = r.hgetall("gw:{lost}:budget:total")
    assert float(budget["spent"]) == pytest.approx(0.02)  # the unknown admission's cost counted too
    assert float(budget["held"]) == pytest.approx(0, abs=1e-9)
    assert r.zcard("gw:{lost}:holds:total") == 0
    # What the lost grant counted stays counted (it cannot be told apart): early refusals, never late.
    # (Requests admitted in the second after the failure, without Redis, are not counted: fail-open.)
    confirmed = sum(a is not None and a.confirmed for a in admitted)
    assert _ring_total(redis_backend, "gw:{lost}:rl:requests") >= confirmed + 1 + 4


def test_a_lease_is_asked_for_with_room_for_twice_the_last_second() -> None:
    assert lease_size(0, 1) == 0  # not busy enough
    assert lease_size(0, MIN_LEASE // 2) == MIN_LEASE
    assert lease_size(300, 10) == 600
    assert lease_size(10, 300) == 600
    assert lease_size(10 * MAX_LEASE, 0) == MAX_LEASE
