"""Pure translation between the OpenAI shape clients speak and each upstream's wire format.

Nothing in this package does I/O or imports aiohttp, redis or fastapi.
"""

from __future__ import annotations

from gateway.config import UpstreamConfig
from gateway.dialects.anthropic import AnthropicDialect
from gateway.dialects.base import Dialect, StreamDecoder, Target, UpstreamRequest, Usage
from gateway.dialects.openai import OpenAIDialect
from gateway.dialects.vendors import PROFILES

OPENAI_DIALECTS: dict[str, Dialect] = {name: OpenAIDialect(profile) for name, profile in PROFILES.items()}
# The echo upstream answers in the OpenAI wire format and takes the fields as clients send them.
OTHER_DIALECTS: dict[str, Dialect] = {"echo": OPENAI_DIALECTS["generic"], "anthropic": AnthropicDialect()}


def dialect_for(upstream: UpstreamConfig) -> Dialect:
    if upstream.dialect == "openai":
        return OPENAI_DIALECTS[upstream.vendor]
    return OTHER_DIALECTS[upstream.dialect]


__all__ = ["Dialect", "StreamDecoder", "Target", "UpstreamRequest", "Usage", "dialect_for"]
