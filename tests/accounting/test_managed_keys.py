"""Managed keys: made, changed and revoked through the admin API and `gateway keys`, stored hashed in a
real redis-server, used by clients (the openai SDK) on two gateway replicas."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest

from gateway.config import parse_config
from tests.conftest import CLIENT_KEY, RedisBackend, RunningGateway, config_yaml
from tests.conftest import sdk as make_sdk
from tests.support.gateway_cli import gateway_cli
from tests.support.spec import Checker

ADMIN = "admin-token-for-tests"
USER = [{"role": "user", "content": "hello"}]
CACHE_SECONDS = 0.5
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def replicas(
    start_gateway: Callable[..., RunningGateway], fake_url: str, redis_backend: RedisBackend
) -> list[RunningGateway]:
    config = parse_config(config_yaml(fake_url, redis_backend.url))
    settings = {"admin_token": ADMIN, "key_cache_seconds": CACHE_SECONDS, "redis_cluster": redis_backend.cluster}
    return [start_gateway(config, **settings) for _ in range(2)]


def _admin(gateway: RunningGateway, token: str = ADMIN) -> httpx.Client:
    return httpx.Client(base_url=gateway.url, headers={"authorization": f"Bearer {token}"}, timeout=10)


def _until(check: Callable[[], bool], seconds: float) -> float:
    """Seconds until `check()` holds; fails after `seconds`."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > seconds:
            pytest.fail(f"not within {seconds} s")
        time.sleep(0.02)
    return time.monotonic() - started


def test_a_key_made_by_the_admin_api_works_on_every_replica_until_revoked(
    replicas: list[RunningGateway], redis_backend: RedisBackend, checker: Checker
) -> None:
    one, two = replicas
    made = _admin(one).post("/admin/keys", json={"name": "team-a-bot", "team": "team-a", "models": ["echo"]})
    assert made.status_code == 201, made.text
    key = made.json()["key"]
    assert key.startswith("sk-gw-") and made.json()["team"] == "team-a"

    # Stored hashed: the key itself is nowhere in Redis.
    r = redis_backend.client(decode=False)
    everything = b"".join(r.dump(k) or b"" for k in r.keys("*"))
    assert key.encode() not in everything
    assert r.exists(f"gw:{{keys}}:digest:{hashlib.sha256(key.encode()).hexdigest()}")

    for gateway in replicas:
        reply = make_sdk(gateway.url, checker, key=key).chat.completions.create(model="echo", messages=USER)
        assert reply.choices[0].message.content
    with pytest.raises(openai.NotFoundError):  # the key may use echo only
        make_sdk(one.url, checker, key=key).chat.completions.create(model="gpt-test", messages=USER)

    revoked = _admin(one).post("/admin/keys/team-a-bot/revoke")
    assert revoked.status_code == 200 and revoked.json()["enabled"] is False

    def refused_everywhere() -> bool:
        for gateway in replicas:
            status = httpx.post(
                f"{gateway.url}/v1/chat/completions",
                headers={"authorization": f"Bearer {key}"},
                json={"model": "echo", "messages": USER},
            ).status_code
            if status != 401:
                return False
        return True

    took = _until(refused_everywhere, CACHE_SECONDS + 2)
    assert took <= CACHE_SECONDS + 0.5
    error = httpx.post(
        f"{two.url}/v1/chat/completions", headers={"authorization": f"Bearer {key}"}, json={"model": "echo"}
    ).json()["error"]
    assert error["code"] == "invalid_api_key" and "revoked" in error["message"]


def test_admin_api_updates_lists_and_refuses_what_it_should(replicas: list[RunningGateway], checker: Checker) -> None:
    admin = _admin(replicas[0])
    key = admin.post("/admin/keys", json={"name": "k1", "rpm": 10}).json()["key"]
    assert admin.post("/admin/keys", json={"name": "k1"}).status_code == 409
    assert admin.post("/admin/keys", json={"name": "tester"}).status_code == 409  # a config key's name
    bad = admin.post("/admin/keys", json={"name": "no spaces"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "name"
    assert admin.post("/admin/keys", json={"name": "k2", "rpm": "many"}).json()["error"]["param"] == "rpm"

    changed = admin.patch("/admin/keys/k1", json={"rpm": 20, "metadata": {"owner": "ana"}})
    assert changed.status_code == 200 and changed.json()["rpm"] == 20 and changed.json()["metadata"] == {"owner": "ana"}
    listed = admin.get("/admin/keys").json()["data"]
    assert [k["name"] for k in listed] == ["k1"]
    assert key not in json.dumps(listed)
    assert admin.get("/admin/keys/nope").status_code == 404

    # An expiry in the past refuses the key.
    admin.patch("/admin/keys/k1", json={"expires": "2020-01-01T00:00:00Z"})
    time.sleep(CACHE_SECONDS + 0.1)
    refused = httpx.post(
        f"{replicas[0].url}/v1/chat/completions", headers={"authorization": f"Bearer {key}"}, json={"model": "echo"}
    )
    assert refused.status_code == 401 and "expired" in refused.json()["error"]["message"]

    # The admin token is not a client key, and client keys do not open the admin API.
    assert _admin(replicas[0], token=CLIENT_KEY).get("/admin/keys").status_code == 401
    assert httpx.get(f"{replicas[0].url}/admin/keys").status_code == 401
    no_key = httpx.post(
        f"{replicas[0].url}/v1/chat/completions", headers={"authorization": f"Bearer {ADMIN}"}, json={"model": "echo"}
    )
    assert no_key.status_code == 401


def test_admin_api_is_off_without_a_token(gateway: RunningGateway) -> None:
    assert _admin(gateway).get("/admin/keys").status_code == 404


def test_admin_api_is_in_the_openapi_document(replicas: list[RunningGateway]) -> None:
    paths = httpx.get(f"{replicas[0].url}/openapi.json").json()["paths"]
    assert {"/admin/keys", "/admin/keys/{name}", "/admin/keys/{name}/revoke"} <= set(paths)


def _cli(*args: str, config: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return gateway_cli("keys", *args, "--config", str(config), env=env)


def test_the_cli_has_the_same_powers(
    tmp_path: Path, fake_url: str, redis_backend: RedisBackend, replicas: list[RunningGateway]
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(config_yaml(fake_url, redis_backend.url))
    env = redis_backend.env
    made = _cli(
        "create", "--name", "cli-key", "--team", "t", "--models", "echo,gpt-*", "--rpm", "60", "--tpm", "1000",
        "--budget", "5", "--budget-period", "day", "--expires", "2099-01-01T00:00:00", "--metadata", "owner=ana",
        config=config,
        env=env,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert made.stdout == key + "\n" and key.startswith("sk-gw-")  # the key alone

    shown = json.loads(_cli("show", "cli-key", "--format", "json", config=config, env=env).stdout)
    assert shown["models"] == ["echo", "gpt-*"] and shown["rpm"] == 60 and shown["budget_period"] == "day"
    assert shown["expires"] == "2099-01-01T00:00:00+00:00" and shown["metadata"] == {"owner": "ana"}
    table = _cli("list", config=config, env=env).stdout
    assert table.splitlines()[0].startswith("NAME") and "cli-key" in table and key not in table

    updated = json.loads(_cli("update", "cli-key", "--rpm", "120", "--format", "json", config=config, env=env).stdout)
    assert updated["rpm"] == 120 and updated["tpm"] == 1000
    reply = httpx.post(
        f"{replicas[0].url}/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json={"model": "echo", "messages": USER},
    )
    assert reply.status_code == 200
    assert _cli("revoke", "cli-key", config=config, env=env).returncode == 0
    time.sleep(CACHE_SECONDS + 0.1)
    assert (
        httpx.post(
            f"{replicas[1].url}/v1/chat/completions", headers={"authorization": f"Bearer {key}"}, json={"model": "echo"}
        ).status_code
        == 401
    )

    again = _cli("create", "--name", "cli-key", config=config, env=env)
    assert again.returncode == 1 and "exists" in again.stderr
    bad = _cli("create", "--name", "x", "--rpm", "0", config=config, env=env)
    assert bad.returncode == 2 and "--rpm" in bad.stderr
    assert _cli("show", "missing", config=config, env=env).returncode == 1


def test_a_burst_over_many_new_keys_is_served(replicas: list[RunningGateway]) -> None:
    """Each request of a key the replica has not seen reads the store: 200 at once over 100 new keys
    must neither exhaust the Redis connections nor read one key twice at the same time."""
    admin = _admin(replicas[0])
    keys = [admin.post("/admin/keys", json={"name": f"burst-{i}", "rpm": 10}).json()["key"] for i in range(100)]

    async def burst() -> list[int]:
        async with httpx.AsyncClient(timeout=30) as client:
            replies = await asyncio.gather(
                *(
                    client.post(
                        f"{replicas[1].url}/v1/chat/completions",
                        headers={"authorization": f"Bearer {key}"},
                        json={"model": "echo", "messages": USER},
                    )
                    for key in keys * 2
                )
            )
        return [reply.status_code for reply in replies]

    assert asyncio.run(burst()) == [200] * 200


def test_absurd_limits_are_refused_by_name(replicas: list[RunningGateway]) -> None:
    admin = _admin(replicas[0])
    for body, param in (
        ({"name": "huge", "rpm": 2**64}, "rpm"),
        ({"name": "huge", "model_limits": [{"model": "m", "tpm": 10**13}]}, "model_limits.0.tpm"),
        ({"name": "huge", "budget": "inf"}, "budget"),
    ):
        reply = admin.post("/admin/keys", json=body)
        assert reply.status_code == 400 and reply.json()["error"]["param"] == param, reply.text
