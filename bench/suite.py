"""The speed suite, in one run on one machine (issue 10): everything measured against the same instant
nginx upstream, one process each, the server on CPU 0 and the load generator and upstream on CPU 1.

throughput  the upstream alone; the floor (bench/floor.py: a bare aiohttp pass-through on uvicorn, our
            stack); the gateway with everything on (a key with rpm, tpm and a budget, prices, usage
            to Redis, metrics, the JSON access log to a file); the same gateway with its ledger's
            writes to Redis held off for the run (what they add to the tail at one connection);
            LiteLLM's proxy (installed into .bench/litellm from PyPI). Buffered and streamed (42
            events, usage captured): requests/s at 32 connections (wrk), p50 and p99 at one, the
            added latency (target minus upstream alone), and the ratios gateway/floor and
            gateway/LiteLLM. Every target is measured in turn, --rounds times over (3); each figure
            is the median of its rounds.
paced       an upstream streaming 40 events 25 ms apart; N clients (default 2,000) that start over a
            second and then each hold a stream open for three more, opening the next as one ends:
            straight from the upstream, through nginx as a bare relay (what a relay in C does on
            this machine), through the floor, and through one gateway worker. Over the hold: added
            time to first token, added p99 gap between events, how many streams were sending at
            once, the relays' share of a CPU; over the whole run, their CPU time per event (and the
            kernel's part) and peak resident memory. Each figure is the median of --paced-rounds (3).
soak        mixed buffered and streamed traffic, some clients leaving mid-stream, for --soak-minutes;
            the gateway's resident memory sampled every 10 s and its growth.

    python3 dev.py bench                      # the older figures (bench/run.py)
    .venv/bin/python bench/suite.py --part all --json bench-results.json
    .venv/bin/python bench/suite.py --part throughput --profile   # a py-spy flame graph of the gateway

Not part of CI. Needs wrk, nginx (with the echo module: Debian's nginx-light has it), redis-server.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import uvloop
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import KEY, Result, _free_port, _nginx_quote, _on_cpu, _wait_port, _wrk, gateway_cmd, nginx_conf
from sse_client import StreamTimes, one_stream, percentile, request_bytes

ROOT = Path(__file__).resolve().parents[1]
BENCH_HOME = ROOT / ".bench"
STREAM_EVENTS = 42  # role, 39 content, finish, usage
PACED_EVENTS, PACED_GAP = 40, 0.025
# The paced clients start over PACED_OPENING seconds (so that their events' times spread evenly over
# the pace), then each holds a stream open for PACED_HOLD more, opening its next as one ends: n streams
# open together, measured over the hold.
PACED_OPENING, PACED_HOLD = 1.0, 3.0
LITELLM_VERSION = "litellm[proxy]"
UNWRITTEN = "gateway, usage unwritten"  # the gateway with its ledger's writes to Redis held off


def _chunk(delta: dict[str, Any] | None, finish: str | None = None, usage: Any = None) -> str:
    obj: dict[str, Any] = {"id": "chatcmpl-suite", "object": "chat.completion.chunk", "created": 1763700000,
                           "model": "gpt-4o-mini", "choices": []}  # fmt: skip
    if delta is not None:
        obj["choices"] = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
    if usage is not None:
        obj["usage"] = usage
    return "data: " + json.dumps(obj, separators=(",", ":")) + "\n\n"


def stream_events(content_events: int) -> list[str]:
    usage = {"prompt_tokens": 9, "completion_tokens": content_events, "total_tokens": 9 + content_events}
    return [
        _chunk({"role": "assistant", "content": ""}),
        *(_chunk({"content": f" w{i}"}) for i in range(content_events)),
        _chunk({}, "stop"),
        _chunk(None, usage=usage),
    ]


def _nginx_conf(work: Path, port: int) -> str:
    streamed = "".join(stream_events(STREAM_EVENTS - 3)) + "data: [DONE]\n\n"
    (work / "streamed.sse").write_text(streamed)
    (work / "streamed.sse").chmod(0o644)
    paced = "\n".join(
        f"      echo -n {_nginx_quote(event)}; echo_flush; echo_sleep {PACED_GAP};"
        for event in stream_events(PACED_EVENTS - 3)
    )
    module = next(
        (p for p in (f"/usr/{d}/nginx/modules/ngx_http_echo_module.so" for d in ("lib", "share")) if Path(p).exists()),
        None,
    )  # fmt: skip
    if module is None:
        raise SystemExit("nginx's echo module is missing (apt-get install libnginx-mod-http-echo)")
    locations = f"""
    location = /streamed/v1/chat/completions {{
      default_type "text/event-stream; charset=utf-8";
      error_page 405 =200 $uri;
      alias {work}/streamed.sse;
    }}
    location = /paced/v1/chat/completions {{
      default_type "text/event-stream; charset=utf-8";
      echo_read_request_body;
{paced}
      echo -n 'data: [DONE]\\n\\n';
    }}"""
    return nginx_conf(work, port, locations, top=f"load_module {module};", connections=10000)


@contextmanager
def _process(cmd: list[str], port: int, env: dict[str, str] | None = None, log: Path | None = None,
             wait: float = 30) -> Iterator[subprocess.Popen[bytes]]:  # fmt: skip
    out = open(log, "wb") if log is not None else None  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=out or subprocess.DEVNULL,
                            stderr=subprocess.STDOUT if out else None)  # fmt: skip
    try:
        _wait_port(port, wait)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        if out is not None:
            out.close()


def _floor_cmd(port: int, up_port: int, *modes: str) -> list[str]:
    """bench/floor.py on CPU 0, relaying /<mode>/... to the upstream's same path."""
    routes = [f"--upstream={mode}=http://127.0.0.1:{up_port}/{mode}/v1/chat/completions" for mode in modes]
    return [*_on_cpu(0), sys.executable, str(ROOT / "bench" / "floor.py"), "--port", str(port), *routes]


def _gateway_config(work: Path, up_port: int, redis_port: int) -> None:
    up = f"http://127.0.0.1:{up_port}"
    (work / "gateway.yaml").write_text(f"""
redis_url: redis://127.0.0.1:{redis_port}/0
keys:
  - {{name: bench, key: {KEY}, rpm: 1000000000, tpm: 1000000000000, budget: 1000000000}}
upstreams:
  - {{name: buffered, dialect: openai, vendor: openai, base_url: "{up}/buffered/v1", api_key: sk-up}}
  - {{name: streamed, dialect: openai, vendor: openai, base_url: "{up}/streamed/v1", api_key: sk-up}}
  - {{name: paced, dialect: openai, vendor: openai, base_url: "{up}/paced/v1", api_key: sk-up}}
models:
  - {{name: bench-buffered, upstream: buffered}}
  - {{name: bench-streamed, upstream: streamed}}
  - {{name: bench-paced, upstream: paced}}
prices:
  - {{model: "bench-*", input: 0.15, output: 0.6}}
""")


# Everything on: metrics, the JSON access log (to a file), usage to Redis, limits. The upstream pool
# is sized for the paced scenario's thousands of concurrent streams (one connection each).
GATEWAY_ENV = {"GATEWAY_METRICS": "true", "GATEWAY_ACCESS_LOG": "true", "GATEWAY_LOG_FORMAT": "json",
               "GATEWAY_LOG_LEVEL": "warning", "GATEWAY_UPSTREAM_POOL_SIZE": "8192"}  # fmt: skip


def _litellm() -> Path:
    """LiteLLM's proxy in its own virtual environment under .bench/ (installed once)."""
    venv = BENCH_HOME / "litellm"
    exe = venv / "bin" / "litellm"
    if not exe.exists():
        print("installing LiteLLM's proxy into .bench/litellm (once)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        subprocess.run([*pip, LITELLM_VERSION], check=True)
    return exe


def _litellm_config(work: Path, up_port: int) -> Path:
    path = work / "litellm.yaml"
    up = f"http://127.0.0.1:{up_port}"
    path.write_text(f"""
model_list:
  - model_name: bench-buffered
    litellm_params: {{model: openai/gpt-4o-mini, api_base: "{up}/buffered/v1", api_key: sk-up}}
  - model_name: bench-streamed
    litellm_params: {{model: openai/gpt-4o-mini, api_base: "{up}/streamed/v1", api_key: sk-up}}
general_settings:
  master_key: {KEY}
litellm_settings:
  drop_params: true
""")
    return path


def _measure(url: str, mode: str, seconds: int, work: Path) -> dict[str, Result]:
    body = {"model": f"bench-{mode}", "messages": [{"role": "user", "content": "Hi"}], "stream": mode == "streamed"}
    _wrk(url, body, 32, 2, work)  # warm-up
    return {"c32": _wrk(url, body, 32, seconds, work), "c1": _wrk(url, body, 1, seconds, work)}


def _throughput(
    work: Path, up_port: int, seconds: int, rounds: int, profile: bool, skip_litellm: bool
) -> dict[str, Any]:
    """Every target measured in turn, `rounds` times over (all started at once, the others stopped
    while one is measured): each figure is the median of its rounds, so that a noisy moment weighs on
    one only."""
    urls = {"upstream": f"http://127.0.0.1:{up_port}/{{mode}}/v1/chat/completions"}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    with ExitStack() as running:
        port = _free_port()
        procs["floor"] = running.enter_context(_process(_floor_cmd(port, up_port, "buffered", "streamed"), port))
        urls["floor"] = f"http://127.0.0.1:{port}/{{mode}}/v1/chat/completions"
        port = _free_port()
        gateway = running.enter_context(_process(gateway_cmd(work, port), port, GATEWAY_ENV, work / "access.log"))
        procs["gateway"] = gateway
        urls["gateway"] = f"http://127.0.0.1:{port}/v1/chat/completions"
        # The same with the ledger's writes to Redis held off for the whole run: each write has Redis
        # (on one of the two cores) run a script that everything else waits on.
        port = _free_port()
        held = {**GATEWAY_ENV, "GATEWAY_LEDGER_FLUSH_INTERVAL": "3600", "GATEWAY_LEDGER_FLUSH_ENTRIES": "100000000"}
        procs[UNWRITTEN] = running.enter_context(
            _process(gateway_cmd(work, port), port, held, work / "access-unwritten.log")
        )
        urls[UNWRITTEN] = f"http://127.0.0.1:{port}/v1/chat/completions"
        if not skip_litellm:
            port = _free_port()
            cmd = [*_on_cpu(0), str(_litellm()), "--config", str(_litellm_config(work, up_port)), "--port",
                   str(port), "--host", "127.0.0.1", "--num_workers", "1"]  # fmt: skip
            env = {"LITELLM_LOG": "ERROR", "LITELLM_MODE": "PRODUCTION", "DISABLE_SCHEMA_UPDATE": "true"}
            procs["litellm"] = running.enter_context(_process(cmd, port, env, work / "litellm.log", wait=180))
            urls["litellm"] = f"http://127.0.0.1:{port}/v1/chat/completions"
        measured: dict[str, dict[str, list[dict[str, Result]]]] = {}
        for round_ in range(rounds):
            for target, url in urls.items():
                profiled = profile and round_ == 0 and target == "gateway"
                spy = _py_spy(gateway.pid, work, seconds * 4 + 10) if profiled else None
                # The others stand still meanwhile: an idle server's own timers (LiteLLM has several)
                # would take the measured one's CPU.
                with _paused([p for name, p in procs.items() if name != target]):
                    for mode in ("buffered", "streamed"):
                        measured.setdefault(target, {}).setdefault(mode, []).append(
                            _measure(url.format(mode=mode), mode, seconds, work)
                        )
                if spy is not None:
                    spy.wait()
                    print(f"profile: {work / 'gateway-profile.svg'} copied to {ROOT / 'bench-profile.svg'}")
                    shutil.copy(work / "gateway-profile.svg", ROOT / "bench-profile.svg")
    results = {
        target: {mode: {c: _median([r[c] for r in runs]) for c in ("c32", "c1")} for mode, runs in modes.items()}
        for target, modes in measured.items()
    }
    spread = {
        target: {mode: [round(r["c32"].rps) for r in runs] for mode, runs in modes.items()}
        for target, modes in measured.items()
    }
    served = (work / "access.log").read_bytes().count(b"\n")
    return {"results": results, "rounds": spread, "gateway_access_lines": served}


@contextmanager
def _paused(procs: list[subprocess.Popen[bytes]]) -> Iterator[None]:
    """SIGSTOP the processes (and their children) for the block, SIGCONT after."""
    pids = [pid for proc in procs for pid in (proc.pid, *_children(proc.pid))]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _median(runs: list[Result]) -> Result:
    return Result(
        rps=statistics.median(r.rps for r in runs),
        requests=round(statistics.median(r.requests for r in runs)),
        p50_ms=statistics.median(r.p50_ms for r in runs),
        p99_ms=statistics.median(r.p99_ms for r in runs),
    )


def _py_spy(pid: int, work: Path, seconds: int) -> subprocess.Popen[bytes]:
    spy = Path(sys.executable).parent / "py-spy"
    if not spy.exists():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "py-spy"], check=True)
    return subprocess.Popen([str(spy), "record", "-p", str(pid), "-d", str(seconds), "-r", "200", "--nonblocking",
                             "-o", str(work / "gateway-profile.svg")], stdout=subprocess.DEVNULL)  # fmt: skip


def _print_throughput(data: dict[str, Any]) -> dict[str, Any]:
    results = data["results"]
    summary: dict[str, Any] = {}
    print("\n| target | mode | req/s (c=32) | p50 / p99 ms (c=1) | added p50 / p99 ms |")
    print("|---|---|---|---|---|")
    for target in ("upstream", "floor", "gateway", UNWRITTEN, "litellm"):
        for mode in ("buffered", "streamed"):
            if target not in results:
                continue
            r, up = results[target][mode], results["upstream"][mode]
            added = (r["c1"].p50_ms - up["c1"].p50_ms, r["c1"].p99_ms - up["c1"].p99_ms)
            summary.setdefault(target, {})[mode] = {
                "rps_c32": round(r["c32"].rps), "p50_ms_c1": r["c1"].p50_ms, "p99_ms_c1": r["c1"].p99_ms,
                "added_p50_ms": round(added[0], 3), "added_p99_ms": round(added[1], 3),
                "rps_c32_rounds": data["rounds"][target][mode],
            }  # fmt: skip
            print(f"| {target} | {mode} | {r['c32'].rps:,.0f} | {r['c1'].p50_ms:.3f} / {r['c1'].p99_ms:.3f} | "
                  f"{added[0]:.3f} / {added[1]:.3f} |")  # fmt: skip
    print("\nreq/s (c=32) by round: " + "; ".join(
        f"{target} {mode} {rounds}" for target, modes in data["rounds"].items() for mode, rounds in modes.items()
    ))  # fmt: skip
    for mode in ("buffered", "streamed"):
        gw = summary["gateway"][mode]["rps_c32"]
        ratios = {"gateway/floor": gw / summary["floor"][mode]["rps_c32"]}
        if "litellm" in summary:
            ratios["gateway/litellm"] = gw / max(1, summary["litellm"][mode]["rps_c32"])
        summary.setdefault("ratios", {})[mode] = {k: round(v, 2) for k, v in ratios.items()}
        print(f"{mode}: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
    return summary


@contextmanager
def _collector_off() -> Iterator[None]:
    """The load generator's own garbage collector off while it times events: its pauses (a full
    collection of 14 ms seen in one paced run) would count as delay the measured server added."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def _paced_streams(port: int, path: str, n: int) -> tuple[list[StreamTimes], tuple[float, float]]:
    """n clients, each holding a paced stream open until the hold is over: every stream, and the
    hold's (start, end) in `time.perf_counter()`."""
    # With usage asked for, the gateway relays every event the upstream sends, as the upstream and
    # the floor do; without, it leaves out the usage chunk, and the gap across that chunk (twice the
    # pace, once per stream) would be counted as delay added to an event, which it is not.
    body = json.dumps({"model": "bench-paced", "messages": [{"role": "user", "content": "Hi"}],
                       "stream": True, "stream_options": {"include_usage": True}}).encode()  # fmt: skip
    request = request_bytes(port, path, body, KEY)
    start = time.perf_counter() + 0.05
    held, until = start + PACED_OPENING, start + PACED_OPENING + PACED_HOLD
    streams: list[StreamTimes] = []

    async def client(i: int) -> None:
        # Each client starts at its own time: a sleep after each start would stretch the opening by
        # the loop's lateness (to 3.7 s for 2,000, seen: never more than about 670 open at once).
        await asyncio.sleep(start + i * PACED_OPENING / n - time.perf_counter())
        while time.perf_counter() < until:
            times = await one_stream(port, request)
            streams.append(times)
            if not (times.status == 200 and times.done):
                return  # refused or cut: no client hammers a failing server

    with _collector_off():
        await asyncio.gather(*(client(i) for i in range(n)))
    return streams, (held, until)


def _stream_stats(run: tuple[list[StreamTimes], tuple[float, float]]) -> dict[str, float]:
    """Over the hold: time to first token of the streams sent in it, the gaps between events that
    arrived in it, and how many streams were sending events at once (from a stream's first event to
    its last, sampled every 10 ms: the least and the median)."""
    streams, (held, until) = run
    ok = [s for s in streams if s.status == 200 and s.done and s.events]
    ttft = [(s.events[0] - s.sent) * 1000 for s in ok if held <= s.sent < until]
    gaps = [(b - a) * 1000 for s in ok for a, b in zip(s.events[1:], s.events[2:], strict=False) if held <= b < until]
    edges = sorted([(s.events[0], 1) for s in ok] + [(s.events[-1], -1) for s in ok])
    flowing, at, now, tick = [], 0, 0, held
    while tick < until:
        while at < len(edges) and edges[at][0] <= tick:
            now += edges[at][1]
            at += 1
        flowing.append(now)
        tick += 0.01
    return {"streams": len(streams), "complete": len(ok), "flowing_min": min(flowing, default=0),
            "flowing_median": statistics.median(flowing) if flowing else 0,
            "ttft_p50_ms": percentile(ttft, 50), "ttft_p99_ms": percentile(ttft, 99),
            "gap_p50_ms": percentile(gaps, 50), "gap_p99_ms": percentile(gaps, 99)}  # fmt: skip


def _rounds_median(runs: list[dict[str, float]]) -> dict[str, Any]:
    """Each figure the median of its rounds (peak memory: the most), and every round kept."""
    out: dict[str, Any] = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    if "peak_rss_mb" in out:
        out["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    out["rounds"] = runs
    return out


def _proc_sample(pid: int) -> tuple[float, int, float]:
    """(CPU seconds used, resident bytes, of those CPU seconds the kernel's) of a process and its children."""
    pids = [pid, *_children(pid)]
    user, system, rss = 0.0, 0.0, 0
    tick = os.sysconf("SC_CLK_TCK")
    for p in pids:
        stat = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        user += int(stat[11]) / tick
        system += int(stat[12]) / tick
        rss += int(stat[21]) * os.sysconf("SC_PAGE_SIZE")
    return user + system, rss, system


def _paced_through(proc: subprocess.Popen[bytes], port: int, path: str, n: int) -> dict[str, Any]:
    """The paced streams through a server: their times, and the server's share of a CPU over the
    hold, its CPU time per event relayed over the whole run (all of it, and the kernel's part: system
    calls; each stream's opening and closing included), and its peak resident memory."""
    peak = 0
    samples: list[tuple[float, float]] = []  # (time.perf_counter(), CPU seconds used so far)
    cpu0, _, sys0 = _proc_sample(proc.pid)

    async def run() -> tuple[list[StreamTimes], tuple[float, float]]:
        nonlocal peak
        task = asyncio.create_task(_paced_streams(port, path, n))
        while not task.done():
            cpu, rss, _ = _proc_sample(proc.pid)
            samples.append((time.perf_counter(), cpu))
            peak = max(peak, rss)
            await asyncio.sleep(0.2)
        return await task

    streams = uvloop.run(run())
    cpu1, _, sys1 = _proc_sample(proc.pid)
    cpu, system = cpu1 - cpu0, sys1 - sys0
    events = sum(len(s.events) for s in streams[0])
    held, until = streams[1]
    during = [(t, c) for t, c in samples if held <= t <= until]
    share = (during[-1][1] - during[0][1]) / (during[-1][0] - during[0][0]) if len(during) > 1 else 0.0
    return {**_stream_stats(streams), "cpu_percent": 100 * share, "cpu_us_per_event": 1e6 * cpu / max(1, events),
            "kernel_us_per_event": 1e6 * system / max(1, events), "peak_rss_mb": peak / 2**20}  # fmt: skip


def _relay_conf(work: Path, port: int, up_port: int) -> Path:
    """nginx as a bare relay (one worker, unbuffered): what a relay in C does on this machine."""
    home = work / "relay"
    home.mkdir(exist_ok=True)
    home.chmod(0o755)
    location = f"""
    location /paced/ {{
      proxy_pass http://127.0.0.1:{up_port};
      proxy_http_version 1.1;
      proxy_buffering off;
    }}"""
    (home / "nginx.conf").write_text(nginx_conf(home, port, location, connections=10000))
    return home


def _paced(work: Path, up_port: int, n: int, rounds: int) -> dict[str, Any]:
    path = "/paced/v1/chat/completions"

    def through(proc: subprocess.Popen[bytes], port: int, path: str) -> dict[str, Any]:
        return _rounds_median([_paced_through(proc, port, path, n) for _ in range(rounds)])

    up = _rounds_median([_stream_stats(uvloop.run(_paced_streams(up_port, path, n))) for _ in range(rounds)])
    # The same streams through a relay written in C, on the measured server's CPU: how much of the
    # gap this machine lets any relay keep.
    port = _free_port()
    home = _relay_conf(work, port, up_port)
    with _process([*_on_cpu(0), "nginx", "-c", str(home / "nginx.conf"), "-p", str(home)], port) as proc:
        relay = through(proc, port, path)
    # The same stack doing nothing else: what opening and relaying that many streams costs by itself.
    port = _free_port()
    with _process(_floor_cmd(port, up_port, "paced"), port) as proc:
        floor = through(proc, port, path)
    port = _free_port()
    with _process(gateway_cmd(work, port), port, GATEWAY_ENV, work / "access-paced.log") as proc:
        collections0 = _collections(port)
        gw = through(proc, port, "/v1/chat/completions")
        collections = {name: round(value - collections0[name], 4) for name, value in _collections(port).items()}
    out: dict[str, Any] = {
        "streams": n, "events_per_stream": PACED_EVENTS, "gap_ms": PACED_GAP * 1000, "opening_s": PACED_OPENING,
        "hold_s": PACED_HOLD, "rounds": rounds, "upstream": up, "nginx_relay": relay, "floor": floor, "gateway": gw,
        "gateway_added_ttft_p50_ms": gw["ttft_p50_ms"] - up["ttft_p50_ms"],
        "gateway_cpu_percent": gw["cpu_percent"], "gateway_peak_rss_mb": gw["peak_rss_mb"],
        "gateway_collector": collections,
    }  # fmt: skip
    for name in ("nginx_relay", "floor", "gateway"):
        out[f"{name}_added_gap_p99_ms"] = out[name]["gap_p99_ms"] - up["gap_p99_ms"]
    print(f"\npaced: {n} streams held open, each of {PACED_EVENTS} events {PACED_GAP * 1000:.0f} ms apart and then "
          f"the next, over {PACED_HOLD:g} s after {PACED_OPENING:g} s of opening; one worker; medians of {rounds} "
          "rounds")  # fmt: skip
    print("| | complete | sending at once, least / median | TTFT p50 / p99 ms | gap p50 / p99 ms | CPU "
          "| CPU us per event (kernel's) | peak RSS MB |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    rows = (("upstream alone", up), ("via nginx (C)", relay), ("via the floor", floor), ("via gateway", gw))
    for name, s in rows:
        cost = (
            f"{s['cpu_percent']:.0f}% | {s['cpu_us_per_event']:.1f} ({s['kernel_us_per_event']:.1f}) | "
            f"{s['peak_rss_mb']:.0f}"
            if "cpu_percent" in s
            else " | | "
        )
        print(f"| {name} | {s['complete']:.0f}/{s['streams']:.0f} | {s['flowing_min']:.0f} / "
              f"{s['flowing_median']:.0f} | {s['ttft_p50_ms']:.1f} / {s['ttft_p99_ms']:.1f} | "
              f"{s['gap_p50_ms']:.2f} / {s['gap_p99_ms']:.2f} | {cost} |")  # fmt: skip
    print(f"added gap p99: nginx {out['nginx_relay_added_gap_p99_ms']:.2f} ms, floor "
          f"{out['floor_added_gap_p99_ms']:.2f} ms, gateway {out['gateway_added_gap_p99_ms']:.2f} ms; gateway "
          f"added TTFT p50 {out['gateway_added_ttft_p50_ms']:.2f} ms, CPU {out['gateway_cpu_percent']:.0f}%, "
          f"peak RSS {out['gateway_peak_rss_mb']:.0f} MB")  # fmt: skip
    # All n streams sending: each sends its events and `[DONE]` over PACED_EVENTS gaps.
    rate = n * (PACED_EVENTS + 1) / (PACED_EVENTS * PACED_GAP)
    out["events_per_second_all_sending"] = rate
    out["cpus_at_that_rate"] = {name: round(rate * out[name]["cpu_us_per_event"] / 1e6, 2)
                                for name in ("nginx_relay", "floor", "gateway")}  # fmt: skip
    out["floor_kernel_cpus_at_that_rate"] = round(rate * floor["kernel_us_per_event"] / 1e6, 2)
    cpus = out["cpus_at_that_rate"]
    print(f"with all {n} sending, {rate:,.0f} events/s, at its cost per event: nginx would take "
          f"{cpus['nginx_relay']:.2f} CPUs, the floor {cpus['floor']:.2f} (its system calls alone "
          f"{out['floor_kernel_cpus_at_that_rate']:.2f}), the gateway {cpus['gateway']:.2f}")  # fmt: skip
    print("gateway's garbage collector meanwhile (gateway_gc_pause_seconds): "
          + ", ".join(f"{name} {value:g}" for name, value in collections.items()))  # fmt: skip
    return out


def _collections(port: int) -> dict[str, float]:
    """The gateway's garbage collections so far, from its `/metrics` (`gateway_gc_pause_seconds`):
    for each generation, how many, their seconds in all, and how many held the loop over 10 ms."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    found = {f"gen{g} {what}": 0.0 for g in "012" for what in ("collections", "seconds", "over 10 ms")}
    for family in text_string_to_metric_families(text):
        if family.name != "gateway_gc_pause_seconds":
            continue
        for sample in family.samples:
            gen = f"gen{sample.labels['generation']}"
            if sample.name.endswith("_count"):
                found[f"{gen} collections"] += sample.value
                found[f"{gen} over 10 ms"] += sample.value
            elif sample.name.endswith("_sum"):
                found[f"{gen} seconds"] = sample.value
            elif sample.name.endswith("_bucket") and float(sample.labels["le"]) == 0.01:
                found[f"{gen} over 10 ms"] -= sample.value  # the count less those within 10 ms
    return found


def _soak(work: Path, minutes: float) -> dict[str, Any]:
    port = _free_port()
    with _process(gateway_cmd(work, port), port, GATEWAY_ENV, work / "access-soak.log") as proc:
        samples: list[tuple[float, float]] = []
        counts = {"buffered": 0, "streamed": 0, "left": 0, "failed": 0}

        async def client(i: int, deadline: float) -> None:
            kinds = ("buffered", "streamed", "paced-left")
            n = i
            while time.perf_counter() < deadline:
                kind = kinds[n % 3]
                n += 1
                model = "bench-paced" if kind == "paced-left" else f"bench-{kind}"
                body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Hi"}],
                                   "stream": kind != "buffered"}).encode()  # fmt: skip
                times = await one_stream(port, request_bytes(port, "/v1/chat/completions", body, KEY),
                                         cut_after=5 if kind == "paced-left" else None)  # fmt: skip
                if times.status != 200:
                    counts["failed"] += 1
                else:
                    counts["left" if kind == "paced-left" else kind] += 1

        async def run() -> None:
            started = time.perf_counter()
            deadline = started + minutes * 60
            tasks = [asyncio.create_task(client(i, deadline)) for i in range(24)]
            while time.perf_counter() < deadline:
                samples.append((time.perf_counter() - started, _proc_sample(proc.pid)[1] / 2**20))
                await asyncio.sleep(10)
            await asyncio.gather(*tasks)

        asyncio.run(run())
    first = statistics.median(m for t, m in samples if 60 <= t < 120) if len(samples) > 12 else samples[0][1]
    last = statistics.median(m for _, m in samples[-6:])
    out = {"minutes": minutes, "requests": counts, "rss_mb_samples": [round(m, 1) for _, m in samples],
           "rss_mb_after_warmup": first, "rss_mb_at_end": last, "growth_mb": last - first}  # fmt: skip
    print(f"\nsoak: {minutes:g} min, {counts}; RSS after the first minute {first:.1f} MB, at the end {last:.1f} MB, "
          f"growth {last - first:+.1f} MB")  # fmt: skip
    return out


def _load_generator_on_cpu_1() -> None:
    """This process (the paced and soak clients) on the load generator's CPU, with wrk and nginx, as
    the suite's layout says: left to the scheduler, it could run on the measured server's CPU and take
    its time."""
    if _on_cpu(1) and hasattr(os, "sched_setaffinity"):  # as the servers are pinned: taskset, two CPUs
        os.sched_setaffinity(0, {1})


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("all", "throughput", "paced", "soak"), default="all")
    parser.add_argument("--seconds", type=int, default=5, help="length of each wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds; each figure is their median")
    parser.add_argument("--streams", type=_at_least_one, default=2000, help="streams held open in the paced scenario")
    parser.add_argument("--paced-rounds", type=_at_least_one, default=3, help="paced rounds (figures: medians)")
    parser.add_argument("--soak-minutes", type=float, default=10.0)
    parser.add_argument("--no-litellm", action="store_true", help="skip LiteLLM (no package index needed)")
    parser.add_argument("--profile", action="store_true", help="record a py-spy flame graph of the gateway")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # thousands of sockets, here and in children
    _load_generator_on_cpu_1()
    for tool in ("wrk", "nginx", "redis-server"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (python3 dev.py bench installs it)")
    report: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        work.chmod(0o755)
        up_port, redis_port = _free_port(), _free_port()
        (work / "nginx.conf").write_text(_nginx_conf(work, up_port))
        _gateway_config(work, up_port, redis_port)
        GATEWAY_ENV["GATEWAY_LEDGER_SPOOL_DIR"] = str(work / "spool")
        redis = [*_on_cpu(1), "redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(work), "--loglevel", "warning"]  # fmt: skip
        nginx = [*_on_cpu(1), "nginx", "-c", str(work / "nginx.conf"), "-p", str(work)]
        with _process(redis, redis_port), _process(nginx, up_port):
            if args.part in ("all", "throughput"):
                data = _throughput(work, up_port, args.seconds, args.rounds, args.profile, args.no_litellm)
                report["throughput"] = _print_throughput(data)
            if args.part in ("all", "paced"):
                report["paced"] = _paced(work, up_port, args.streams, args.paced_rounds)
            if args.part in ("all", "soak"):
                report["soak"] = _soak(work, args.soak_minutes)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
