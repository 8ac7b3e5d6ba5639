"""Deployment health: a deployment that keeps failing cools down and is tried last until it recovers.

Pure bookkeeping with the time passed in. After `failures` failures in a row a deployment cools down
for `cooldown` seconds (doubling with each cooldown in a row, up to `max_cooldown`); meanwhile it is
ordered after the healthy ones, so it still serves when nothing else can. When the cooldown is over
it is half-open: its next attempt is a probe, and one more failure cools it down again at once, while
a success makes it healthy. Per process: each worker and replica learns on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.routing.router import Deployment


@dataclass(slots=True)
class _State:
    failures: int = 0  # in a row
    cooldowns: int = 0  # in a row: a deployment that has cooled down is half-open after it
    until: float = 0.0  # cooling down until then
    failed_at: float = 0.0


class DeploymentHealth:
    def __init__(self, failures: int = 3, cooldown: float = 30.0, max_cooldown: float = 300.0) -> None:
        self._failures = failures
        self._cooldown = cooldown
        self._max_cooldown = max_cooldown
        self._states: dict[tuple[str, str], _State] = {}  # (upstream, model sent) -> state

    def order(self, deployments: list[Deployment], model: str, now: float) -> list[Deployment]:
        """Healthy deployments first, in the order given; then those cooling down, the one that failed
        longest ago first (so when all are cooling down, the likeliest to have recovered is tried)."""
        if not self._states:
            return deployments
        healthy: list[Deployment] = []
        cooling: list[Deployment] = []
        for deployment in deployments:
            state = self._states.get(_key(deployment, model))
            (cooling if state is not None and state.until > now else healthy).append(deployment)
        cooling.sort(key=lambda d: self._states[_key(d, model)].failed_at)
        return healthy + cooling

    def failed(self, deployment: Deployment, model: str, now: float) -> float:
        """Count a failure; the seconds of the cooldown it starts, or 0."""
        state = self._states.setdefault(_key(deployment, model), _State())
        state.failures += 1
        state.failed_at = now
        if state.failures < self._failures and not state.cooldowns:
            return 0.0
        seconds = min(self._max_cooldown, self._cooldown * 2.0**state.cooldowns)
        state.cooldowns += 1
        state.failures = 0
        state.until = now + seconds
        return seconds

    def succeeded(self, deployment: Deployment, model: str) -> None:
        if self._states:
            self._states.pop(_key(deployment, model), None)

    def cooling(self, now: float) -> list[tuple[str, str, float]]:
        """(upstream, upstream model, seconds left) of each deployment cooling down now."""
        return [(up, model, s.until - now) for (up, model), s in self._states.items() if s.until > now]


def _key(deployment: Deployment, model: str) -> tuple[str, str]:
    # By the model sent: behind one glob entry, one missing model must not cool down the others.
    return (deployment.upstream.name, deployment.model_for(model))
