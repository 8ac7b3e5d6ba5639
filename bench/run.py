"""Upstream alone versus through the gateway (one worker), measured in one run on this machine.

An nginx upstream answers instantly with a fixed chat completion (buffered) or a fixed event stream
(streamed). wrk measures requests/s at 32 connections and p50/p99 latency at one connection.
Then the cost of translation: a long stream (LONG content events) relayed from an OpenAI upstream
(pass-through) and from an Anthropic upstream (translated event by event), in chunks/s per worker.
Run with `python3 dev.py bench` (installs wrk and nginx when missing). Not part of CI.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
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


LONG = 100  # content events in the long streams


def _long_openai_stream() -> str:
    def event(obj: dict[str, object]) -> str:
        return "data: " + json.dumps(obj, separators=(",", ":")) + "\n\n"

    head = {"id": "chatcmpl-long", "object": "chat.completion.chunk", "created": 1763700000, "model": "m"}

    def choice(delta: dict[str, object], finish: str | None = None) -> dict[str, object]:
        return {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    body = event(choice({"role": "assistant", "content": ""}))
    body += "".join(event(choice({"content": f" word{i}"})) for i in range(LONG))
    body += event(choice({}, "stop"))
    body += event(
        {**head, "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": LONG, "total_tokens": 9 + LONG}}
    )
    return body + "data: [DONE]\n\n"


def _long_anthropic_stream() -> str:
    def event(name: str, obj: dict[str, object]) -> str:
        return f"event: {name}\ndata: " + json.dumps({"type": name, **obj}, separators=(",", ":")) + "\n\n"

    message = {
        "id": "msg_long",
        "type": "message",
        "role": "assistant",
        "model": "claude",
        "content": [],
        "stop_reason": None,
        "usage": {"input_tokens": 9, "cache_read_input_tokens": 0, "output_tokens": 1},
    }
    body = event("message_start", {"message": message})
    body += event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
    body += "".join(
        event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": f" word{i}"}})
        for i in range(LONG)
    )
    body += event("content_block_stop", {"index": 0})
    body += event("message_delta", {"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": LONG}})
    return body + event("message_stop", {})


def _nginx_quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def nginx_conf(work: Path, port: int, locations: str, top: str = "", connections: int = 1024) -> str:
    """An nginx (the upstream, or the suite's bare relay): one worker, no logs, temporary files in
    `work`; the instant buffered completion at /buffered/v1/chat/completions, and `locations` (nginx
    `location` blocks) beside it."""
    return f"""
{top}
worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx.err warn;
worker_rlimit_nofile {connections * 2};
events {{ worker_connections {connections}; }}
http {{
  access_log off;
  client_body_temp_path {work}/body; proxy_temp_path {work}/proxy; fastcgi_temp_path {work}/fcgi;
  uwsgi_temp_path {work}/uwsgi; scgi_temp_path {work}/scgi;
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location = /buffered/v1/chat/completions {{
      default_type application/json;
      return 200 {_nginx_quote(json.dumps(COMPLETION, separators=(",", ":")))};
    }}
{locations}
  }}
}}
"""


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
    requests: int = 0
    p50_ms: float = 0.0
    p99_ms: float = 0.0


def _on_cpu(cpu: int) -> list[str]:
    """Pin a process to one CPU (the gateway on one, wrk and nginx on the other), when there are two."""
    if shutil.which("taskset") is None or (os.cpu_count() or 1) < 2:
        return []
    return ["taskset", "-c", str(cpu)]


def _wrk(url: str, body: dict[str, object], connections: int, seconds: int, workdir: Path, key: str = KEY) -> Result:
    script = workdir / f"post{connections}.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(json.dumps(body))}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {key}"\n'
    )
    out = subprocess.run(
        [*_on_cpu(1), "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        raise SystemExit(f"non-2xx answers from {url}:\n{out}")
    result = Result(
        rps=float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        requests=int(re.search(r"(\d+) requests in", out).group(1)),  # type: ignore[union-attr]
    )
    for pct, attr in (("50", "p50_ms"), ("99", "p99_ms")):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
        if m:
            scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
            setattr(result, attr, float(m.group(1)) * scale)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10, help="length of each wrk run")
    parser.add_argument(
        "--part",
        choices=("all", "relay", "observability", "limits"),
        default="all",
        help="which measurements to run",
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="alternating rounds for the observability and limits cost"
    )
    args = parser.parse_args()
    for tool in ("wrk", "nginx", *(("redis-server",) if args.part in ("all", "limits") else ())):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (python3 dev.py bench installs it)")

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        up_port, gw_port = _free_port(), _free_port()
        work.chmod(0o755)  # nginx's workers run unprivileged and must read the stream files
        for name, text in (
            ("long_openai.sse", _long_openai_stream()),
            ("long_anthropic.sse", _long_anthropic_stream()),
        ):
            (work / name).write_text(text)
            (work / name).chmod(0o644)
        locations = f"""
    # Too long for `return` (nginx caps a parameter at 4 KiB): files, which nginx serves to a POST
    # only through this internal redirect.
    location = /long/v1/chat/completions {{
      default_type "text/event-stream; charset=utf-8";
      error_page 405 =200 $uri;
      alias {work}/long_openai.sse;
    }}
    location = /long/v1/messages {{
      default_type "text/event-stream; charset=utf-8";
      error_page 405 =200 $uri;
      alias {work}/long_anthropic.sse;
    }}
    location = /streamed/v1/chat/completions {{
      default_type "text/event-stream; charset=utf-8";
      return 200 {_nginx_quote(_stream_body())};
    }}
"""
        (work / "nginx.conf").write_text(nginx_conf(work, up_port, locations))
        (work / "gateway.yaml").write_text(f"""
keys: [{{name: bench, key: {KEY}}}]
upstreams:
  - {{name: buffered, dialect: openai, base_url: "http://127.0.0.1:{up_port}/buffered/v1", api_key: sk-up}}
  - {{name: streamed, dialect: openai, base_url: "http://127.0.0.1:{up_port}/streamed/v1", api_key: sk-up}}
  - {{name: long-openai, dialect: openai, base_url: "http://127.0.0.1:{up_port}/long/v1", api_key: sk-up}}
  - {{name: long-anthropic, dialect: anthropic, base_url: "http://127.0.0.1:{up_port}/long/v1", api_key: sk-up}}
models:
  - {{name: bench-buffered, upstream: buffered}}
  - {{name: bench-streamed, upstream: streamed}}
  - {{name: bench-long-openai, upstream: long-openai}}
  - {{name: bench-long-anthropic, upstream: long-anthropic}}
""")
        nginx = subprocess.Popen([*_on_cpu(1), "nginx", "-c", str(work / "nginx.conf"), "-p", str(work)])
        rows: list[tuple[str, Result, Result, Result, Result]] = []
        translation: list[tuple[str, Result]] = []
        observability: list[tuple[str, Result]] = []
        limits: list[tuple[str, Result]] = []
        try:
            _wait_port(up_port)
            if args.part in ("all", "relay"):
                with _gateway(work, gw_port, {}):
                    rows, translation = _relay_runs(work, up_port, gw_port, args.seconds)
            if args.part in ("all", "observability"):
                observability = _observability_runs(work, gw_port, args.seconds, args.rounds)
            if args.part in ("all", "limits"):
                limits = _limits_runs(work, up_port, gw_port, args.seconds, args.rounds)
        finally:
            nginx.terminate()
            nginx.wait(10)

    print(f"\nnginx instant upstream; gateway: 1 worker; wrk -t1, {args.seconds}s per run; {os.cpu_count()} cores")
    if rows:
        _print_relay(rows, translation)
    if observability:
        _print_observability(observability, args.rounds)
    if limits:
        _print_limits(limits, args.rounds)
    return 0


def gateway_cmd(work: Path, port: int) -> list[str]:
    """One gateway worker on CPU 0, with the config `work/gateway.yaml`."""
    config = str(work / "gateway.yaml")
    return [*_on_cpu(0), str(Path(sys.executable).parent / "gateway"), "serve", "--config", config,
            "--port", str(port), "--workers", "1"]  # fmt: skip


@contextmanager
def _gateway(work: Path, port: int, env: dict[str, str], log: Path | None = None) -> Iterator[None]:
    """One gateway worker with extra environment; its standard output (the access log) goes to `log`."""
    out = open(log, "wb") if log is not None else None  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        gateway_cmd(work, port),
        env={**os.environ, "GATEWAY_LOG_LEVEL": "warning", **env},
        stdout=out if out is not None else subprocess.DEVNULL,
    )
    try:
        _wait_port(port)
        yield
    finally:
        proc.terminate()
        proc.wait(10)
        if out is not None:
            out.close()


def _relay_runs(
    work: Path, up_port: int, gw_port: int, seconds: int
) -> tuple[list[tuple[str, Result, Result, Result, Result]], list[tuple[str, Result]]]:
    rows = []
    for mode in ("buffered", "streamed"):
        body = {"model": f"bench-{mode}", "messages": [{"role": "user", "content": "Hi"}], "stream": mode == "streamed"}
        upstream_url = f"http://127.0.0.1:{up_port}/{mode}/v1/chat/completions"
        gateway_url = f"http://127.0.0.1:{gw_port}/v1/chat/completions"
        _wrk(gateway_url, body, 32, 2, work)  # warm-up
        up32 = _wrk(upstream_url, body, 32, seconds, work)
        gw32 = _wrk(gateway_url, body, 32, seconds, work)
        up1 = _wrk(upstream_url, body, 1, seconds, work)
        gw1 = _wrk(gateway_url, body, 1, seconds, work)
        rows.append((mode, up32, gw32, up1, gw1))
    translation = []
    for source in ("openai", "anthropic"):
        body = {"model": f"bench-long-{source}", "messages": [{"role": "user", "content": "Hi"}], "stream": True}
        url = f"http://127.0.0.1:{gw_port}/v1/chat/completions"
        _wrk(url, body, 32, 2, work)  # warm-up
        translation.append((source, _wrk(url, body, 32, seconds, work)))
    return rows, translation


OBSERVABILITY = {
    "off": {"GATEWAY_METRICS": "false", "GATEWAY_ACCESS_LOG": "false"},
    "on": {"GATEWAY_METRICS": "true", "GATEWAY_ACCESS_LOG": "true", "GATEWAY_LOG_FORMAT": "json"},
}


def _observability_runs(work: Path, gw_port: int, seconds: int, rounds: int) -> list[tuple[str, Result]]:
    """Buffered requests/s at c=32 with metrics and the access log off, then on, alternating.

    Each round starts a fresh gateway per setting; the access log goes to a file, as a container's
    standard output goes to a pipe or a file. Alternating spreads the machine's noise over both.
    """
    body = {"model": "bench-buffered", "messages": [{"role": "user", "content": "Hi"}]}
    url = f"http://127.0.0.1:{gw_port}/v1/chat/completions"
    results = []
    for _ in range(rounds):
        for name, env in OBSERVABILITY.items():
            log = work / f"access-{name}.log"
            with _gateway(work, gw_port, env, log):
                _wrk(url, body, 32, 2, work)  # warm-up
                result = _wrk(url, body, 32, seconds, work)
            lines = log.read_bytes().count(b"\n")
            if name == "on" and lines < result.requests:
                raise SystemExit(f"the access log has {lines} lines for at least {result.requests} requests")
            results.append((name, result))
    return results


LIMITED_KEY = "sk-bench-limited"


def _limits_runs(work: Path, up_port: int, gw_port: int, seconds: int, rounds: int) -> list[tuple[str, Result]]:
    """Buffered requests/s at c=32 with a key without limits and a key with rpm, tpm and a budget
    (set high enough never to refuse), alternating, on one gateway whose ledger and limits use a
    local redis-server (on the load generator's CPU)."""
    redis_port = _free_port()
    redis = subprocess.Popen(
        [*_on_cpu(1), "redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(work), "--loglevel", "warning"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    config = work / "gateway.yaml"
    config.write_text(f"""
redis_url: redis://127.0.0.1:{redis_port}/0
keys:
  - {{name: bench, key: {KEY}}}
  - {{name: bench-limited, key: {LIMITED_KEY}, rpm: 1000000000, tpm: 1000000000000, budget: 1000000000}}
upstreams:
  - {{name: buffered, dialect: openai, base_url: "http://127.0.0.1:{up_port}/buffered/v1", api_key: sk-up}}
models:
  - {{name: bench-buffered, upstream: buffered}}
prices:
  - {{model: bench-buffered, input: 0.15, output: 0.6}}
""")
    body = {"model": "bench-buffered", "messages": [{"role": "user", "content": "Hi"}]}
    url = f"http://127.0.0.1:{gw_port}/v1/chat/completions"
    results = []
    try:
        _wait_port(redis_port)
        with _gateway(work, gw_port, {"GATEWAY_ACCESS_LOG": "false"}):
            for key in (KEY, LIMITED_KEY):
                _wrk(url, body, 32, 2, work, key)  # warm-up
            for _ in range(rounds):
                for name, key in (("none", KEY), ("rpm+tpm+budget", LIMITED_KEY)):
                    results.append((name, _wrk(url, body, 32, seconds, work, key)))
    finally:
        redis.terminate()
        redis.wait(10)
    return results


def _print_limits(results: list[tuple[str, Result]], rounds: int) -> None:
    none = [r.rps for name, r in results if name == "none"]
    limited = [r.rps for name, r in results if name != "none"]
    print(f"\nlimits and budget on the key: buffered, c=32, {rounds} alternating rounds, Redis ledger for both\n")
    print("| key | req/s per run | median req/s |")
    print("|---|---|---|")
    for name, values in (("no limits", none), ("rpm + tpm + budget", limited)):
        print(f"| {name} | {', '.join(f'{v:,.0f}' for v in values)} | {statistics.median(values):,.0f} |")
    print(f"\nlimited / none (medians): {statistics.median(limited) / statistics.median(none):.3f}")


def _print_observability(results: list[tuple[str, Result]], rounds: int) -> None:
    off = [r.rps for name, r in results if name == "off"]
    on = [r.rps for name, r in results if name == "on"]
    print(f"\nmetrics and access log: buffered, c=32, {rounds} alternating rounds, fresh gateway per run\n")
    print("| setting | req/s per run | median req/s |")
    print("|---|---|---|")
    for name, values in (("both off", off), ("both on (JSON access log to a file)", on)):
        print(f"| {name} | {', '.join(f'{v:,.0f}' for v in values)} | {statistics.median(values):,.0f} |")
    print(f"\non / off (medians): {statistics.median(on) / statistics.median(off):.3f}")


def _print_relay(rows: list[tuple[str, Result, Result, Result, Result]], translation: list[tuple[str, Result]]) -> None:
    print()
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
    chunks = LONG + 2  # content events + role chunk + finish chunk (no usage chunk: not asked)
    base = translation[0][1].rps
    print(f"\nlong streams ({LONG} content events each) through the gateway, 1 worker, c=32\n")
    print("| upstream | streams/s | chunks/s relayed | vs pass-through |")
    print("|---|---|---|---|")
    for source, result in translation:
        label = "OpenAI (pass-through)" if source == "openai" else "Anthropic (translated)"
        print(f"| {label} | {result.rps:,.0f} | {result.rps * chunks:,.0f} | {result.rps / base:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
