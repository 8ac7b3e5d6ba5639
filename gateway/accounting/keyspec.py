"""What an operator may say about a managed key (admin API bodies, `gateway keys` options), checked,
and how a stored record is shown back. Pure: no I/O."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.accounting.keys import unix_time
from gateway.config.model import MAX_LIMIT, BudgetPeriod, ModelLimit, check_key_name


class KeyChanges(BaseModel):
    """Fields of a key that can be set when it is made and changed later."""

    model_config = ConfigDict(extra="forbid")

    team: str | None = Field(default=None, max_length=64)
    models: list[str] | None = Field(default=None, description="Model names or glob patterns; all when absent.")
    rpm: int | None = Field(default=None, ge=1, le=MAX_LIMIT, description="Requests per minute, across every replica.")
    tpm: int | None = Field(default=None, ge=1, le=MAX_LIMIT, description="Tokens per minute, across every replica.")
    budget: float | None = Field(
        default=None, ge=0, le=1e15, allow_inf_nan=False, description="Spending limit per budget period."
    )
    budget_period: BudgetPeriod | None = None
    model_limits: list[ModelLimit] | None = Field(
        default=None, description="rpm/tpm on this key for the models a pattern matches, on top of rpm/tpm."
    )
    expires: datetime | None = Field(default=None, description="When the key stops working (ISO 8601; UTC if no zone).")
    metadata: dict[str, str] | None = None
    enabled: bool | None = None

    def record_fields(self) -> dict[str, Any]:
        """The given fields, as the stored record names them (only those set in the request)."""
        given = self.model_dump(exclude_unset=True)
        out: dict[str, Any] = {}
        for name, value in given.items():
            if name == "models":
                out["model_patterns"] = value
            elif name == "expires":
                out["expires_at"] = unix_time(value) if value is not None else None
            elif name == "budget_period" and value is None:
                out[name] = "month"
            elif name == "metadata":
                out[name] = value or {}
            elif name == "model_limits":
                out[name] = value or []
            else:
                out[name] = value
        return out


class NewKey(KeyChanges):
    name: str = Field(min_length=1, max_length=64, description="Letters, digits and `_.@-`.")

    _name_chars = field_validator("name")(check_key_name)


def key_view(record: dict[str, Any]) -> dict[str, Any]:
    """A stored record as the admin API and `gateway keys` show it: never the key or its digest."""
    return {
        "name": record["name"],
        "team": record.get("team"),
        "models": record.get("model_patterns"),
        "rpm": record.get("rpm"),
        "tpm": record.get("tpm"),
        "budget": record.get("budget"),
        "budget_period": record.get("budget_period", "month"),
        "model_limits": record.get("model_limits") or [],
        "expires": _iso(record.get("expires_at")),
        "enabled": record.get("enabled", True),
        "metadata": record.get("metadata") or {},
        "created": _iso(record.get("created_at")),
    }


def _iso(unix: float | None) -> str | None:
    return datetime.fromtimestamp(unix, UTC).isoformat(timespec="seconds") if unix is not None else None
