"""`gateway serve` and `gateway check-config`."""

from __future__ import annotations

import argparse
import logging
import logging.config
import os
import shutil
import signal
import sys
import tempfile
from typing import Any

from pydantic import ValidationError

from gateway import __version__, cli_keys, cli_usage
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

    cli_keys.add_parser(commands)
    cli_usage.add_parser(commands)

    args = parser.parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as exc:
        for error in exc.errors():
            name = "GATEWAY_" + "_".join(str(part) for part in error["loc"]).upper()
            shown = str(error.get("input"))[:40] if name != "GATEWAY_METRICS_TOKEN" else "(hidden)"
            print(f"gateway: {name}={shown}: {error['msg']}", file=sys.stderr)
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
    if args.command == "keys":
        return cli_keys.run(args, settings, config)
    if args.command == "usage":
        return cli_usage.run(args, settings, config)
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

    from gateway.observability.logs import log_config

    logging_config = log_config(settings.log_level, settings.log_format)
    logging.config.dictConfig(logging_config)
    log = logging.getLogger("gateway")
    for line in Router(config).describe():
        log.info("route %s", line)
    metrics_dir = _metrics_dir(settings.workers)
    # Imported only now: prometheus-client picks its multiprocess mode when it is first imported.
    from uvicorn.supervisors import Multiprocess

    from gateway.http.app import create_app
    from gateway.http.protocol import ServerConfig, connection_limits

    common: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "loop": "uvloop",
        "log_config": logging_config,
        "log_level": settings.log_level,
        "access_log": False,  # the gateway writes its own, one line per request
        # Nothing of the gateway's reads a client's address or scheme (the access log names the key,
        # not the peer): uvicorn's X-Forwarded-* rewriting is work on every request for nothing,
        # unless the operator named the proxies to trust (uvicorn's FORWARDED_ALLOW_IPS).
        "proxy_headers": "FORWARDED_ALLOW_IPS" in os.environ,
        "lifespan": "on",
        "timeout_graceful_shutdown": settings.shutdown_timeout,
        "limits": connection_limits(settings),
    }
    # uvicorn sends the signal that stopped it to itself again once it has shut down; after a clean
    # drain and shutdown the exit status should say so (0), not "killed by SIGTERM".
    signal.signal(signal.SIGTERM, _exit_cleanly)
    try:
        if settings.workers == 1:
            server = uvicorn.Server(ServerConfig(create_app(settings, config, serving=True), **common))
            server.run()
            if not server.started:  # could not bind, or the app's start-up failed (logged)
                return 3
        else:
            # Worker processes build their own app from the environment.
            os.environ["GATEWAY_CONFIG"] = str(settings.config)
            server_config = ServerConfig(
                "gateway.http.app:app_from_env", factory=True, workers=settings.workers, **common
            )
            Multiprocess(server_config, sockets=[server_config.bind_socket()]).run()
    except KeyboardInterrupt:
        pass
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _metrics_dir(workers: int) -> str | None:
    """Prepare prometheus-client's multiprocess directory; returns it when this process made it.

    Several workers each write their values there and `/metrics` sums them. A directory given in
    `PROMETHEUS_MULTIPROC_DIR` is used (with one worker too) and emptied first, as values of a
    previous run must not be added to this one's; otherwise, with several workers, a temporary one
    is made here and removed at exit.
    """
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        os.makedirs(given, exist_ok=True)
        for name in os.listdir(given):
            if name.endswith(".db"):
                os.remove(os.path.join(given, name))
        return None
    if workers == 1:
        return None
    made = tempfile.mkdtemp(prefix="gateway-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = made
    return made
