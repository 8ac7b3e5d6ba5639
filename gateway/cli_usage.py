"""`gateway usage`: usage per key, model and day, read from Redis (or from a running gateway's admin
API when the config has no Redis), as a table, JSON or CSV."""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from redis.exceptions import RedisError

from gateway.accounting.ledger.base import COUNTERS, UsageQuery
from gateway.accounting.ledger.redis import RedisLedger
from gateway.cli_output import print_table
from gateway.config import GatewayConfig
from gateway.errors import GatewayError, InvalidRequest
from gateway.http.usage import parse_day
from gateway.settings import Settings

_TABLE = ("day", "key", "team", "model", "requests", "prompt_tokens", "completion_tokens", "cached_tokens",
          "reasoning_tokens", "billed_units", "cost")  # fmt: skip


def add_parser(commands: Any) -> None:
    usage = commands.add_parser("usage", help="usage per key, model and day (from Redis, or a running gateway)")
    usage.add_argument("--config", help="YAML config file (default: $GATEWAY_CONFIG); its redis_url is read")
    usage.add_argument("--key", help="only this key name")
    usage.add_argument("--team", help="only keys of this team")
    usage.add_argument("--model", help="only this model")
    usage.add_argument("--since", help="first UTC day, YYYY-MM-DD")
    usage.add_argument("--until", help="last UTC day, YYYY-MM-DD (included)")
    usage.add_argument("--format", choices=("table", "json", "csv"), default="table")
    usage.add_argument(
        "--url",
        help="without redis_url: the base URL of a running gateway whose admin API to ask "
        "(GATEWAY_ADMIN_TOKEN must be set)",
    )


def run(args: argparse.Namespace, settings: Settings, config: GatewayConfig) -> int:
    try:
        query = UsageQuery(
            args.key, args.team, args.model, parse_day(args.since, "--since"), parse_day(args.until, "--until")
        )
    except InvalidRequest as exc:
        print(f"gateway: {exc.message}", file=sys.stderr)
        return 2
    try:
        if config.redis_url:
            rows = asyncio.run(_from_redis(config.redis_url, settings, query))
        elif args.url:
            rows = _from_gateway(args.url, settings, query)
        else:
            print(
                "gateway: the config has no redis_url, so usage lives in the running gateway's memory: "
                "pass --url http://HOST:PORT (with GATEWAY_ADMIN_TOKEN set)",
                file=sys.stderr,
            )
            return 2
    except GatewayError as exc:
        print(f"gateway: cannot read usage: {exc.message}", file=sys.stderr)
        return 1
    except (RedisError, OSError, RuntimeError, ValueError) as exc:
        print(f"gateway: cannot read usage: {exc}", file=sys.stderr)
        return 1
    _print(rows, args.format)
    return 0


async def _from_redis(url: str, settings: Settings, query: UsageQuery) -> list[dict[str, Any]]:
    ledger = RedisLedger(url, timeout=settings.redis_timeout, cluster=settings.redis_cluster, spool_dir=None)
    try:
        return await ledger.rows(query)
    finally:
        await ledger.aclose()


def _from_gateway(url: str, settings: Settings, query: UsageQuery) -> list[dict[str, Any]]:
    token = settings.admin_token.get_secret_value() if settings.admin_token is not None else ""
    if not token:
        raise RuntimeError("GATEWAY_ADMIN_TOKEN is not set")
    params = {name: getattr(query, name) for name in ("key", "team", "model", "since", "until")}
    given = {k: v for k, v in params.items() if v is not None}
    request = urllib.request.Request(
        f"{url.rstrip('/')}/admin/usage?{urllib.parse.urlencode(given)}",
        headers={"authorization": f"Bearer {token}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            data: list[dict[str, Any]] = json.loads(reply.read())["data"]
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"the gateway answered {exc.code}: {exc.read()[:200].decode(errors='replace')}") from None
    return data


def _print(rows: list[dict[str, Any]], form: str) -> None:
    if form == "json":
        print(json.dumps(rows, indent=2))
        return
    if form == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=["day", "key", "team", "model", *COUNTERS], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return
    print_table(_TABLE, [[_cell(row.get(c)) for c in _TABLE] for row in rows])
    if not rows:
        print("(no usage)", file=sys.stderr)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
