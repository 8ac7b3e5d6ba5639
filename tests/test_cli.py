"""The `gateway` console script, run as a real process."""

from __future__ import annotations

import asyncio
import json
import os
import re
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
from tests.support.process import GatewayProcess, cleanly_stopped
from tests.support.spec import Checker, check_exchange, sse_payloads

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
    assert "upstreams[0].dialect" in result.stderr and result.stdout == ""


def test_no_config_is_a_clear_error() -> None:
    result = _run("check-config")
    assert result.returncode == 2 and "--config" in result.stderr


@contextmanager
def _serving(*extra: str, workdir: Path) -> Iterator[GatewayProcess]:
    """`gateway serve` with the shipped config as a real process."""
    gateway = GatewayProcess(ROOT / "config" / "gateway.yaml", *extra, workdir=workdir)
    with gateway:
        yield gateway
    output = gateway.output()
    assert cleanly_stopped(gateway.stop()), output
    assert "Application shutdown complete" in output, output
    assert "sk-demo" not in output  # secrets never reach the log


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    with _serving(workdir=tmp_path) as gateway:
        yield gateway.url


def test_serve_with_several_workers(checker: Checker, tmp_path: Path) -> None:
    with _serving("--workers", "2", workdir=tmp_path) as gateway:
        client = sdk(gateway.url, checker, key="sk-demo")
        for _ in range(4):  # spread over both workers
            reply = client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "hi"}])
            assert reply.choices[0].message.content == "hi"
        chunks = list(
            client.chat.completions.create(model="echo", stream=True, messages=[{"role": "user", "content": "hi"}])
        )
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == "hi"
        workers: set[str] = set()
        deadline = time.monotonic() + 30  # the second worker may still be starting on a busy machine
        while len(workers) < 2 and time.monotonic() < deadline:
            workers = set(re.findall(r"Started server process \[(\d+)\]", gateway.output()))
            time.sleep(0.1)
        assert len(workers) == 2, gateway.output()
        # Both workers write prometheus-client's multiprocess files in one directory `serve` made.
        environ = Path(f"/proc/{workers.pop()}/environ").read_bytes().split(b"\0")
        [metrics_dir] = [
            Path(v.split(b"=", 1)[1].decode()) for v in environ if v.startswith(b"PROMETHEUS_MULTIPROC_DIR=")
        ]
        assert metrics_dir.is_dir() and any(metrics_dir.iterdir())
    assert not metrics_dir.exists()  # removed at exit


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


def test_sigterm_mid_stream_past_the_shutdown_timeout_ends_the_stream_with_an_error(tmp_path: Path) -> None:
    config = tmp_path / "slow.yaml"
    config.write_text(
        "keys: [{name: demo, key: sk-demo}]\n"
        "upstreams: [{name: local, dialect: echo, echo_delay_ms: 20}]\n"
        "models: [{name: echo, upstream: local}]\n"
    )
    gateway = GatewayProcess(config, workdir=tmp_path, env={"GATEWAY_SHUTDOWN_TIMEOUT": "1"}).start()
    body = {"model": "echo", "stream": True, "messages": [{"role": "user", "content": "word " * 2000}]}
    received = b""
    signalled = False
    with httpx.stream(
        "POST", f"{gateway.url}/v1/chat/completions", json=body, headers={"authorization": "Bearer sk-demo"}
    ) as response:
        for chunk in response.iter_raw():  # the stream would take 40 s; the shutdown timeout is 1 s
            received += chunk
            if not signalled and len(received) > 2000:
                gateway.signal(signal.SIGTERM)
                signalled = True
    assert cleanly_stopped(gateway.stop()), gateway.output()
    payloads = sse_payloads(received)
    assert payloads[-1] == b"[DONE]" and json.loads(payloads[-2])["error"]["code"] == "shutting_down"
    output = gateway.output()
    access = [json.loads(line) for line in output.splitlines() if '"gateway.access"' in line]
    assert [(line["status"], line["error_code"]) for line in access] == [(200, "shutting_down")]
    assert "Exception in ASGI application" not in output


def test_sigterm_drains_first_then_exits_with_status_0(tmp_path: Path, checker: Checker) -> None:
    gateway = GatewayProcess(ROOT / "config" / "gateway.yaml", workdir=tmp_path, env={"GATEWAY_DRAIN_SECONDS": "2"})
    with gateway:
        client = sdk(gateway.url, checker, key="sk-demo")
        gateway.signal(signal.SIGTERM)
        time.sleep(0.3)
        ready = httpx.get(f"{gateway.url}/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "draining"
        # Still serving while load balancers take the replica out.
        reply = client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "still here"}])
        assert reply.choices[0].message.content == "still here"
        started = time.monotonic()
        assert gateway.proc is not None and gateway.proc.wait(30) == 0
        assert time.monotonic() - started > 1  # it served out the drain before stopping
    with pytest.raises(httpx.ConnectError):  # and accepts nothing afterwards
        httpx.get(f"{gateway.url}/healthz")
    assert "draining" in gateway.output() and "Application shutdown complete" in gateway.output()


async def test_sigterm_with_200_streams_in_flight_lets_all_of_them_finish(tmp_path: Path) -> None:
    config = tmp_path / "streams.yaml"
    config.write_text(
        "keys: [{name: demo, key: sk-demo}]\n"
        "upstreams: [{name: local, dialect: echo, echo_delay_ms: 5}]\n"
        "models: [{name: echo, upstream: local}]\n"
    )
    gateway = GatewayProcess(config, "--workers", "2", workdir=tmp_path, env={"GATEWAY_DRAIN_SECONDS": "0.5"})
    gateway.start()
    body = {"model": "echo", "stream": True, "messages": [{"role": "user", "content": "word " * 200}]}
    limits = httpx.Limits(max_connections=250, max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits, timeout=60) as http:

        async def one() -> bytes:
            headers = {"authorization": "Bearer sk-demo"}
            async with http.stream("POST", f"{gateway.url}/v1/chat/completions", json=body, headers=headers) as r:
                return b"".join([chunk async for chunk in r.aiter_raw()])

        streams = [asyncio.create_task(one()) for _ in range(200)]
        await asyncio.sleep(0.5)  # all of them open (each takes about a second)
        gateway.signal(signal.SIGTERM)
        bodies = await asyncio.gather(*streams)
    assert all(body.endswith(b"data: [DONE]\n\n") and b'"error"' not in body for body in bodies)
    assert await asyncio.to_thread(gateway.stop) == 0
    with pytest.raises(httpx.ConnectError):
        await asyncio.to_thread(httpx.get, f"{gateway.url}/healthz")
