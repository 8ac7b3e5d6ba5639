"""The `gateway` console script, run as a real process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.ports import free_port
from tests.support.spec import check_exchange

ROOT = Path(__file__).resolve().parents[1]
GATEWAY = [sys.executable, "-m", "gateway"]


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")} | (env or {})
    return subprocess.run([*GATEWAY, *args], capture_output=True, text=True, timeout=60, env=full_env, cwd=ROOT)


def test_check_config_prints_routing_table() -> None:
    result = _run("check-config", "--config", "config/gateway.yaml")
    assert result.returncode == 0, result.stderr
    assert "echo" in result.stdout and "config OK" in result.stdout
    assert "disabled: api_key is empty" in result.stdout


def test_check_config_reads_gateway_config_env() -> None:
    result = _run("check-config", env={"GATEWAY_CONFIG": "config/gateway.yaml"})
    assert result.returncode == 0, result.stderr


def test_check_config_names_the_bad_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "config" / "gateway.yaml").read_text().replace("dialect: echo", "dialect: ekko"))
    result = _run("check-config", "--config", str(bad))
    assert result.returncode == 2
    assert "upstreams[0].dialect" in result.stderr and "ekko" not in result.stdout


def test_no_config_is_a_clear_error() -> None:
    result = _run("check-config")
    assert result.returncode == 2 and "--config" in result.stderr


@pytest.fixture
def served() -> object:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    proc = subprocess.Popen(
        [*GATEWAY, "serve", "--config", "config/gateway.yaml", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    output = proc.communicate(timeout=15)[0].decode()
    assert "sk-demo" not in output  # secrets never reach the log


def test_serve_with_shipped_config_answers_the_sdk(served: str) -> None:
    client = openai.OpenAI(base_url=f"{served}/v1", api_key="sk-demo", max_retries=0)
    reply = client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "ping pong"}])
    assert reply.choices[0].message.content == "ping pong"
    chunks = list(
        client.chat.completions.create(model="echo", stream=True, messages=[{"role": "user", "content": "ping pong"}])
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "ping pong"
    assert [m.id for m in client.models.list()] == ["echo"]
    raw = httpx.post(
        f"{served}/v1/chat/completions",
        headers={"authorization": "Bearer sk-demo"},
        json={"model": "echo", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert check_exchange("/v1/chat/completions", 200, raw.headers["content-type"], raw.content) == 3
