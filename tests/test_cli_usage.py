"""`gateway usage` without Redis: the running gateway's own usage, through its admin API."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx

from gateway.config import parse_config
from tests.conftest import CLIENT_KEY, RunningGateway, config_yaml
from tests.support.gateway_cli import USER, gateway_cli

ADMIN = "admin-token-for-cli"


def test_usage_of_a_gateway_without_redis(
    tmp_path: Path, fake_url: str, start_gateway: Callable[..., RunningGateway]
) -> None:
    text = config_yaml(fake_url)
    config = tmp_path / "gateway.yaml"
    config.write_text(text)
    gateway = start_gateway(parse_config(text), admin_token=ADMIN)
    for _ in range(2):
        reply = httpx.post(
            f"{gateway.url}/v1/chat/completions",
            headers={"authorization": f"Bearer {CLIENT_KEY}"},
            json={"model": "echo", "messages": USER},
        )
        assert reply.status_code == 200

    asked = gateway_cli("usage", "--config", str(config))
    assert asked.returncode == 2 and "--url" in asked.stderr
    env = {"GATEWAY_ADMIN_TOKEN": ADMIN}
    shown = gateway_cli("usage", "--config", str(config), "--url", gateway.url, "--format", "json", env=env)
    assert shown.returncode == 0, shown.stderr
    rows = json.loads(shown.stdout)
    assert [(r["key"], r["model"], r["requests"]) for r in rows] == [("tester", "echo", 2)]
    csv = gateway_cli("usage", "--config", str(config), "--url", gateway.url, "--format", "csv", env=env).stdout
    assert csv.splitlines()[0].startswith("day,key,team,model,requests,prompt_tokens")
    table = gateway_cli("usage", "--config", str(config), "--url", gateway.url, "--key", "nobody", env=env)
    assert table.returncode == 0 and table.stdout.startswith("DAY") and "(no usage)" in table.stderr
    wrong = gateway_cli("usage", "--config", str(config), "--url", gateway.url, env={"GATEWAY_ADMIN_TOKEN": "no"})
    assert wrong.returncode == 1 and "401" in wrong.stderr
    bad = gateway_cli("usage", "--config", str(config), "--since", "11/23/2026")
    assert bad.returncode == 2 and "--since" in bad.stderr
