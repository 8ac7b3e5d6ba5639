"""A client key's own usage and balance: `GET /v1/usage`, and the legacy billing endpoints chat
front-ends query for a balance (`/dashboard/billing/subscription` and `/dashboard/billing/usage`,
with and without `/v1`). A key sees only its own usage."""

from __future__ import annotations

import calendar
import re
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from gateway.accounting.keys import Principal
from gateway.accounting.ledger.base import UsageQuery
from gateway.errors import InvalidRequest
from gateway.http.routes import caller
from gateway.runtime import Runtime

router = APIRouter(tags=["usage"])

# What the billing endpoints report as the hard limit of a key without a budget (as other
# OpenAI-compatible gateways do): front-ends then show a large balance rather than none.
UNLIMITED_USD = 100_000_000.0

_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
DayParam = Annotated[str | None, Query(description="A UTC day, `YYYY-MM-DD`.")]


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def parse_day(value: str | None, param: str) -> str | None:
    """A `YYYY-MM-DD` day as given, checked; a 400 naming `param` otherwise."""
    if value is None:
        return None
    try:
        if not _DAY.fullmatch(value):
            raise ValueError(value)
        return date.fromisoformat(value).isoformat()
    except ValueError:
        raise InvalidRequest(f"`{param}` must be a day written YYYY-MM-DD; got {value[:40]!r}.", param=param) from None


async def _budget(runtime: Runtime, principal: Principal) -> dict[str, Any] | None:
    if principal.budget is None:
        return None
    balance = await runtime.limiter.balance(principal) if runtime.limiter is not None else None
    spent, held = balance if balance is not None else (0.0, 0.0)
    return {  # rounded: sums of float prices leave digits no one paid for
        "amount": principal.budget,
        "period": principal.budget_period,
        "spent": round(spent, 9),
        "held": round(held, 9),
        "remaining": round(max(principal.budget - spent - held, 0.0), 9),
        "enforced": runtime.limiter is not None,
    }


@router.get("/v1/usage")
async def own_usage(
    request: Request,
    principal: Annotated[Principal, Depends(caller)],
    since: DayParam = None,
    until: DayParam = None,
) -> dict[str, Any]:
    """The calling key's usage per model and day (all days kept by default), and its budget."""
    runtime = _runtime(request)
    query = UsageQuery(key=principal.name, since=parse_day(since, "since"), until=parse_day(until, "until"))
    return {
        "object": "usage",
        "key": principal.name,
        "team": principal.team,
        "data": await runtime.ledger.rows(query),
        "budget": await _budget(runtime, principal),
    }


@router.get("/dashboard/billing/subscription")
@router.get("/v1/dashboard/billing/subscription")
async def billing_subscription(request: Request, principal: Annotated[Principal, Depends(caller)]) -> dict[str, Any]:
    """OpenAI's legacy subscription shape: the key's budget as its hard limit (USD)."""
    limit = principal.budget if principal.budget is not None else UNLIMITED_USD
    return {
        "object": "billing_subscription",
        "has_payment_method": True,
        "canceled": False,
        "canceled_at": None,
        "delinquent": None,
        "access_until": int(principal.expires_at) if principal.expires_at is not None else 0,
        "soft_limit": int(limit * 100),
        "hard_limit": int(limit * 100),
        "system_hard_limit": int(limit * 100),
        "soft_limit_usd": limit,
        "hard_limit_usd": limit,
        "system_hard_limit_usd": limit,
        "plan": {"title": f"budget per {principal.budget_period}" if principal.budget else "no budget", "id": ""},
        "account_name": principal.name,
        "po_number": None,
        "billing_email": None,
        "tax_ids": None,
        "billing_address": None,
        "business_address": None,
    }


@router.get("/dashboard/billing/usage")
@router.get("/v1/dashboard/billing/usage")
async def billing_usage(
    request: Request,
    principal: Annotated[Principal, Depends(caller)],
    start_date: DayParam = None,
    end_date: DayParam = None,
) -> dict[str, Any]:
    """OpenAI's legacy usage shape: cost per day and model in cents, `end_date` excluded. Without
    dates: the current UTC month."""
    today = datetime.now(UTC).date()
    start = parse_day(start_date, "start_date") or today.replace(day=1).isoformat()
    end = parse_day(end_date, "end_date")
    if end is None:
        last = calendar.monthrange(today.year, today.month)[1]
        end = (today.replace(day=last) + timedelta(days=1)).isoformat()
    try:
        until = (date.fromisoformat(end) - timedelta(days=1)).isoformat()
    except OverflowError:
        raise InvalidRequest("`end_date` must be after 0001-01-01.", param="end_date") from None
    rows = await _runtime(request).ledger.rows(UsageQuery(key=principal.name, since=start, until=until))
    daily: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        daily.setdefault(str(row["day"]), []).append({"name": row["model"], "cost": float(row["cost"]) * 100})
    return {
        "object": "list",
        "daily_costs": [
            {"timestamp": calendar.timegm(date.fromisoformat(day).timetuple()), "line_items": items}
            for day, items in sorted(daily.items())
        ],
        "total_usage": sum(float(row["cost"]) for row in rows) * 100,
    }
