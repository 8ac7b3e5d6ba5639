"""`gateway keys create|list|show|update|revoke`: the admin API's key powers, straight on Redis."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from pydantic import ValidationError

from gateway.accounting.keys import Principal
from gateway.accounting.keyspec import KeyChanges, NewKey, key_view
from gateway.accounting.keystore import KeyStore
from gateway.accounting.redis_client import redis_client
from gateway.cli_output import print_table
from gateway.config import GatewayConfig
from gateway.errors import GatewayError
from gateway.settings import Settings

_COLUMNS = ("name", "team", "enabled", "models", "rpm", "tpm", "budget", "budget_period", "expires", "created")


def add_parser(commands: Any) -> None:
    keys = commands.add_parser("keys", help="manage keys kept in Redis (create, list, show, update, revoke)")
    actions = keys.add_subparsers(dest="action", required=True)

    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--config", help="YAML config file (default: $GATEWAY_CONFIG); its redis_url is used")
        parser.add_argument("--format", choices=("table", "json"), default="table")

    def fields(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--team")
        parser.add_argument("--models", help="comma-separated model names or glob patterns")
        parser.add_argument("--rpm", type=int, help="requests per minute")
        parser.add_argument("--tpm", type=int, help="tokens per minute")
        parser.add_argument("--budget", type=float, help="spending limit per period")
        parser.add_argument("--budget-period", choices=("day", "month", "total"))
        parser.add_argument(
            "--model-limit",
            action="append",
            metavar="MODEL:rpm=N,tpm=N",
            help="rpm and/or tpm on the models a name or glob matches (repeatable; replaces the key's list)",
        )
        parser.add_argument("--expires", help="ISO 8601 time (UTC when no zone is given)")
        parser.add_argument("--metadata", action="append", metavar="K=V", help="free-form metadata (repeatable)")

    create = actions.add_parser("create", help="make a key; prints the key alone, once")
    common(create)
    create.add_argument("--name", required=True)
    fields(create)
    common(actions.add_parser("list", help="every managed key"))
    show = actions.add_parser("show", help="one key")
    common(show)
    show.add_argument("name")
    update = actions.add_parser("update", help="change a key's fields")
    common(update)
    update.add_argument("name")
    fields(update)
    update.add_argument("--enable", dest="enabled", action="store_const", const=True)
    update.add_argument("--disable", dest="enabled", action="store_const", const=False)
    revoke = actions.add_parser("revoke", help="refuse a key from now on (its record stays)")
    common(revoke)
    revoke.add_argument("name")


def run(args: argparse.Namespace, settings: Settings, config: GatewayConfig) -> int:
    if not config.redis_url:
        print("gateway: managed keys are kept in Redis: set redis_url in the config file", file=sys.stderr)
        return 2
    try:
        given = _given(args)
        if args.action == "create":
            NewKey(name=args.name, **given)  # checked before anything is stored
        changes = KeyChanges(**given)
    except ValidationError as exc:
        for error in exc.errors():
            where = ".".join(str(p) for p in error["loc"]) or "value"
            print(f"gateway: --{where.replace('_', '-')}: {error['msg']}", file=sys.stderr)
        return 2
    if args.action == "create" and args.name in {key.name for key in config.keys}:
        print(f"gateway: a key named {args.name} is in the config file", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_act(args, settings, config.redis_url, changes))
    except GatewayError as exc:
        print(f"gateway: {exc.message}", file=sys.stderr)
        return 1


async def _act(args: argparse.Namespace, settings: Settings, url: str, changes: KeyChanges) -> int:
    store = KeyStore(redis_client(url, timeout=settings.redis_timeout, cluster=settings.redis_cluster))
    try:
        if args.action == "create":
            key, _ = await store.create(Principal.from_dict({"name": args.name, **changes.record_fields()}))
            print(key)
            return 0
        if args.action == "list":
            _show([key_view(r) for r in await store.list()], args.format)
        elif args.action == "show":
            _show([key_view(await store.get(args.name))], args.format, one=True)
        elif args.action == "update":
            _show([key_view(await store.update(args.name, changes.record_fields()))], args.format, one=True)
        elif args.action == "revoke":
            _show([key_view(await store.revoke(args.name))], args.format, one=True)
        return 0
    finally:
        await store.aclose()


def _given(args: argparse.Namespace) -> dict[str, Any]:
    """The field options that were given, as the admin API's body would have them."""
    out: dict[str, Any] = {}
    for name in ("team", "rpm", "tpm", "budget", "budget_period", "expires", "enabled"):
        value = getattr(args, name, None)
        if value is not None:
            out[name] = value
    if getattr(args, "models", None) is not None:
        out["models"] = [m.strip() for m in args.models.split(",") if m.strip()]
    if getattr(args, "model_limit", None):
        out["model_limits"] = [_model_limit(item) for item in args.model_limit]
    if getattr(args, "metadata", None):
        pairs = [item.partition("=") for item in args.metadata]
        out["metadata"] = {k: v for k, _, v in pairs}
    return out


def _model_limit(text: str) -> dict[str, Any]:
    """`gpt-4o*:rpm=10,tpm=5000` as the admin API's body has it (checked there)."""
    model, _, limits = text.rpartition(":")
    out: dict[str, Any] = {"model": model or text}
    for part in limits.split(",") if model else []:
        name, _, value = part.partition("=")
        out[name.strip()] = value.strip()
    return out


def _show(rows: list[dict[str, Any]], form: str, one: bool = False) -> None:
    if form == "json":
        print(json.dumps(rows[0] if one else rows, indent=2))
        return
    print_table(_COLUMNS, [[_cell(row[c]) for c in _COLUMNS] for row in rows])


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ",".join(value)
    return str(value).lower() if isinstance(value, bool) else str(value)
