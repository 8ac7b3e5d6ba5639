"""A real redis-server on a free loopback port, started and stopped by the test suite."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.support.ports import free_port

MISSING = (
    "redis-server is not installed. Install it (Debian: `apt-get install -y redis-server`) "
    "or run the tests with `make test`, which installs it."
)


class RedisServer:
    """`persistent`: an append-only file, synced on every write, so a stop and a start keep the data.
    `cluster`: a Redis Cluster node (its cluster state file in `workdir`)."""

    def __init__(
        self,
        workdir: Path,
        *,
        persistent: bool = False,
        cluster: bool = False,
        password: str | None = None,
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(MISSING)
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.persistent = persistent
        self.cluster = cluster
        self.password = password
        self.tls = tls  # (certificate, key): TLS only, on `port`
        self.bus_port = free_port() if cluster else 0  # given: the default (port + 10000) may pass 65535
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        if self.tls is not None:
            return f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_ca_certs={self.tls[0]}"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.binary,
                *(
                    [
                        "--port",
                        "0",
                        "--tls-port",
                        str(self.port),
                        "--tls-cert-file",
                        str(self.tls[0]),
                        "--tls-key-file",
                        str(self.tls[1]),
                        "--tls-ca-cert-file",
                        str(self.tls[0]),
                        "--tls-auth-clients",
                        "no",
                    ]
                    if self.tls is not None
                    else ["--port", str(self.port)]
                ),
                *(["--requirepass", self.password] if self.password else []),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes" if self.persistent else "no",
                "--appendfsync",
                "always",
                "--cluster-enabled",
                "yes" if self.cluster else "no",
                "--cluster-config-file",
                f"nodes-{self.port}.conf",
                *(["--cluster-port", str(self.bus_port)] if self.cluster else []),
                "--dir",
                str(self.workdir),
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._answers():
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode} on port {self.port}")
            time.sleep(0.02)
        raise RuntimeError("redis-server did not start within 10 s")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def _answers(self) -> bool:
        if self.tls is not None or self.password:
            return self.proc is not None and self.proc.poll() is None and _listening(self.port)
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class RedisCluster:
    """Three masters on loopback, joined with `redis-cli --cluster create`, slots spread over them."""

    def __init__(self, workdir: Path, *, persistent: bool = False) -> None:
        self.nodes = []
        for i in range(3):
            (workdir / f"node{i}").mkdir(parents=True, exist_ok=True)
            self.nodes.append(RedisServer(workdir / f"node{i}", persistent=persistent, cluster=True))
        self._created = False

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        if self._created:  # restarted: the nodes remember their cluster from their state files
            self.wait_ok()
            return
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError(MISSING)
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            timeout=60,
        )
        self._created = True
        self.wait_ok()

    def wait_ok(self, seconds: float = 30) -> None:
        deadline = time.monotonic() + seconds
        while self._state() != "ok":
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Redis Cluster is not ok after {seconds} s")
            time.sleep(0.1)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def flush(self) -> None:
        for node in self.nodes:
            _command(node.port, b"FLUSHALL")

    def _state(self) -> str:
        """Every node's view must be ok (each node answers for its own slots)."""
        states = set()
        for node in self.nodes:
            info = _command(node.port, b"CLUSTER INFO")
            state = next((line.split(":", 1)[1] for line in info.splitlines() if line.startswith("cluster_state:")), "")
            states.add(state.strip())
        return "ok" if states == {"ok"} else "down"


def _command(port: int, command: bytes) -> str:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(command + b"\r\n")
            data = b""
            while True:
                chunk = sock.recv(65536)
                data += chunk
                if not chunk or (data.startswith(b"+") and data.endswith(b"\r\n")) or _complete_bulk(data):
                    break
            return data.decode(errors="replace")
    except OSError:
        return ""


def _complete_bulk(data: bytes) -> bool:
    if not data.startswith(b"$") or b"\r\n" not in data:
        return data.startswith((b"-", b":")) and data.endswith(b"\r\n")
    header, _, rest = data.partition(b"\r\n")
    return len(rest) >= int(header[1:]) + 2


def request_log(client: Any, name: str) -> list[dict[str, Any]]:
    """The request log of key `name` as the README documents it (the stream `gw:{<name>}:log`, an
    entry per part of a batch: `n` requests, their JSON in `entries`, a line each; or, as earlier
    versions wrote it, one request's in `entry`), oldest first."""
    records: list[dict[str, Any]] = []
    for _, fields in client.xrange(f"gw:{{{name}}}:log"):
        fields = {_text(k): _text(v) for k, v in fields.items()}
        if "entry" in fields:
            records.append(json.loads(fields["entry"]))
            continue
        lines = fields["entries"].split("\n")
        assert lines.pop() == "" and int(fields["n"]) == len(lines) > 0  # each ended by a line end
        records += [json.loads(line) for line in lines]
    return records


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
