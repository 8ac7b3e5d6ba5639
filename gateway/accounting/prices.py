"""What a request costs: the config's price table applied to its usage. Pure: no I/O."""

from __future__ import annotations

from fnmatch import fnmatchcase

from gateway.config import Price
from gateway.dialects.base import Usage

_MILLION = 1_000_000


class PriceTable:
    """The config's `prices`, first matching pattern wins; a model without a price costs nothing."""

    def __init__(self, prices: list[Price]) -> None:
        self._prices = prices
        self._found: dict[str, Price | None] = {}

    def price_of(self, model: str) -> Price | None:
        if model not in self._found:
            if len(self._found) > 10_000:  # model names come from clients: bound what is remembered
                self._found.clear()
            self._found[model] = next((p for p in self._prices if fnmatchcase(model, p.model)), None)
        return self._found[model]

    def cost(self, model: str, usage: Usage | None) -> float:
        """The cost of a request that reached an upstream: its per-request price, and its tokens and
        billed units when known."""
        price = self.price_of(model)
        if price is None:
            return 0.0
        cost = price.request
        if usage is not None:
            cached = min(usage.cached_tokens, usage.prompt_tokens)
            cached_price = price.input if price.cached_input is None else price.cached_input
            cost += (
                (usage.prompt_tokens - cached) * price.input
                + cached * cached_price
                + usage.completion_tokens * price.output
            ) / _MILLION
            if usage.billed_units:
                cost += usage.billed_units * price.billed_unit
        return cost

    def reservation(self, model: str, prompt_tokens: int, output_tokens: int) -> float:
        """The most a request is expected to cost before it is sent: what a budget holds for it while
        it runs (billed units, unknown in advance, are not included)."""
        price = self.price_of(model)
        if price is None:
            return 0.0
        return price.request + (prompt_tokens * price.input + output_tokens * price.output) / _MILLION
