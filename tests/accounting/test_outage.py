"""Redis stopped in the middle of a load and started again: no request fails because of it, and the
ledger then holds exactly one record per request served, streams included. On one Redis and on a
three-master cluster (both keep their data on disk across the stop)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from gateway.accounting.ledger.redis import LOG_ENTRIES
from tests.conftest import CLIENT_KEY, RedisBackend, config_yaml
from tests.support.gateway_cli import USER, make_key, spread, usage_json
from tests.support.process import GatewayProcess
from tests.support.redis_server import request_log

PRICES = """
prices:
  - model: echo
    request: 0.001
"""
CONCURRENCY = 8


async def _load(
    url: str, key: str, seconds: float, outage: tuple[float, float], backend: RedisBackend
) -> list[tuple[int, bool]]:
    """Requests from CONCURRENCY clients for `seconds`, every other one streamed; Redis is stopped
    `outage[0]` seconds in and started again `outage[1]` seconds in. (status, streamed) per request."""
    done: list[tuple[int, bool]] = []
    deadline = time.monotonic() + seconds
    # Each client waits `pace` between starts, so that the load stays under the per-key request
    # log's cap (LOG_ENTRIES) on a fast machine too.
    pace = seconds * CONCURRENCY / (0.8 * LOG_ENTRIES)

    async def client(n: int) -> None:
        async with httpx.AsyncClient(headers={"authorization": f"Bearer {key}"}, timeout=30) as http:
            i = 0
            start = time.monotonic()
            while time.monotonic() < deadline:
                stream = (n + i) % 2 == 1
                i += 1
                await asyncio.sleep(start + i * pace - time.monotonic())
                body = {"model": "echo", "messages": USER, "stream": stream}
                if stream:
                    body["stream_options"] = {"include_usage": True}
                async with http.stream("POST", f"{url}/v1/chat/completions", json=body) as reply:
                    text = b"".join([chunk async for chunk in reply.aiter_bytes()])
                ok = reply.status_code == 200 and (not stream or text.endswith(b"data: [DONE]\n\n"))
                done.append((reply.status_code if ok else -reply.status_code, stream))

    async def outage_script() -> None:
        await asyncio.sleep(outage[0])
        await asyncio.to_thread(backend.stop)
        await asyncio.sleep(outage[1] - outage[0])
        await asyncio.to_thread(backend.start)

    await asyncio.gather(outage_script(), *(client(n) for n in range(CONCURRENCY)))
    return done


def test_redis_stopped_mid_load_loses_and_doubles_nothing(
    tmp_path: Path, fake_url: str, redis_backend: RedisBackend
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(config_yaml(fake_url, redis_backend.url, more=PRICES))
    env = {
        **redis_backend.env,
        "GATEWAY_ACCESS_LOG": "false",
        "GATEWAY_LEDGER_FLUSH_INTERVAL": "0.1",
        "GATEWAY_REDIS_TIMEOUT": "0.5",
    }
    # Limits and a budget on the key, so admission and settlement go through Redis too.
    key = make_key(
        config, "--name", "loaded", "--rpm", "100000", "--tpm", "100000000", "--budget", "1000", env=redis_backend.env
    )
    with GatewayProcess(config, workdir=tmp_path, env=env) as gateway:
        done = asyncio.run(_load(gateway.url, key, 5.0, (1.5, 3.0), redis_backend))
        assert {status for status, _ in done} == {200}, sorted({s for s, _ in done})
        served, streamed = len(done), sum(stream for _, stream in done)
        assert served > 50 and streamed > 20

        deadline = time.monotonic() + 20
        rows = usage_json(config, "--key", "loaded", env=redis_backend.env)
        while sum(row["requests"] for row in rows) < served and time.monotonic() < deadline:
            time.sleep(0.2)
            rows = usage_json(config, "--key", "loaded", env=redis_backend.env)
        time.sleep(0.5)  # later flushes must add nothing twice
        rows = usage_json(config, "--key", "loaded", env=redis_backend.env)
        output = gateway.output()

    assert "usage writes to Redis failing" in output and "usage writes to Redis recovered" in output
    assert sum(row["requests"] for row in rows) == served
    assert sum(row["cost"] for row in rows) == pytest.approx(served * 0.001)
    entries = request_log(redis_backend.client(), "loaded")
    assert len(entries) == served
    assert len({e["request_id"] for e in entries}) == served
    assert sum(e["stream"] for e in entries) == streamed
    assert all(not e["estimated"] and e["usage"]["total_tokens"] > 0 for e in entries)


def test_usage_queued_at_shutdown_is_spooled_and_replayed_by_the_next_start(
    tmp_path: Path, fake_url: str, redis_backend: RedisBackend
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(config_yaml(fake_url, redis_backend.url, more=PRICES))
    env = {**redis_backend.env, "GATEWAY_ACCESS_LOG": "false", "GATEWAY_REDIS_TIMEOUT": "0.3"}
    spool = tmp_path / "spool"  # GatewayProcess's GATEWAY_LEDGER_SPOOL_DIR
    with GatewayProcess(config, workdir=tmp_path, env=env) as gateway:
        redis_backend.stop()
        try:
            replies = asyncio.run(spread([gateway.url], CLIENT_KEY, 5))
            assert [r.status_code for r in replies] == [200] * 5
        finally:
            gateway.stop()  # Redis still down: the usage goes to the spool
            redis_backend.start()
    assert "spooled" in gateway.output() and len(list(spool.glob("ledger-*.jsonl"))) == 1

    with GatewayProcess(config, workdir=tmp_path, env=env) as again:
        deadline = time.monotonic() + 20
        while list(spool.glob("ledger-*.jsonl")) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not list(spool.glob("ledger-*.jsonl")), again.output()  # replayed, then deleted
    rows = usage_json(config, "--key", "tester", env=redis_backend.env)
    assert [(row["model"], row["requests"], row["cost"]) for row in rows] == [("echo", 5, pytest.approx(0.005))]
    assert len(request_log(redis_backend.client(), "tester")) == 5
