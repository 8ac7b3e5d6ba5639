"""The price table and budget periods: pure arithmetic."""

from __future__ import annotations

import pytest

from gateway.accounting.limits import budget_period
from gateway.accounting.prices import PriceTable
from gateway.config import Price
from gateway.dialects.base import Usage

TABLE = PriceTable(
    [
        Price(model="gpt-4o-mini", input=0.15, cached_input=0.075, output=0.6),
        Price(model="gpt-4o*", input=2.5, output=10, request=0.001),
        Price(model="search-*", billed_unit=0.004),
    ]
)


def test_cost_prices_cached_input_apart_and_the_first_matching_entry_wins() -> None:
    usage = Usage(prompt_tokens=1_000_000, completion_tokens=500_000, total_tokens=1_500_000, cached_tokens=400_000)
    assert TABLE.cost("gpt-4o-mini", usage) == pytest.approx(0.6 * 0.15 + 0.4 * 0.075 + 0.5 * 0.6)
    # Without a cached price, cached tokens cost the input price.
    assert TABLE.cost("gpt-4o-2024", usage) == pytest.approx(0.001 + 2.5 + 5.0)


def test_billed_units_and_unknown_models() -> None:
    assert TABLE.cost("search-pro", Usage(billed_units=2.5)) == pytest.approx(0.01)
    assert TABLE.cost("unknown", Usage(10, 10, 20)) == 0.0
    assert TABLE.cost("gpt-4o", None) == pytest.approx(0.001)  # a reply without usage still pays per request
    assert TABLE.reservation("unknown", 1000, 1000) == 0.0


def test_a_reservation_prices_the_prompt_estimate_and_the_output_cap() -> None:
    assert TABLE.reservation("gpt-4o", 1000, 2000) == pytest.approx(0.001 + (1000 * 2.5 + 2000 * 10) / 1e6)


def test_budget_periods_are_utc() -> None:
    at = 1795392000.0  # 2026-11-23T00:00:00Z
    assert budget_period("day", at) == "2026-11-23" and budget_period("day", at - 1) == "2026-11-22"
    assert budget_period("month", at) == "2026-11" and budget_period("total", at) == "total"
