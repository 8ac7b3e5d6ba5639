"""A real Prometheus server (Debian's `prometheus` package) on a free loopback port, started by a test."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx

from tests.support.ports import free_port, wait_ready

MISSING = (
    "prometheus is not installed. Install it (Debian: `apt-get install -y prometheus`) "
    "or run the tests with `python3 dev.py test`, which installs it."
)


class PrometheusServer:
    def __init__(self, workdir: Path, config: str) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError(MISSING)
        self.port = free_port()
        self.workdir = workdir
        (workdir / "prometheus.yml").write_text(config)
        self._cmd = [
            binary,
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> PrometheusServer:
        log = open(self.workdir / "prometheus.log", "wb")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(self._cmd, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_ready(f"{self.url}/-/ready", self.proc, "prometheus", (self.workdir / "prometheus.log").read_text)
        return self

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector; raises with Prometheus's message when the query is bad."""
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = response.json()
        if body.get("status") != "success":
            raise AssertionError(f"{expr}: {body.get('errorType')}: {body.get('error')}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(30)
            self.proc = None
