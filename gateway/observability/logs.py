"""Structured logs: one line per request (the access log) and every other line in the same format.

`GATEWAY_LOG_FORMAT=json` (the default) writes one JSON object per line on standard output;
`text` writes a readable line for development. Every line logged while a request is being handled
carries its `request_id`. Keys and credentials are never logged: the access log names the key,
and upstream messages are redacted before they reach any log. Prompt and completion text are
logged only with `GATEWAY_LOG_CONTENT=true`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson

from gateway.relay.exchange import Exchange, Observer, request_id

ACCESS_LOGGER = "gateway.access"


def _timestamp(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"


def _base(record: logging.LogRecord) -> dict[str, Any]:
    out: dict[str, Any] = {
        "ts": _timestamp(record.created),
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    rid = request_id.get()
    if rid is not None:
        out["request_id"] = rid
    fields = getattr(record, "fields", None)
    if fields:
        out.update(fields)
    return out


class JsonFormatter(logging.Formatter):
    """One JSON object per line; the access log's fields at the top level."""

    def format(self, record: logging.LogRecord) -> str:
        out = _base(record)
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


class TextFormatter(logging.Formatter):
    """`<ts> <LEVEL> <logger>: <message> key=value ...`, for reading in a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        out = _base(record)
        head = f"{out.pop('ts')} {out.pop('level').upper():<7} {out.pop('logger')}: {out.pop('msg')}"
        pairs = " ".join(f"{k}={_text(v)}" for k, v in out.items() if v is not None)
        line = f"{head} {pairs}" if pairs else head
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value if value and " " not in value else orjson.dumps(value).decode()
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return str(value)


def log_config(level: str, fmt: str) -> dict[str, Any]:
    """A `logging.config.dictConfig` for the gateway and uvicorn (uvicorn applies it in every worker)."""
    formatter = "json" if fmt == "json" else "text"
    handler = {"class": "logging.StreamHandler", "formatter": formatter, "stream": "ext://sys.stdout"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "json": {"()": f"{__name__}.JsonFormatter"},
            "text": {"()": f"{__name__}.TextFormatter"},
        },
        "handlers": {"stdout": handler},
        "loggers": {
            "gateway": {"handlers": ["stdout"], "level": level.upper(), "propagate": False},
            # The access log is a record of requests: on whatever the level of the rest.
            ACCESS_LOGGER: {"handlers": ["stdout"], "level": "INFO", "propagate": False},
            "uvicorn": {"handlers": ["stdout"], "level": level.upper(), "propagate": False},
            "uvicorn.error": {"level": level.upper()},
            # The gateway's access log replaces uvicorn's.
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
        },
    }


class AccessLog(Observer):
    """Writes one line per finished exchange, with every field present (null when it has no value)."""

    def __init__(self) -> None:
        self._log = logging.getLogger(ACCESS_LOGGER)

    def finished(self, exchange: Exchange) -> None:
        if not self._log.isEnabledFor(logging.INFO):
            return
        self._log.info("request", extra={"fields": access_fields(exchange)})


def access_fields(exchange: Exchange) -> dict[str, Any]:
    usage = exchange.usage
    last = exchange.attempts[-1] if exchange.attempts else None
    fields: dict[str, Any] = {
        "request_id": exchange.request_id,
        "endpoint": exchange.endpoint,
        "key": exchange.key_name,
        "model": exchange.model,
        "route": exchange.route,
        "upstream": last.upstream if last else None,
        "deployment": f"{last.upstream}/{last.model}" if last else None,
        "status": exchange.status,
        "error_code": exchange.error_code,
        "stream": exchange.stream,
        "latency_s": round(exchange.duration or 0.0, 6),
        "ttft_s": None if exchange.first_byte_after is None else round(exchange.first_byte_after, 6),
        "prompt_tokens": usage.prompt_tokens if usage else None,
        "completion_tokens": usage.completion_tokens if usage else None,
        "total_tokens": usage.total_tokens if usage else None,
        "cached_tokens": usage.cached_tokens if usage else None,
        "reasoning_tokens": usage.reasoning_tokens if usage else None,
        "billed_units": usage.billed_units if usage else None,
        "attempts": len(exchange.attempts),
        "attempt_outcomes": [a.outcome for a in exchange.attempts],
        "client_disconnected": exchange.client_disconnected,
    }
    if exchange.content is not None:
        fields.update(exchange.content)
    return fields
