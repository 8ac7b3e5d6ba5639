"""Redis with a password and over TLS (`rediss://`), from the URL alone; the password never shows."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.config import parse_config
from tests.conftest import RunningGateway, config_yaml
from tests.support.gateway_cli import gateway_cli, make_key, spread, usage_json
from tests.support.redis_server import RedisServer

PASSWORD = "s3cret-redis-password"


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    workdir = tmp_path_factory.mktemp("redis-tls")
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    server = RedisServer(workdir, password=PASSWORD, tls=(cert, key))
    server.start()
    yield server
    server.stop()


def test_limits_and_usage_over_tls_with_a_password(
    tls_redis: RedisServer, fake_url: str, tmp_path: Path, start_gateway: Callable[..., RunningGateway]
) -> None:
    assert tls_redis.url.startswith(f"rediss://:{PASSWORD}@")
    text = config_yaml(fake_url, tls_redis.url)
    config = tmp_path / "gateway.yaml"
    config.write_text(text)
    key = make_key(config, "--name", "tls", "--rpm", "2")
    gateway = start_gateway(parse_config(text), ledger_flush_interval=0.05)
    replies = asyncio.run(spread([gateway.url], key, 3))
    assert sorted(r.status_code for r in replies) == [200, 200, 429]
    asyncio.run(asyncio.sleep(0.3))
    assert [row["requests"] for row in usage_json(config, "--key", "tls")] == [2]


def test_a_wrong_password_is_an_error_that_does_not_show_it(
    tls_redis: RedisServer, fake_url: str, tmp_path: Path
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(config_yaml(fake_url, tls_redis.url.replace(PASSWORD, "wrong-password-xyz")))
    shown = gateway_cli("usage", "--config", str(config))
    assert shown.returncode == 1 and "cannot read usage" in shown.stderr
    made = gateway_cli("keys", "create", "--config", str(config), "--name", "x")
    assert made.returncode == 1
    for output in (shown.stderr, shown.stdout, made.stderr, made.stdout):
        assert "wrong-password-xyz" not in output and PASSWORD not in output
