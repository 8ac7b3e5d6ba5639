"""Cooldowns: failing deployments go last, recover after their cooldown, and fail fast when half-open."""

from __future__ import annotations

from gateway.config import parse_config
from gateway.routing import Deployment, DeploymentHealth, Router

CONFIG = """
keys: [{name: k, key: sk-k}]
upstreams:
  - {name: a, dialect: echo}
  - {name: b, dialect: echo}
  - {name: c, dialect: echo}
models:
  - {name: m, upstream: a}
  - {name: m, upstream: b}
  - {name: m, upstream: c}
"""


def _deployments() -> list[Deployment]:
    router = Router(parse_config(CONFIG, env={}))
    route = router.match("m")
    assert route is not None
    return list(route.usable)


def _names(deployments: list[Deployment]) -> list[str]:
    return [d.upstream.name for d in deployments]


def test_three_failures_in_a_row_cool_a_deployment_down_and_it_goes_last() -> None:
    a, b, c = _deployments()
    health = DeploymentHealth(failures=3, cooldown=30)
    assert health.failed(a, "m", 100) == 0 and health.failed(a, "m", 101) == 0
    assert health.failed(a, "m", 102) == 30
    assert _names(health.order([a, b, c], "m", 110)) == ["b", "c", "a"]
    assert health.cooling(110) == [("a", "m", 22)]
    assert _names(health.order([a, b, c], "other-model", 110)) == ["a", "b", "c"]  # per model sent


def test_a_success_resets_and_half_open_fails_fast_with_a_longer_cooldown() -> None:
    a, b, _ = _deployments()
    health = DeploymentHealth(failures=3, cooldown=30)
    health.failed(a, "m", 0)
    health.succeeded(a, "m")
    assert health.failed(a, "m", 1) == 0 and health.failed(a, "m", 2) == 0  # counted afresh
    assert health.failed(a, "m", 3) == 30
    assert _names(health.order([a, b], "m", 40)) == ["a", "b"]  # over: half-open, tried in its place
    assert health.failed(a, "m", 40) == 60  # one more failure: cooled down again at once, twice as long
    health.succeeded(a, "m")
    assert health.cooling(41) == []


def test_when_all_are_cooling_down_the_one_that_failed_longest_ago_goes_first() -> None:
    a, b, c = _deployments()
    health = DeploymentHealth(failures=1, cooldown=60)
    health.failed(b, "m", 10)
    health.failed(c, "m", 5)
    health.failed(a, "m", 20)
    assert _names(health.order([a, b, c], "m", 21)) == ["c", "b", "a"]
