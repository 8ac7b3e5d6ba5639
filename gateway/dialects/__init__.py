"""Pure translation between the OpenAI shape clients speak and each upstream's wire format.

Nothing in this package does I/O or imports aiohttp, redis or fastapi.
"""

from __future__ import annotations

from gateway.dialects.base import Dialect, StreamDecoder, UpstreamRequest, Usage
from gateway.dialects.openai import OpenAIDialect

_OPENAI = OpenAIDialect()

# The echo upstream answers in the OpenAI wire format, so it shares that dialect.
DIALECTS: dict[str, Dialect] = {"openai": _OPENAI, "echo": _OPENAI}


def dialect_for(name: str) -> Dialect:
    return DIALECTS[name]


__all__ = ["DIALECTS", "Dialect", "StreamDecoder", "UpstreamRequest", "Usage", "dialect_for"]
