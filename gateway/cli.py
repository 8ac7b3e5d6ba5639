"""`gateway serve` and `gateway check-config`."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from pydantic import ValidationError

from gateway import __version__
from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.routing import Router
from gateway.settings import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway", description="OpenAI-compatible LLM API gateway.")
    parser.add_argument("--version", action="version", version=f"gateway {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", help="YAML config file (default: $GATEWAY_CONFIG)")
    serve.add_argument("--host", help="address to listen on (default: $GATEWAY_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default: $GATEWAY_PORT or 8080)")
    serve.add_argument("--workers", type=int, help="worker processes (default: $GATEWAY_WORKERS or 1)")

    check = commands.add_parser("check-config", help="validate a config file and print the routing table")
    check.add_argument("--config", help="YAML config file (default: $GATEWAY_CONFIG)")

    args = parser.parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"gateway: bad GATEWAY_* environment: {exc}", file=sys.stderr)
        return 2
    overrides = {k: v for k in ("config", "host", "port", "workers") if (v := getattr(args, k, None)) is not None}
    settings = settings.model_copy(update=overrides)
    if settings.config is None:
        print("gateway: no config file: pass --config PATH or set GATEWAY_CONFIG", file=sys.stderr)
        return 2
    try:
        config = load_config(settings.config)
    except ConfigError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        _print_summary(config)
        print("config OK")
        return 0
    return _serve(settings, config)


def _print_summary(config: GatewayConfig) -> None:
    print(f"keys: {', '.join(k.name for k in config.keys)}")
    print(f"usage ledger: {'redis' if config.redis_url else 'in process (no redis_url)'}")
    print("routes:")
    for line in Router(config).describe():
        print(f"  {line}")


def _serve(settings: Settings, config: GatewayConfig) -> int:
    import uvicorn

    from gateway.http.app import create_app

    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("gateway")
    for line in Router(config).describe():
        log.info("route %s", line)
    common = {
        "host": settings.host,
        "port": settings.port,
        "loop": "uvloop",
        "http": "httptools",
        "log_level": settings.log_level.lower(),
        "access_log": settings.access_log,
        "lifespan": "on",
        "timeout_graceful_shutdown": settings.shutdown_timeout,
    }
    if settings.workers == 1:
        uvicorn.run(create_app(settings, config), **common)  # type: ignore[arg-type]
    else:
        # Worker processes build their own app from the environment.
        os.environ["GATEWAY_CONFIG"] = str(settings.config)
        uvicorn.run("gateway.http.app:app_from_env", factory=True, workers=settings.workers, **common)  # type: ignore[arg-type]
    return 0
