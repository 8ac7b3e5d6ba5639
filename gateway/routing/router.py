"""Model name -> ordered deployments: exact names first, then glob patterns, weighted choice."""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from gateway.config import GatewayConfig, ModelOptions, Timeouts, UpstreamConfig


@dataclass(frozen=True, slots=True)
class Deployment:
    """One place a model can be served: an upstream and the model name it knows."""

    upstream: UpstreamConfig
    upstream_model: str | None  # None: send the name the client used
    weight: float
    options: ModelOptions
    timeouts: Timeouts = field(default_factory=Timeouts, hash=False, compare=False)  # model's over upstream's

    def model_for(self, requested: str) -> str:
        return self.upstream_model or requested


@dataclass(frozen=True, slots=True)
class Route:
    name: str  # the config entry that matched (an exact name or a pattern)
    deployments: tuple[Deployment, ...]
    usable: tuple[Deployment, ...]  # those whose upstream is enabled
    fallbacks: tuple[str, ...] = ()  # models to try when every deployment failed
    context_fallbacks: tuple[str, ...] = ()  # models to try when the input is too long for this one

    @classmethod
    def of(
        cls, name: str, deployments: list[Deployment], fallbacks: Sequence[str] = (), context: Sequence[str] = ()
    ) -> Route:
        usable = tuple(d for d in deployments if d.upstream.enabled)
        return cls(name, tuple(deployments), usable, tuple(dict.fromkeys(fallbacks)), tuple(dict.fromkeys(context)))


class Router:
    def __init__(self, config: GatewayConfig, rng: random.Random | None = None) -> None:
        upstreams = {u.name: u for u in config.upstreams}
        grouped: dict[str, list[Deployment]] = {}
        fallbacks: dict[str, list[str]] = {}
        context: dict[str, list[str]] = {}
        patterns: set[str] = set()
        for entry in config.models:
            upstream = upstreams[entry.upstream]
            timeouts = entry.timeouts.over(upstream.timeouts)
            dep = Deployment(upstream, entry.upstream_model, entry.weight, entry.options, timeouts)
            grouped.setdefault(entry.name, []).append(dep)
            fallbacks.setdefault(entry.name, []).extend(entry.fallbacks)
            context.setdefault(entry.name, []).extend(entry.context_fallbacks)
            if entry.is_pattern:
                patterns.add(entry.name)
        self._exact: dict[str, Route] = {}
        self._patterns: list[Route] = []
        for name, deps in grouped.items():
            route = Route.of(name, deps, fallbacks[name], context[name])
            if name in patterns:
                self._patterns.append(route)
            else:
                self._exact[name] = route
        self._rng = rng or random.Random()

    def match(self, model: str) -> Route | None:
        route = self._exact.get(model)
        if route is not None:
            return route
        for pattern in self._patterns:  # in config order: the first matching pattern wins
            if fnmatchcase(model, pattern.name):
                return pattern
        return None

    def order(self, route: Route, sticky: str | None = None) -> list[Deployment]:
        """Usable deployments in the order to try them: a weighted random permutation.

        With a `sticky` key (the client's `sess_id`) the order is a weighted rendezvous hash of it:
        the same session keeps the same deployment (prompt-cache locality), sessions spread by
        weight, and removing a deployment moves only the sessions that were on it.
        """
        deps = list(route.usable)
        if len(deps) <= 1:
            return deps
        if sticky is not None:
            return sorted(deps, key=lambda d: _rendezvous_score(sticky, d))
        ordered: list[Deployment] = []
        while deps:
            pick = self._rng.choices(range(len(deps)), weights=[d.weight for d in deps])[0]
            ordered.append(deps.pop(pick))
        return ordered

    @property
    def exact_routes(self) -> list[Route]:
        return list(self._exact.values())

    def describe(self) -> list[str]:
        """The routing table, one line per deployment, for `check-config` and the start-up log."""
        lines = []
        for route in [*self._exact.values(), *self._patterns]:
            kind = "pattern" if route in self._patterns else "exact"
            total = sum(d.weight for d in route.deployments)
            for dep in route.deployments:
                target = dep.upstream_model or "(same name)"
                state = "" if dep.upstream.enabled else "  [disabled: api_key is empty]"
                share = f"{100 * dep.weight / total:.0f}%"
                up = dep.upstream
                wire = f"openai/{up.vendor}" if up.dialect == "openai" else up.dialect
                lines.append(f"{route.name:<28} {kind:<8} -> {up.name}/{target} ({wire}, {share}){state}")
        return lines


def _rendezvous_score(key: str, deployment: Deployment) -> float:
    digest = hashlib.blake2b(
        f"{key}\0{deployment.upstream.name}\0{deployment.upstream_model}".encode(), digest_size=8
    ).digest()
    unit = (int.from_bytes(digest, "big") + 1) / (2**64 + 1)  # in (0, 1)
    return -math.log(unit) / deployment.weight
