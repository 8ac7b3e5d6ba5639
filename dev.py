#!/usr/bin/env python3
"""The project's single entry point; needs only Python 3.11+.

python3 dev.py run [gateway serve args...]   set up .venv and run the gateway with config/gateway.yaml
python3 dev.py test [pytest args...]         set up .venv (+ redis-server, prometheus) and run ruff, mypy and the tests
python3 dev.py bench [bench args...]         set up .venv (+ wrk, nginx) and run bench/run.py
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / "bin"


def main() -> int:
    if sys.version_info < (3, 11):  # noqa: UP036 - this script must explain, not crash, on old Pythons
        return _fail(f"Python 3.11 or newer is needed; this is {sys.version.split()[0]}")
    if len(sys.argv) < 2 or sys.argv[1] not in ("run", "test", "bench"):
        print(__doc__)
        return 2
    task, args = sys.argv[1], sys.argv[2:]
    if task == "run":
        _venv("")
        config = [] if "--config" in args else ["--config", str(ROOT / "config" / "gateway.yaml")]
        os.execv(BIN / "gateway", [str(BIN / "gateway"), "serve", *config, *args])
    if task == "test":
        _venv("[test]")
        # A real Prometheus scrapes a live gateway in tests/observability; promtool checks deploy/prometheus.
        # redis-cli makes the test suite's Redis Cluster; openssl the certificate of its TLS Redis.
        _need(
            {
                "redis-server": "redis-server",
                "redis-cli": "redis-tools",
                "openssl": "openssl",
                "prometheus": "prometheus",
                "promtool": "prometheus",
            }
        )
        spec = ROOT.parent / "shared" / "openai-openapi" / "openapi.normalized.json"
        if not spec.exists():
            return _fail(f"the OpenAI spec the tests validate against is missing: {spec}")
        _run([str(BIN / "ruff"), "check", "gateway", "tests", "bench", "dev.py"])
        _run([str(BIN / "mypy"), "gateway"])
        code = subprocess.call([str(BIN / "python"), "-m", "pytest", *args], cwd=ROOT)
        if code == 5:
            return _fail("pytest collected no tests")
        return code
    _venv("[test]")
    _need({"wrk": "wrk", "nginx": "nginx-light"})
    return subprocess.call([str(BIN / "python"), str(ROOT / "bench" / "run.py"), *args], cwd=ROOT)


def _venv(extra: str) -> None:
    """Create .venv and install the project; skipped when pyproject.toml has not changed since."""
    if not (BIN / "python").exists():
        _run([sys.executable, "-m", "venv", str(VENV)])
    stamp = VENV / f".installed{extra or '[run]'}"
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest:
        return
    pip = [str(BIN / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    _run([*pip, "install", "--upgrade", "pip"])
    _run([*pip, "install", "-e", f".{extra}"])
    stamp.write_text(digest)


def _need(packages: dict[str, str]) -> None:
    """Install the Debian packages (binary -> package) whose binaries are missing, in one apt-get run,
    when this user can."""
    missing = {binary: package for binary, package in packages.items() if not shutil.which(binary)}
    if not missing:
        return
    names = sorted(set(missing.values()))
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        raise SystemExit(
            f"dev.py: {', '.join(f'`{b}`' for b in missing)} missing and cannot be installed here (needs root "
            f"and apt-get). Install the Debian package(s) {', '.join(names)} and run again."
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(f"dev.py: installing {', '.join(names)} with apt-get", flush=True)
    _run([apt, "update", "-qq"], env=env)
    _run([apt, "install", "-y", "-qq", "--no-install-recommends", *names], env=env)
    for binary, package in missing.items():
        if not shutil.which(binary):
            raise SystemExit(f"dev.py: installed {package} but `{binary}` is still not on PATH")


def _run(cmd: list[str], env: dict[str, str] | None = None) -> None:
    result = subprocess.run(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise SystemExit(f"dev.py: `{' '.join(cmd)}` failed with exit code {result.returncode}")


def _fail(message: str) -> int:
    print(f"dev.py: {message}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
