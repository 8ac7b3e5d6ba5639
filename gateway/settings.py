"""Process settings, read from `GATEWAY_*` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore")

    config: Path | None = Field(default=None, description="Path of the YAML config file.")
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    workers: int = Field(default=1, ge=1)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = Field(default="json", description="JSON lines, or readable text.")
    access_log: bool = Field(default=True, description="One log line per request.")
    log_content: bool = Field(
        default=False, description="Put prompt and completion text in the access log (off: never logged)."
    )
    metrics: bool = Field(default=True, description="Prometheus metrics at /metrics.")
    metrics_token: SecretStr | None = Field(
        default=None, description="When set (not empty), /metrics wants `Authorization: Bearer <token>`."
    )
    shutdown_timeout: float = Field(
        default=30.0, gt=0, description="Seconds open streams may take to finish after SIGTERM."
    )
    drain_seconds: float = Field(
        default=5.0, ge=0, description="After SIGTERM: seconds of not-ready serving before shutdown starts."
    )

    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024, description="Largest request body accepted.")
    max_header_bytes: int = Field(
        default=64 * 1024, ge=1024, description="Largest request head (request line and headers) accepted."
    )
    header_timeout: float = Field(
        default=10.0, gt=0, description="Longest a client may take to send a request's line and headers."
    )
    body_timeout: float = Field(
        default=30.0, gt=0, description="Longest gap between the pieces of a request body that is still arriving."
    )
    max_attempts: int = Field(default=3, ge=1, description="Deployments tried per request before giving up.")
    max_client_retries: int = Field(default=3, ge=0, description="Cap on the `retries` a client may ask for.")
    retry_backoff: float = Field(
        default=0.25, ge=0, description="First pause before trying a deployment again; doubles, at most 2 s."
    )
    retry_after_cap: float = Field(
        default=10.0, ge=0, description="Longest `retry-after` an upstream can make the gateway wait before a retry."
    )
    cooldown_failures: int = Field(default=3, ge=1, description="Failures in a row that cool a deployment down.")
    cooldown_seconds: float = Field(
        default=30.0, gt=0, description="First cooldown of a failing deployment; doubles while it keeps failing."
    )

    upstream_connect_timeout: float = Field(default=10.0, gt=0)
    upstream_read_timeout: float = Field(
        default=300.0, gt=0, description="Longest wait for the next bytes from an upstream (the idle gap)."
    )
    upstream_headers_timeout: float = Field(
        default=300.0, gt=0, description="Longest wait for an upstream's response headers."
    )
    upstream_first_token_timeout: float = Field(
        default=300.0, gt=0, description="Streams: longest wait from the headers to the first event."
    )
    upstream_total_timeout: float = Field(default=1800.0, gt=0, description="Longest an attempt may take.")
    upstream_pool_size: int = Field(default=1000, ge=1, description="Open upstream connections per process.")

    ledger_flush_interval: float = Field(
        default=0.5, gt=0, description="Seconds between usage writes (sooner once `ledger_flush_entries` wait)."
    )
    ledger_flush_entries: int = Field(
        default=256, ge=1, description="Request log entries that start a usage write before the interval is over."
    )
    ledger_spool_dir: Path | None = Field(
        default=Path("spool"),
        description="Where usage Redis could not take at shutdown is written, and replayed from at start.",
    )
    ledger_queue_entries: int = Field(
        default=200_000, ge=0, description="Request log entries held in memory while Redis is unreachable."
    )
    ledger_log_entries: int = Field(default=10_000, ge=1, description="Request log entries kept in Redis per key.")
    limits_fail_open: bool = Field(
        default=True, description="While Redis is unreachable, serve keys with limits (on) or answer 503 (off)."
    )
    budget_reserve_tokens: int = Field(
        default=1024, ge=0, description="Output tokens a budget holds for a request that sets no max_tokens."
    )
    redis_timeout: float = Field(default=2.0, gt=0)
    redis_cluster: bool = Field(default=False, description="Treat redis_url as a Redis Cluster node.")
    key_cache_seconds: float = Field(
        default=2.0, ge=0, description="How long a replica reuses a managed key's record: the bound on revokes."
    )
    admin_token: SecretStr | None = Field(
        default=None, description="Bearer token of the admin API (/admin/...); the API is off without it."
    )

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value
