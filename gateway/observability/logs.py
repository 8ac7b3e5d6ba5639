"""Structured logs: one line per request (the access log) and every other line in the same format.

`GATEWAY_LOG_FORMAT=json` (the default) writes one JSON object per line on standard output;
`text` writes a readable line for development. Every line logged while a request is being handled
carries its `request_id`. Keys and credentials are never logged: the access log names the key,
and upstream messages are redacted before they reach any log. Prompt and completion text are
logged only with `GATEWAY_LOG_CONTENT=true`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import select
import time
from typing import Any

import orjson

from gateway.relay.exchange import Exchange, Observer, request_id

ACCESS_LOGGER = "gateway.access"


class _Clock:
    """ISO-8601 UTC timestamps with milliseconds; the part up to the second is formatted once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._second, self._prefix = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int(created % 1 * 1000):03d}Z"


def _base(record: logging.LogRecord, clock: _Clock) -> dict[str, Any]:
    out: dict[str, Any] = {
        "ts": clock(record.created),
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": record.getMessage().rstrip(),
    }
    rid = request_id.get()
    if rid is not None:
        out["request_id"] = rid
    return out


def json_line(out: dict[str, Any]) -> bytes:
    return orjson.dumps(out, default=str, option=orjson.OPT_APPEND_NEWLINE)


def text_line(out: dict[str, Any]) -> str:
    head = f"{out['ts']} {out['level'].upper():<7} {out['logger']}: {out['msg']}"
    pairs = " ".join(f"{k}={_text(v)}" for k, v in out.items() if k not in _HEAD and v is not None)
    return f"{head} {pairs}" if pairs else head


_HEAD = frozenset({"ts", "level", "logger", "msg"})
_BARE = re.compile(r"[\w.:/@*?\[\]-]+")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: `ts`, `level`, `logger`, `msg`, `request_id` when there is one."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._clock = _Clock()

    def format(self, record: logging.LogRecord) -> str:
        out = _base(record, self._clock)
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json_line(out)[:-1].decode()


class TextFormatter(logging.Formatter):
    """`<ts> <LEVEL> <logger>: <message> key=value ...`, for reading in a terminal."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._clock = _Clock()

    def format(self, record: logging.LogRecord) -> str:
        line = text_line(_base(record, self._clock))
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _text(value: Any) -> str:
    if isinstance(value, str):
        # Bare when that cannot be misread; quoted (and escaped: no line breaks) otherwise.
        return value if _BARE.fullmatch(value) else orjson.dumps(value).decode()
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
            "uvicorn": {"handlers": ["stdout"], "level": level.upper(), "propagate": False},
            "uvicorn.error": {"level": level.upper()},
            # The gateway's access log replaces uvicorn's.
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
        },
    }


class AccessLog(Observer):
    """Writes one line per finished exchange, every field present (null when it has no value).

    Lines have the format of the other log lines but skip the logging module's per-record work,
    as this runs for every request. The exchanges that finish in one turn of the event loop are
    written together at the start of its next turn: one system call for many requests under load,
    and never later than that.
    """

    def __init__(self, fmt: str = "json", fd: int = 1) -> None:
        self._json = fmt == "json"
        self._fd = fd
        self._clock = _Clock()
        self._pending: list[Exchange] = []
        self.dropped = 0  # lines that could not be written

    def finished(self, exchange: Exchange) -> None:
        self._pending.append(exchange)
        if len(self._pending) == 1:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no event loop here: write at once
                self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        lines = [self._line(exchange) for exchange in pending]
        # Workers share standard output; under a container it is a pipe, where writes of at most
        # PIPE_BUF bytes are never interleaved with another process's: lines go out in such pieces.
        piece: list[bytes] = []
        size = 0
        for line in lines:
            if piece and size + len(line) > select.PIPE_BUF:
                self._write(b"".join(piece))
                piece, size = [], 0
            piece.append(line)
            size += len(line)
        self._write(b"".join(piece))

    def _line(self, exchange: Exchange) -> bytes:
        out = access_record(exchange, self._clock(exchange.at + (exchange.duration or 0.0)))
        try:
            return json_line(out) if self._json else (text_line(out) + "\n").encode()
        except TypeError:  # logged content that cannot be written out (nested too deeply)
            for name in exchange.content or ():
                out[name] = "(not loggable)"
            return json_line(out) if self._json else (text_line(out) + "\n").encode()

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            # Standard output is gone or full: nothing sensible to do with the lines but count them.
            self.dropped += bytes(view).count(b"\n")
            if self.dropped == bytes(view).count(b"\n"):
                logging.getLogger("gateway").error("access log lines cannot be written: %s", exc)


def _capped(text: str | None, limit: int = 256) -> str | None:
    """A client's own string, cut to a sane length for a log line."""
    return text if text is None or len(text) <= limit else text[:limit] + "..."


def access_record(exchange: Exchange, ts: str) -> dict[str, Any]:
    """The access log line of a finished exchange, as written (one dict built at once: this runs per request)."""
    usage = exchange.usage
    last = exchange.attempts[-1] if exchange.attempts else None
    fields: dict[str, Any] = {
        "ts": ts,
        "level": "info",
        "logger": ACCESS_LOGGER,
        "msg": "request",
        "request_id": exchange.request_id,
        "endpoint": exchange.endpoint,
        "key": exchange.key_name,
        "team": exchange.team,
        "model": _capped(exchange.model),
        "route": exchange.route,
        "served_model": exchange.served_model,
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
        "usage_estimated": usage.estimated if usage else None,
        "cost": exchange.cost,
        "attempts": len(exchange.attempts),
        "attempt_outcomes": [a.outcome for a in exchange.attempts],
        "cooldowns": sum(1 for a in exchange.attempts if a.cooldown),
        "client_disconnected": exchange.client_disconnected,
    }
    if exchange.content is not None:
        fields.update(exchange.content)
    return fields
