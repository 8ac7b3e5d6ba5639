"""Pure translation between the shapes clients speak and each upstream's wire format.

Nothing in this package does I/O or imports aiohttp, redis or fastapi.
"""

from __future__ import annotations

from gateway.config import UpstreamConfig
from gateway.dialects.base import Dialect, StreamDecoder, Target, UpstreamRequest, Usage
from gateway.dialects.registry import CHAT, EMBEDDINGS, Translator, translator_for


def dialect_for(upstream: UpstreamConfig) -> Dialect:
    """The chat completions translator of an upstream (every upstream has one)."""
    found = translator_for(CHAT, upstream)
    assert found is not None
    return found


__all__ = [
    "CHAT",
    "EMBEDDINGS",
    "Dialect",
    "StreamDecoder",
    "Target",
    "Translator",
    "UpstreamRequest",
    "Usage",
    "dialect_for",
    "translator_for",
]
