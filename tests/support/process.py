"""`gateway serve` as a real process on a free loopback port, its output kept for the test to read."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.support.ports import free_port, wait_ready

ROOT = Path(__file__).resolve().parents[2]


class GatewayProcess:
    """Started by `start()`, stopped by `stop()` (SIGTERM, then the exit status is checked)."""

    def __init__(self, config: Path | str, *args: str, env: dict[str, str] | None = None, workdir: Path) -> None:
        self.port = free_port()
        self.output_path = workdir / f"gateway-{self.port}.out"
        base = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "PROMETHEUS_MULTIPROC"))}
        # A short drain unless the test is about the drain: every test stops its gateway.
        self._env = {
            **base,
            "GATEWAY_DRAIN_SECONDS": "0.2",
            "GATEWAY_LEDGER_SPOOL_DIR": str(workdir / "spool"),
            **(env or {}),
        }
        self._cmd = [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--port", str(self.port), *args]
        self.proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None
        self._signalled = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, seconds: float = 30) -> GatewayProcess:
        with open(self.output_path, "wb") as out:
            self.proc = subprocess.Popen(self._cmd, cwd=ROOT, env=self._env, stdout=out, stderr=subprocess.STDOUT)
        wait_ready(f"{self.url}/readyz", self.proc, "gateway", self.output, seconds)
        return self

    def output(self) -> str:
        return self.output_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)
        self._signalled = True

    def stop(self) -> int:
        """SIGTERM (unless the test sent one already: a second one cuts the drain short) and wait."""
        if self.proc is not None and self.returncode is None:
            if not self._signalled:
                self.proc.send_signal(signal.SIGTERM)
            self.returncode = self.proc.wait(60)
        return self.returncode if self.returncode is not None else 0

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def cleanly_stopped(returncode: int) -> bool:
    return returncode == 0
