"""What every dialect provides, and the plain values passed between dialects and transports."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from gateway.config import ModelOptions, UpstreamConfig
from gateway.errors import UpstreamStatusError
from gateway.request import ChatRequest
from gateway.types import JSON


@dataclass(frozen=True, slots=True)
class Target:
    """Where a request goes: the upstream, the model name it knows, the model's options."""

    upstream: UpstreamConfig
    model: str
    options: ModelOptions


@dataclass(slots=True)
class UpstreamRequest:
    """One HTTP request to an upstream, fully built: the transport sends it as it is."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes
    upstream: str  # config name, for messages and logs
    dropped: tuple[str, ...] = ()  # client parameters this upstream cannot take
    connect_timeout: float | None = None  # seconds; None: the transport's own
    read_timeout: float | None = None  # the longest gap between two reads of the body


@dataclass(slots=True)
class Usage:
    """Every count an upstream reports. `prompt_tokens` includes cached and cache-written tokens;
    the detail counts are parts of the prompt or the completion, not additions to them."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    billed_units: float | None = None
    cache_write_tokens: int = 0
    audio_tokens: int = 0  # prompt and completion audio
    image_tokens: int = 0
    video_tokens: int = 0
    citation_tokens: int = 0
    accepted_prediction_tokens: int = 0
    rejected_prediction_tokens: int = 0
    estimated: bool = False  # counted by the gateway (the upstream reported none), not the upstream


@dataclass(slots=True)
class DecodedReply:
    body: bytes  # the OpenAI chat.completion, serialized
    usage: Usage | None
    # Messages to add for another round with the upstream, which the gateway runs itself (a tool the
    # upstream provides and the caller must answer: Kimi's $web_search); None: the reply is complete.
    turn: list[JSON] | None = None


def added(spent: Usage | None, usage: Usage | None) -> Usage | None:
    """The usage of two rounds of one request, together."""
    if spent is None or usage is None:
        return usage or spent
    total = Usage(**{f: getattr(spent, f) + getattr(usage, f) for f in _COUNTS})
    total.billed_units = (spent.billed_units or 0) + (usage.billed_units or 0) or None
    total.estimated = spent.estimated or usage.estimated
    return total


_COUNTS = tuple(f for f in Usage.__dataclass_fields__ if f not in ("billed_units", "estimated"))


class RoundTrip(Protocol):
    """A stream decoder that can ask for another round with the upstream (see `DecodedReply.turn`)."""

    def take_turn(self) -> list[JSON] | None:
        """After `finish`: the messages for the next round, and the decoder made ready for it; or None."""
        ...

    def end(self) -> None:
        """The stream is over, however it ended: a round whose usage never came is estimated."""
        ...


class StreamDecoder(Protocol):
    """Created per request; fed upstream bytes as they come, returns client SSE events ready to send."""

    @property
    def usage(self) -> Usage | None:
        """The usage the upstream reported so far."""
        ...

    text_chars: int  # characters of generated text relayed so far

    def feed(self, data: bytes) -> list[bytes]:
        """Whole client SSE events, ready to send; an element may hold several (a chunk relayed as it came)."""
        ...

    def finish(self) -> list[bytes]:
        """Called when the upstream body ended; raises if it ended before the reply was complete."""
        ...


class Dialect(Protocol):
    def build_request(self, request: ChatRequest, target: Target) -> UpstreamRequest: ...

    def decode_reply(self, body: bytes, request: ChatRequest) -> DecodedReply: ...

    def stream_decoder(self, request: ChatRequest) -> StreamDecoder: ...

    def decode_error(
        self, status: int, body: bytes, headers: dict[str, str], upstream: UpstreamConfig
    ) -> UpstreamStatusError: ...


@dataclass(slots=True)
class ErrorParts:
    message: str
    type: str | None = None
    code: str | None = None
    param: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


_FORWARDED_ERROR_HEADERS = ("retry-after", "retry-after-ms")
_URL = re.compile(r"\b(?:https?|wss?)://[^\s'\"<>]+", re.IGNORECASE)
_SECRETISH = re.compile(r"\b(sk|pk|rk|key)-[A-Za-z0-9_*\-]{6,}", re.IGNORECASE)


def upstream_status_error(
    status: int, parts: ErrorParts, headers: dict[str, str], upstream: UpstreamConfig
) -> UpstreamStatusError:
    """The error a client sees for an upstream's non-2xx answer.

    A client mistake the upstream caught keeps its 4xx status. The upstream refusing the gateway's own
    credentials (401/403) is the operator's problem, not the caller's, so it becomes a 502.
    Upstream 5xx become 502, except 503 and 504 which keep their meaning.
    """
    message = redact(parts.message, upstream)
    kind, code = parts.type, parts.code
    if status in (401, 403):
        client_status, kind, code = 502, "upstream_error", "upstream_auth_failed"
        message = f"The upstream `{upstream.name}` rejected the gateway's credentials (HTTP {status})."
    elif status == 404 and not _about_the_request(parts):
        # Not the client's model missing but the address: the upstream's base_url is wrong.
        client_status, kind, code = 502, "upstream_error", ENDPOINT_NOT_FOUND
        message = f"The upstream `{upstream.name}` has no such endpoint (HTTP 404); the gateway's config is wrong."
    elif status == 429:
        client_status, kind = 429, kind or "rate_limit_error"
    elif 400 <= status < 500:
        client_status, kind = status, kind or "invalid_request_error"
    elif status in (503, 504, 529):  # 529: Anthropic's "overloaded"
        client_status, kind = 503 if status == 529 else status, "upstream_error"
    else:
        client_status, kind = 502, "upstream_error"
    forwarded = [(name.encode(), headers[name].encode()) for name in _FORWARDED_ERROR_HEADERS if name in headers]
    err = UpstreamStatusError(
        f"{message}" if status < 500 else f"The upstream `{upstream.name}` failed (HTTP {status}): {message}",
        status=client_status,
        type=kind,
        code=code,
        param=parts.param,
        headers=forwarded,
    )
    err.upstream_status = status
    return err


def decode_error(status: int, body: bytes, headers: dict[str, str], upstream: UpstreamConfig) -> UpstreamStatusError:
    """An upstream's non-2xx answer, whatever the shape of its error body: the `decode_error` of
    every translator (`decode_error = staticmethod(decode_error)`)."""
    return upstream_status_error(status, error_parts(body), headers, upstream)


ENDPOINT_NOT_FOUND = "upstream_endpoint_not_found"


def _about_the_request(parts: ErrorParts) -> bool:
    """Whether an upstream's 404 says something the client named does not exist (the model, or a
    parameter's target such as a `previous_response_id`) rather than that the path does not (a wrong
    base_url)."""
    return parts.code == "model_not_found" or parts.param is not None or "model" in parts.message.lower()


def redact(text: str, upstream: UpstreamConfig) -> str:
    """Remove the upstream's key, and anything shaped like a key, from text bound for a client."""
    if upstream.api_key is not None:
        secret = upstream.api_key.get_secret_value()
        if secret:
            text = text.replace(secret, "[redacted]")
    text = _SECRETISH.sub("[redacted]", text)
    # Upstream addresses are the operator's business: an upstream quoting its own URL names nothing here.
    text = _URL.sub("[upstream url]", text)
    return text[:2000]


def error_parts(body: bytes) -> ErrorParts:
    """The message, type, code and param of an upstream error body, whatever its exact shape."""
    try:
        obj = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        obj = None
    parts = _parts_of(obj)
    if parts is not None:
        return parts
    text = body.decode("utf-8", "replace").strip()
    return ErrorParts(text[:300] or "empty reply")


def embedded_error(obj: dict[str, Any], upstream_status: int = 502) -> UpstreamStatusError:
    """An error the upstream reported inside a 2xx reply or stream (OpenAI or Anthropic shape)."""
    parts = _parts_of(obj) or ErrorParts("no message")
    err = UpstreamStatusError(
        f"The upstream reported an error: {parts.message}",
        type=parts.type or "upstream_error",
        code=parts.code,
        status=503 if upstream_status in (503, 529) else 502,
    )
    err.upstream_status = upstream_status
    return err


def _parts_of(obj: Any) -> ErrorParts | None:
    if not isinstance(obj, dict):
        return None
    err = obj.get("error", obj)
    if isinstance(err, str):
        return ErrorParts(err)
    if not isinstance(err, dict):
        return None
    message = err.get("message") or err.get("msg") or err.get("detail") or "no message"
    return ErrorParts(
        str(message), type=_text(err.get("type")), code=_text(err.get("code")), param=_text(err.get("param"))
    )


def _text(value: Any) -> str | None:
    return None if value is None else str(value)
