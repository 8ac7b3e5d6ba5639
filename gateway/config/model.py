"""The shape of the YAML config file."""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from fnmatch import fnmatchcase
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

Dialect = Literal["openai", "anthropic", "dashscope", "echo"]
Vendor = Literal[
    "openai", "deepseek", "qwen", "zhipu", "doubao", "moonshot", "gemini", "vllm", "sglang", "generic"
]  # fmt: skip
BudgetPeriod = Literal["day", "month", "total"]
Effort = Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"]
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
# The largest rpm or tpm: counts stay exact in Lua's numbers (doubles) far beyond it.
MAX_LIMIT = 10**12
KEY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]*$")
# Set per connection by the HTTP client itself; configuring them would break or smuggle requests.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)


def check_key_name(value: str) -> str:
    """A key's name becomes part of Redis keys (and their hash tag)."""
    if not KEY_NAME.match(value):
        raise ValueError("use letters, digits and `_.@-` only (the name is part of Redis keys)")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelLimit(_Strict):
    """Requests and tokens per minute for one key on the models a pattern matches."""

    model: str = Field(min_length=1, max_length=200, description="A model name or glob pattern.")
    rpm: int | None = Field(default=None, ge=1, le=MAX_LIMIT)
    tpm: int | None = Field(default=None, ge=1, le=MAX_LIMIT)

    @model_validator(mode="after")
    def _some_limit(self) -> ModelLimit:
        if self.rpm is None and self.tpm is None:
            raise ValueError("give `rpm`, `tpm` or both")
        return self


def _price(description: str, default: float | None = 0.0) -> Any:
    return Field(default=default, ge=0, le=1e9, allow_inf_nan=False, description=description)


class Price(_Strict):
    """What a model costs, in the currency budgets are in (USD for the billing endpoints)."""

    model: str = Field(min_length=1, description="A model name or glob pattern; the first entry that matches wins.")
    input: float = _price("Per million prompt tokens (not cached).")
    cached_input: float | None = _price("Per million cached prompt tokens; default: the input price.", None)
    output: float = _price("Per million completion tokens (reasoning included).")
    request: float = _price("Per request.")
    billed_unit: float = _price("Per `billed_units` an upstream reports.")


class KeyConfig(_Strict):
    name: str = Field(
        min_length=1, max_length=64, description="Letters, digits and `_.@-`: it becomes part of Redis keys."
    )
    key: SecretStr | None = None
    key_sha256: str | None = None
    models: list[str] | None = Field(
        default=None, description="Model names or glob patterns this key may use; all when absent."
    )
    team: str | None = Field(default=None, max_length=64)
    rpm: int | None = Field(default=None, ge=1, le=MAX_LIMIT, description="Requests per minute, across every replica.")
    tpm: int | None = Field(default=None, ge=1, le=MAX_LIMIT, description="Tokens per minute, across every replica.")
    budget: float | None = Field(
        default=None, ge=0, le=1e15, allow_inf_nan=False, description="Spending limit per budget period (cost units)."
    )
    budget_period: BudgetPeriod = "month"
    model_limits: list[ModelLimit] = Field(
        default_factory=list, description="rpm/tpm on this key for the models a pattern matches, on top of rpm/tpm."
    )
    expires: datetime | None = Field(default=None, description="When the key stops working (ISO 8601).")
    metadata: dict[str, str] = Field(default_factory=dict)

    _name_chars = field_validator("name")(check_key_name)

    @field_validator("key")
    @classmethod
    def _key_not_empty(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value():
            raise ValueError("is empty (set the variable it comes from, or use key_sha256)")
        return value

    @field_validator("key_sha256")
    @classmethod
    def _is_hex_digest(cls, value: str | None) -> str | None:
        if value is not None and not _HEX64.match(value):
            raise ValueError("must be the 64 hex digits of a SHA-256 digest")
        return value.lower() if value else value

    @model_validator(mode="after")
    def _exactly_one_secret(self) -> KeyConfig:
        if (self.key is None) == (self.key_sha256 is None):
            raise ValueError("give exactly one of `key` or `key_sha256`")
        return self

    def digest(self) -> bytes:
        if self.key is not None:
            return hashlib.sha256(self.key.get_secret_value().encode()).digest()
        assert self.key_sha256 is not None
        return bytes.fromhex(self.key_sha256)


class UpstreamConfig(_Strict):
    name: str = Field(min_length=1)
    dialect: Dialect
    vendor: Vendor = Field(
        default="generic", description="openai dialect only: whose fields to write (see dialects/vendors.py)."
    )
    unsupported_params: Literal["drop", "reject"] = Field(
        default="drop",
        description="A parameter this upstream cannot take: drop it (listed in x-gateway-dropped-params) or 400.",
    )
    responses_api: bool | None = Field(
        default=None,
        description="openai dialect only: whether the upstream serves OpenAI's Responses API itself, so "
        "`/v1/responses` goes through as sent (with `store` and `previous_response_id`) rather than as chat. "
        "Default: the vendor profile's (openai and doubao yes).",
    )
    base_url: str | None = None
    api_key: SecretStr | None = Field(
        default=None, description="Sent upstream as a bearer token. Set but empty: the upstream is disabled."
    )
    headers: dict[str, str] = Field(default_factory=dict, description="Extra headers sent upstream.")
    echo_delay_ms: float = Field(default=0.0, ge=0, description="echo only: pause between streamed chunks.")
    timeouts: Timeouts = Field(default_factory=lambda: Timeouts(), description="Per phase, over the settings.")

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("headers")
    @classmethod
    def _no_hop_by_hop(cls, value: dict[str, str]) -> dict[str, str]:
        bad = sorted(name for name in value if name.lower() in HOP_BY_HOP)
        if bad:
            raise ValueError(f"{', '.join(bad)} cannot be configured: the HTTP client sets it per connection")
        return value

    @model_validator(mode="after")
    def _base_url_when_needed(self) -> UpstreamConfig:
        if self.dialect != "echo" and self.base_url is None:
            raise ValueError(f"`base_url` is required for dialect `{self.dialect}`")
        return self

    @property
    def enabled(self) -> bool:
        return self.api_key is None or bool(self.api_key.get_secret_value())


class Timeouts(_Strict):
    """Seconds each phase of an upstream call may take; what is not given comes from the upstream's
    entry, then from the `GATEWAY_UPSTREAM_*_TIMEOUT` settings."""

    connect: float | None = Field(default=None, gt=0, description="To open the connection.")
    headers: float | None = Field(default=None, gt=0, description="From sending the request to the response headers.")
    first_token: float | None = Field(default=None, gt=0, description="Streams: from the headers to the first event.")
    idle: float | None = Field(default=None, gt=0, description="The longest gap between two reads of the body.")
    total: float | None = Field(default=None, gt=0, description="The whole attempt, stream included.")

    def over(self, base: Timeouts) -> Timeouts:
        """These timeouts, with `base` where these give none."""
        return Timeouts(**{**base.model_dump(), **self.model_dump(exclude_none=True)})


class ModelOptions(_Strict):
    """Where vendors differ by model rather than by API."""

    thinking: Literal["budget", "adaptive"] | None = Field(
        default=None,
        description="anthropic: `budget` (thinking.type enabled + budget_tokens, Claude up to 4.5) or "
        "`adaptive` (thinking.type adaptive + output_config.effort, Claude 4.6 and later).",
    )
    efforts: list[Effort] | None = Field(
        default=None, description="Reasoning efforts this model accepts; others are clamped to the nearest."
    )
    budget_range: tuple[int, int] | None = Field(
        default=None, description="[min, max] thinking budget in tokens this model accepts."
    )
    max_tokens: int | None = Field(
        default=None, ge=1, description="Output cap sent when the client gives none (Anthropic requires one)."
    )
    search: bool | None = Field(
        default=None,
        description="Whether `enable_search` reaches this model. Default: where the vendor documents a way "
        "(Qwen, GLM, Anthropic), not OpenAI (only its search models take `web_search_options`).",
    )


class ModelConfig(_Strict):
    name: str = Field(min_length=1, description="What clients send; glob patterns such as `claude-*` allowed.")
    upstream: str = Field(min_length=1)
    upstream_model: str | None = Field(default=None, description="The name sent upstream; default: `name`.")
    weight: float = Field(default=1.0, gt=0, description="Share of traffic among deployments of one name.")
    options: ModelOptions = Field(default_factory=ModelOptions)
    timeouts: Timeouts = Field(default_factory=Timeouts, description="Per phase, over the upstream's.")
    fallbacks: list[str] = Field(
        default_factory=list,
        description="Models tried, in order, when every deployment of this one failed (retryable failures).",
    )
    context_fallbacks: list[str] = Field(
        default_factory=list,
        description="Models with a larger context window, tried when an upstream says the input is too long.",
    )

    @property
    def is_pattern(self) -> bool:
        return any(ch in self.name for ch in "*?[")


class GatewayConfig(_Strict):
    redis_url: str | None = None
    keys: list[KeyConfig] = Field(min_length=1)
    upstreams: list[UpstreamConfig] = Field(min_length=1)
    models: list[ModelConfig] = Field(min_length=1)
    prices: list[Price] = Field(default_factory=list, description="Cost per model, for the ledger and budgets.")

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if not value:
            return None
        if not re.match(r"^(redis|rediss|unix)://", value):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @model_validator(mode="after")
    def _references(self) -> GatewayConfig:
        _unique("keys", [k.name for k in self.keys])
        _unique("upstreams", [u.name for u in self.upstreams])
        digests = [k.digest() for k in self.keys]
        if len(set(digests)) != len(digests):
            raise ValueError("keys: two entries have the same secret")
        known = {u.name for u in self.upstreams}
        names = {m.name for m in self.models}
        for i, model in enumerate(self.models):
            if model.upstream not in known:
                raise ValueError(
                    f"models[{i}].upstream: unknown upstream `{model.upstream}` (known: {', '.join(sorted(known))})"
                )
            for field in ("fallbacks", "context_fallbacks"):
                for j, name in enumerate(getattr(model, field)):
                    if name == model.name or not any(fnmatchcase(name, n) for n in names):
                        raise ValueError(f"models[{i}].{field}[{j}]: `{name}` is not another model of this config")
        return self


def _unique(section: str, names: list[str]) -> None:
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            raise ValueError(f"{section}[{i}].name: `{name}` is used twice")
        seen.add(name)
