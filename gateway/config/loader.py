"""Reading the YAML config: `${VAR}` interpolation, validation, messages that name the field."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from gateway.config.model import GatewayConfig

# ${VAR} or ${VAR:-default}; `$${` is a literal `${`.
_VAR = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """The config file cannot be used; the message names the field and what is wrong with it."""


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> GatewayConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror or exc}") from None
    return parse_config(text, env=env, source=str(path))


def parse_config(text: str, env: Mapping[str, str] | None = None, source: str = "<config>") -> GatewayConfig:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping with keys, upstreams and models")
    data = _interpolate(raw, os.environ if env is None else env, (), source)
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from None


def _interpolate(value: Any, env: Mapping[str, str], loc: tuple[str | int, ...], source: str) -> Any:
    if isinstance(value, str):
        return _substitute(value, env, loc, source)
    if isinstance(value, dict):
        return {k: _interpolate(v, env, (*loc, str(k)), source) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, env, (*loc, i), source) for i, v in enumerate(value)]
    return value


def _substitute(text: str, env: Mapping[str, str], loc: tuple[str | int, ...], source: str) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$${":
            return "${"
        name, default = match.group(1), match.group(2)
        found = env.get(name)
        if found:
            return found
        if default is not None:
            return default
        if found is not None:
            return found
        raise ConfigError(
            f"{source}: {_path(loc)}: environment variable `{name}` is not set "
            f"(write `${{{name}:-}}` to allow it to be empty)"
        )

    return _VAR.sub(replace, text)


def _describe(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid config:"]
    for err in exc.errors():
        loc = err["loc"]
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field (check its spelling)"
        elif err["type"] == "missing":
            msg = "required field is missing"
        where = _path(loc)
        lines.append(f"  {where}: {msg}" if where else f"  {msg}")
    return "\n".join(lines)


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out
