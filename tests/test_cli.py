"""The `gateway` console script, run as a real process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.conftest import sdk
from tests.support.ports import free_port
from tests.support.spec import Checker, check_exchange

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


@contextmanager
def _serving(*extra: str) -> Iterator[str]:
    """`gateway serve` with the shipped config as a real process; yields its URL."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    proc = subprocess.Popen(
        [*GATEWAY, "serve", "--config", "config/gateway.yaml", "--port", str(port), *extra],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0].decode()
    # uvicorn re-raises SIGTERM once it has shut down cleanly, so -SIGTERM is a clean exit too.
    assert proc.returncode in (0, -signal.SIGTERM), output
    assert "Application shutdown complete" in output, output
    assert "sk-demo" not in output  # secrets never reach the log


@pytest.fixture
def served() -> Iterator[str]:
    with _serving() as url:
        yield url


def test_serve_with_several_workers(checker: Checker) -> None:
    with _serving("--workers", "2") as url:
        client = sdk(url, checker, key="sk-demo")
        for _ in range(4):  # spread over both workers
            reply = client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "hi"}])
            assert reply.choices[0].message.content == "hi"
        chunks = list(
            client.chat.completions.create(model="echo", stream=True, messages=[{"role": "user", "content": "hi"}])
        )
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == "hi"


def test_serve_with_shipped_config_answers_the_sdk(served: str, checker: Checker) -> None:
    client = sdk(served, checker, key="sk-demo")
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
