"""Upstream alone versus through the gateway (one worker), measured in one run on this machine.

An nginx upstream answers instantly with a fixed chat completion (buffered) or a fixed event stream
(streamed). wrk measures requests/s at 32 connections and p50/p99 latency at one connection.
Run with `python3 dev.py bench` (installs wrk and nginx when missing). Not part of CI.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-bench"

COMPLETION = {
    "id": "chatcmpl-bench0001",
    "object": "chat.completion",
    "created": 1763700000,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello! How can I help?", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16},
}


def _stream_body() -> str:
    def chunk(delta: dict[str, object], finish: str | None, usage: object = None) -> str:
        obj = {
            "id": "chatcmpl-bench0001",
            "object": "chat.completion.chunk",
            "created": 1763700000,
            "model": "gpt-4o-mini",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        if usage is not None:
            obj["choices"], obj["usage"] = [], usage
        return "data: " + json.dumps(obj, separators=(",", ":")) + "\n\n"

    words = ["Hello", "!", " How", " can", " I", " help", "?"]
    body = chunk({"role": "assistant", "content": ""}, None)
    body += "".join(chunk({"content": w}, None) for w in words)
    body += chunk({}, "stop") + chunk({}, None, {"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16})
    return body + "data: [DONE]\n\n"


def _nginx_quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on port {port}")


@dataclass
class Result:
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0


def _wrk(url: str, body: dict[str, object], connections: int, seconds: int, workdir: Path) -> Result:
    script = workdir / f"post{connections}.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(json.dumps(body))}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {KEY}"\n'
    )
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        raise SystemExit(f"non-2xx answers from {url}:\n{out}")
    result = Result(rps=float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)))  # type: ignore[union-attr]
    for pct, attr in (("50", "p50_ms"), ("99", "p99_ms")):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
        if m:
            scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
            setattr(result, attr, float(m.group(1)) * scale)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10, help="length of each wrk run")
    args = parser.parse_args()
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (python3 dev.py bench installs it)")

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        up_port, gw_port = _free_port(), _free_port()
        (work / "nginx.conf").write_text(f"""
worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx.err warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {work}/body; proxy_temp_path {work}/proxy; fastcgi_temp_path {work}/fcgi;
  uwsgi_temp_path {work}/uwsgi; scgi_temp_path {work}/scgi;
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{up_port};
    location = /buffered/v1/chat/completions {{
      default_type application/json;
      return 200 {_nginx_quote(json.dumps(COMPLETION, separators=(",", ":")))};
    }}
    location = /streamed/v1/chat/completions {{
      default_type "text/event-stream; charset=utf-8";
      return 200 {_nginx_quote(_stream_body())};
    }}
  }}
}}
""")
        (work / "gateway.yaml").write_text(f"""
keys: [{{name: bench, key: {KEY}}}]
upstreams:
  - {{name: buffered, dialect: openai, base_url: "http://127.0.0.1:{up_port}/buffered/v1", api_key: sk-up}}
  - {{name: streamed, dialect: openai, base_url: "http://127.0.0.1:{up_port}/streamed/v1", api_key: sk-up}}
models:
  - {{name: bench-buffered, upstream: buffered}}
  - {{name: bench-streamed, upstream: streamed}}
""")
        nginx = subprocess.Popen(["nginx", "-c", str(work / "nginx.conf"), "-p", str(work)])
        env = {**os.environ, "GATEWAY_LOG_LEVEL": "warning"}
        gateway = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "gateway"),
                "serve",
                "--config",
                str(work / "gateway.yaml"),
                "--port",
                str(gw_port),
                "--workers",
                "1",
            ],
            env=env,
        )
        try:
            _wait_port(up_port)
            _wait_port(gw_port)
            rows = []
            for mode in ("buffered", "streamed"):
                body = {
                    "model": f"bench-{mode}",
                    "messages": [{"role": "user", "content": "Hi"}],
                    "stream": mode == "streamed",
                }
                upstream_url = f"http://127.0.0.1:{up_port}/{mode}/v1/chat/completions"
                gateway_url = f"http://127.0.0.1:{gw_port}/v1/chat/completions"
                _wrk(gateway_url, body, 32, 2, work)  # warm-up
                up32 = _wrk(upstream_url, body, 32, args.seconds, work)
                gw32 = _wrk(gateway_url, body, 32, args.seconds, work)
                up1 = _wrk(upstream_url, body, 1, args.seconds, work)
                gw1 = _wrk(gateway_url, body, 1, args.seconds, work)
                rows.append((mode, up32, gw32, up1, gw1))
        finally:
            gateway.terminate()
            nginx.terminate()
            gateway.wait(10)
            nginx.wait(10)

    print(f"\nnginx instant upstream; gateway: 1 worker; wrk -t1, {args.seconds}s per run; {os.cpu_count()} cores\n")
    print(
        "| mode | upstream alone req/s (c=32) | via gateway req/s (c=32) | ratio | "
        "upstream p50 / p99 ms (c=1) | via gateway p50 / p99 ms (c=1) | p50 added ms |"
    )
    print("|---|---|---|---|---|---|---|")
    for mode, up32, gw32, up1, gw1 in rows:
        print(
            f"| {mode} | {up32.rps:,.0f} | {gw32.rps:,.0f} | {gw32.rps / up32.rps:.2f} | "
            f"{up1.p50_ms:.3f} / {up1.p99_ms:.3f} | {gw1.p50_ms:.3f} / {gw1.p99_ms:.3f} | "
            f"{gw1.p50_ms - up1.p50_ms:.3f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
