"""Which translator speaks a client API to an upstream: a plain lookup on (client API, upstream kind).

An upstream's kind is its vendor profile for the `openai` dialect, else its dialect (`anthropic`,
`dashscope`, `echo`). A pair that is not in the table is an API the upstream does not serve. One
exception to the plain lookup: the Responses API goes through as sent to an upstream that has it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from gateway.config import UpstreamConfig
from gateway.dialects.anthropic import AnthropicDialect
from gateway.dialects.anthropic_passthrough import AnthropicPassthrough
from gateway.dialects.base import DecodedReply, Target, UpstreamRequest
from gateway.dialects.dashscope import DashScopeDialect
from gateway.dialects.embeddings import EmbeddingsTranslator
from gateway.dialects.messages_over_chat import MessagesOverChat
from gateway.dialects.openai import OpenAIDialect
from gateway.dialects.openai import error_events as openai_error_events
from gateway.dialects.responses_over_chat import ResponsesOverChat
from gateway.dialects.responses_passthrough import ResponsesPassthrough
from gateway.dialects.vendors import PROFILES
from gateway.errors import GatewayError, UpstreamStatusError
from gateway.protocol.messages import error_events as messages_error_events
from gateway.protocol.responses import error_events as responses_error_events

CHAT = "chat.completions"
EMBEDDINGS = "embeddings"
MESSAGES = "messages"  # Anthropic's Messages API, in
RESPONSES = "responses"  # OpenAI's Responses API, in (stateless)
APIS = (CHAT, EMBEDDINGS, MESSAGES, RESPONSES)  # the client APIs, as `GET /v1/models` lists them

# How a stream that has started ends in an error, in each client API's own shape.
STREAM_ERRORS: dict[str, Callable[[GatewayError], bytes]] = {
    CHAT: openai_error_events,
    MESSAGES: messages_error_events,
    RESPONSES: responses_error_events,
}


class Translator(Protocol):
    """Builds one client request for one upstream and decodes what comes back (pure)."""

    def build_request(self, request: Any, target: Target) -> UpstreamRequest: ...

    def decode_reply(self, body: bytes, request: Any) -> DecodedReply: ...

    def stream_decoder(self, request: Any) -> Any: ...

    def decode_error(
        self, status: int, body: bytes, headers: dict[str, str], upstream: UpstreamConfig
    ) -> UpstreamStatusError: ...


def _table() -> dict[tuple[str, str], Translator]:
    table: dict[tuple[str, str], Translator] = {}
    embeddings = EmbeddingsTranslator()
    for vendor, profile in PROFILES.items():
        table[(CHAT, vendor)] = OpenAIDialect(profile)
        table[(EMBEDDINGS, vendor)] = embeddings
        table[(MESSAGES, vendor)] = MessagesOverChat(table[(CHAT, vendor)])
        table[(RESPONSES, vendor)] = ResponsesOverChat(table[(CHAT, vendor)])
    # The echo upstream answers in the OpenAI wire format and takes the fields as clients send them.
    table[(CHAT, "echo")] = table[(CHAT, "generic")]
    table[(EMBEDDINGS, "echo")] = embeddings
    table[(MESSAGES, "echo")] = table[(MESSAGES, "generic")]
    table[(RESPONSES, "echo")] = table[(RESPONSES, "generic")]
    table[(CHAT, "dashscope")] = DashScopeDialect()
    table[(MESSAGES, "dashscope")] = MessagesOverChat(table[(CHAT, "dashscope")])
    table[(RESPONSES, "dashscope")] = ResponsesOverChat(table[(CHAT, "dashscope")])
    table[(CHAT, "anthropic")] = AnthropicDialect()
    table[(MESSAGES, "anthropic")] = AnthropicPassthrough()
    return table


TRANSLATORS = _table()


def upstream_kind(upstream: UpstreamConfig) -> str:
    return upstream.vendor if upstream.dialect == "openai" else upstream.dialect


RESPONSES_PASSTHROUGH = ResponsesPassthrough()


def translator_for(api: str, upstream: UpstreamConfig) -> Translator | None:
    if api == RESPONSES and native_responses(upstream):
        return RESPONSES_PASSTHROUGH
    return TRANSLATORS.get((api, upstream_kind(upstream)))


def native_responses(upstream: UpstreamConfig) -> bool:
    """Whether the upstream serves the Responses API itself: its config says, else its vendor profile."""
    if upstream.dialect != "openai":
        return False
    if upstream.responses_api is not None:
        return upstream.responses_api
    return PROFILES[upstream.vendor].responses
