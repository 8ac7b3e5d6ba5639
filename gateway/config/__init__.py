"""The YAML config: upstreams, models and keys."""

from gateway.config.loader import ConfigError, load_config, parse_config
from gateway.config.model import (
    GatewayConfig,
    KeyConfig,
    ModelConfig,
    ModelLimit,
    ModelOptions,
    Price,
    Timeouts,
    UpstreamConfig,
)

__all__ = [
    "ConfigError",
    "GatewayConfig",
    "KeyConfig",
    "ModelConfig",
    "ModelLimit",
    "ModelOptions",
    "Price",
    "Timeouts",
    "UpstreamConfig",
    "load_config",
    "parse_config",
]
