"""Per-key rpm and tpm limits, held in a real redis-server and shared by two gateway processes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from gateway.accounting.keys import Principal
from gateway.accounting.limits import Limiter
from gateway.accounting.limits_script import duration, limit_headers
from gateway.accounting.prices import PriceTable
from gateway.accounting.redis_client import redis_client
from gateway.config import ConfigError, Price, parse_config
from tests.conftest import RedisBackend, RunningGateway, config_yaml
from tests.support.gateway_cli import gateway_cli, make_key, spread, usage_json
from tests.support.process import GatewayProcess
from tests.support.redis_server import RedisServer, request_log


def test_rpm_is_exact_across_two_replicas(tmp_path: Path, fake_url: str, redis_backend: RedisBackend) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(config_yaml(fake_url, redis_backend.url))
    key = make_key(config, "--name", "sixty", "--rpm", "60", env=redis_backend.env)
    env = {"GATEWAY_ACCESS_LOG": "false", "GATEWAY_LEDGER_FLUSH_INTERVAL": "0.1", **redis_backend.env}
    with (
        GatewayProcess(config, workdir=tmp_path, env=env) as one,
        GatewayProcess(config, workdir=tmp_path, env=env) as two,
    ):
        replies = asyncio.run(spread([one.url, two.url], key, 200))

    ok = [r for r in replies if r.status_code == 200]
    refused = [r for r in replies if r.status_code == 429]
    assert len(ok) == 60 and len(refused) == 140
    assert {r.url.host for r in ok} == {"127.0.0.1"} and len({r.url.port for r in ok}) == 2  # both served
    for reply in refused:
        error = reply.json()["error"]
        assert error["code"] == "rate_limit_exceeded" and error["type"] == "requests"
        assert "60" in error["message"] and key not in error["message"]
        assert 1 <= int(reply.headers["retry-after"]) <= 60
        assert reply.headers["x-ratelimit-limit-requests"] == "60"
        assert reply.headers["x-ratelimit-remaining-requests"] == "0"
        assert reply.headers["x-ratelimit-reset-requests"].endswith("s")
    remaining = sorted(int(r.headers["x-ratelimit-remaining-requests"]) for r in ok)
    assert remaining == list(range(60))  # each admitted request saw the count after it, once
    # The ledger holds exactly the served requests.
    r = redis_backend.client()
    day = time.strftime("%Y-%m-%d", time.gmtime())
    assert r.hget(f"gw:{{sixty}}:usage:{day}:echo", "requests") == "60"
    assert len(request_log(r, "sixty")) == 60  # one request log entry per served request
    rows = usage_json(config, "--key", "sixty", env=redis_backend.env)
    assert [(row["key"], row["model"], row["day"], row["requests"]) for row in rows] == [("sixty", "echo", day, 60)]


def test_tpm_refuses_once_the_minute_s_tokens_are_used(tmp_path: Path, fake_url: str, redis_url: str) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(config_yaml(fake_url, redis_url))
    key = make_key(config, "--name", "tokens", "--tpm", "100")
    with GatewayProcess(config, workdir=tmp_path, env={"GATEWAY_ACCESS_LOG": "false"}) as gateway:
        statuses = []
        for _ in range(20):
            reply = asyncio.run(spread([gateway.url], key, 1))[0]
            statuses.append(reply.status_code)
            if reply.status_code == 200:
                assert reply.headers["x-ratelimit-limit-tokens"] == "100"
            time.sleep(0.05)  # settling (the real total replaces the estimate) is in the background
    assert 200 in statuses and 429 in statuses
    first_refusal = statuses.index(429)
    assert all(s == 429 for s in statuses[first_refusal:])


def test_limits_fail_open_while_redis_is_down(
    tmp_path: Path, fake_url: str, redis_url: str, redis_server: RedisServer
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(config_yaml(fake_url, redis_url))
    key = make_key(config, "--name", "open", "--rpm", "5")
    env = {"GATEWAY_ACCESS_LOG": "false", "GATEWAY_REDIS_TIMEOUT": "0.3"}
    with GatewayProcess(config, workdir=tmp_path, env=env) as gateway:
        assert [r.status_code for r in asyncio.run(spread([gateway.url], key, 2))] == [200, 200]  # key cached
        redis_server.stop()
        try:
            replies = asyncio.run(spread([gateway.url], key, 10))
        finally:
            redis_server.start()
        assert [r.status_code for r in replies] == [200] * 10
        assert "rate limits in Redis unreachable" in gateway.output()


def test_headers_and_durations() -> None:
    assert duration(0) == "0s" and duration(17) == "17s" and duration(60) == "1m0s" and duration(75) == "1m15s"
    headers = dict(limit_headers(60, None, 60, 0, 12, 0))
    assert headers == {
        b"x-ratelimit-limit-requests": b"60",
        b"x-ratelimit-remaining-requests": b"0",
        b"x-ratelimit-reset-requests": b"12s",
    }
    assert dict(limit_headers(None, 1000, 3, 250, 0, 30))[b"x-ratelimit-remaining-tokens"] == b"750"


@pytest.mark.parametrize("stream", [False, True])
def test_no_limit_headers_for_a_key_without_limits(gateway_url_and_key: tuple[str, str], stream: bool) -> None:
    url, key = gateway_url_and_key
    reply = asyncio.run(spread([url], key, 1, stream=stream))[0]
    assert reply.status_code == 200 and not any(h.startswith("x-ratelimit") for h in reply.headers)


@pytest.fixture
def gateway_url_and_key(gateway: object) -> tuple[str, str]:
    from tests.conftest import CLIENT_KEY, RunningGateway

    assert isinstance(gateway, RunningGateway)
    return gateway.url, CLIENT_KEY


def test_a_model_limit_applies_to_its_models_only(
    tmp_path: Path, fake_url: str, redis_url: str, start_gateway: Callable[..., RunningGateway]
) -> None:
    text = config_yaml(fake_url, redis_url)
    config = tmp_path / "gateway.yaml"
    config.write_text(text)
    key = make_key(config, "--name", "mixed", "--rpm", "100", "--model-limit", "gpt-*:rpm=2")
    gateway = start_gateway(parse_config(text))
    gpt = [asyncio.run(spread([gateway.url], key, 1, model="gpt-test"))[0] for _ in range(3)]
    assert [r.status_code for r in gpt] == [200, 200, 429]
    assert "on models `gpt-*`" in gpt[2].json()["error"]["message"]
    assert gpt[1].headers["x-ratelimit-limit-requests"] == "2"  # the tighter limit is the one shown
    assert gpt[1].headers["x-ratelimit-remaining-requests"] == "0"
    echo = asyncio.run(spread([gateway.url], key, 3))
    assert [r.status_code for r in echo] == [200] * 3
    assert {r.headers["x-ratelimit-limit-requests"] for r in echo} == {"100"}
    # Sent at once, admitted in some order: the last one admitted sees 5 served on the key (a
    # refusal is not counted).
    assert sorted(r.headers["x-ratelimit-remaining-requests"] for r in echo) == ["95", "96", "97"]


def test_model_limits_are_checked_where_they_are_given(tmp_path: Path, fake_url: str, redis_url: str) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(config_yaml(fake_url, redis_url))
    bad = gateway_cli("keys", "create", "--config", str(config), "--name", "x", "--model-limit", "gpt-*:rpm=0")
    assert bad.returncode == 2 and "model-limits" in bad.stderr
    with pytest.raises(ConfigError, match=r"keys\[1\].model_limits\[0\]: give `rpm`, `tpm` or both"):
        limited = "    models: [echo]\n"
        parse_config(config_yaml(fake_url, redis_url).replace(limited, limited + "    model_limits: [{model: echo}]\n"))


async def test_spending_admitted_while_redis_was_down_reaches_the_budget(
    redis_server: RedisServer, redis_url: str
) -> None:
    limiter = Limiter(redis_client(redis_url, timeout=0.2), PriceTable([Price(model="m", request=1.0)]))
    principal = Principal("offline", budget=10, budget_period="total")
    redis_server.stop()
    try:
        admission = await limiter.admit(principal, "m", 10)
    finally:
        redis_server.start()
    assert admission is not None and not admission.confirmed
    limiter._down_until = 0.0  # as if the second of waiting after the failure were over
    limiter.settle(admission, 20, 1.0)
    await limiter.aclose()
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    assert r.hgetall("gw:{offline}:budget:total") == {"spent": "1"}  # its cost counted, no hold left


async def test_a_call_that_cannot_be_built_fails_open_instead_of_hanging(redis_url: str) -> None:
    limiter = Limiter(redis_client(redis_url, timeout=0.5), PriceTable([Price(model="m", request=1.0)]))
    broken = Principal("broken", budget=5, budget_period="week")  # not a period: as a corrupt record
    admission = await asyncio.wait_for(limiter.admit(broken, "m", 10), 5)
    assert admission is not None and not admission.confirmed
    await limiter.aclose()


async def test_a_request_cancelled_while_waiting_gives_its_hold_back(redis_url: str) -> None:
    limiter = Limiter(redis_client(redis_url, timeout=0.5), PriceTable([Price(model="m", request=1.0)]))
    principal = Principal("leaver", budget=5, budget_period="total")
    waiting = asyncio.ensure_future(limiter.admit(principal, "m", 10))
    await asyncio.sleep(0)  # queued; the call goes out on the next loop turn
    waiting.cancel()
    await asyncio.sleep(0.2)
    await limiter.aclose()
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    assert float(r.hget("gw:{leaver}:budget:total", "held") or 0) == 0
    assert r.zcard("gw:{leaver}:holds:total") == 0
