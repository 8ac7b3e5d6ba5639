"""The `gateway` command run as the operator runs it, and client traffic spread over replicas."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
USER = [{"role": "user", "content": "hello"}]


def gateway_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**base, **(env or {})},
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )


def make_key(config: Path, *options: str, env: dict[str, str] | None = None) -> str:
    """`gateway keys create`: the new key, as printed."""
    made = gateway_cli("keys", "create", "--config", str(config), *options, env=env)
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()


def usage_json(config: Path, *options: str, env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """`gateway usage --format json`: the rows."""
    shown = gateway_cli("usage", "--config", str(config), "--format", "json", *options, env=env)
    assert shown.returncode == 0, shown.stderr
    rows: list[dict[str, Any]] = json.loads(shown.stdout)
    return rows


async def spread(urls: list[str], key: str, count: int, stream: bool = False, **body: Any) -> list[httpx.Response]:
    """`count` chat requests at once, round-robin over `urls`."""
    async with httpx.AsyncClient(headers={"authorization": f"Bearer {key}"}, timeout=30) as client:
        return await asyncio.gather(
            *(
                client.post(
                    f"{urls[i % len(urls)]}/v1/chat/completions",
                    json={"model": "echo", "messages": USER, "stream": stream, **body},
                )
                for i in range(count)
            )
        )
