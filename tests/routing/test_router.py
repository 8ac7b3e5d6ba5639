from __future__ import annotations

import random
from collections import Counter

from gateway.config import ModelOptions, UpstreamConfig, parse_config
from gateway.routing import Deployment, Route, Router

CONFIG = parse_config(
    """
keys: [{name: k, key: sk-k}]
upstreams:
  - {name: a, dialect: echo}
  - {name: b, dialect: echo}
  - {name: dark, dialect: openai, base_url: "http://x", api_key: ""}
models:
  - {name: "gpt-*", upstream: a}
  - {name: gpt-4o, upstream: a, upstream_model: gpt-4o-2024-08-06, weight: 3}
  - {name: gpt-4o, upstream: b, weight: 1}
  - {name: "g*", upstream: b}
  - {name: half, upstream: a}
  - {name: half, upstream: dark}
""",
    env={},
)


def test_exact_names_win_over_patterns() -> None:
    router = Router(CONFIG)
    route = router.match("gpt-4o")
    assert route is not None and route.name == "gpt-4o" and len(route.deployments) == 2


def test_first_matching_pattern_in_config_order() -> None:
    router = Router(CONFIG)
    assert router.match("gpt-5").name == "gpt-*"  # type: ignore[union-attr]
    assert router.match("gemini").name == "g*"  # type: ignore[union-attr]
    assert router.match("claude") is None


def test_upstream_model_rename() -> None:
    route = Router(CONFIG).match("gpt-4o")
    assert route is not None
    assert route.deployments[0].model_for("gpt-4o") == "gpt-4o-2024-08-06"
    assert route.deployments[1].model_for("gpt-4o") == "gpt-4o"


def test_weighted_order_follows_weights() -> None:
    router = Router(CONFIG, rng=random.Random(7))
    route = router.match("gpt-4o")
    assert route is not None
    firsts = Counter(router.order(route)[0].upstream.name for _ in range(4000))
    assert 0.70 < firsts["a"] / 4000 < 0.80  # weight 3 of 4
    assert all(len(router.order(route)) == 2 for _ in range(10))


def test_disabled_upstreams_are_not_tried() -> None:
    router = Router(CONFIG)
    route = router.match("half")
    assert route is not None
    assert [d.upstream.name for d in router.order(route)] == ["a"]


def test_describe_lists_every_deployment() -> None:
    lines = Router(CONFIG).describe()
    assert len(lines) == 6
    assert any("gpt-4o" in line and "75%" in line for line in lines)
    assert any("disabled" in line for line in lines)


def test_sticky_order_is_stable_per_session_and_follows_weights() -> None:
    router = Router(CONFIG, rng=random.Random(1))
    route = router.match("gpt-4o")
    assert route is not None
    for session in ("a", "b", "conv-7"):
        firsts = {router.order(route, sticky=session)[0].upstream.name for _ in range(20)}
        assert len(firsts) == 1  # the same deployment every time for one session
    share = Counter(router.order(route, sticky=f"s{i}")[0].upstream.name for i in range(4000))
    assert 0.70 < share["a"] / 4000 < 0.80  # sessions spread by weight (3 of 4)


def test_removing_a_deployment_moves_only_its_sessions() -> None:
    ups = [UpstreamConfig(name=n, dialect="echo") for n in ("a", "b", "c")]
    deps = [Deployment(u, None, 1.0, ModelOptions()) for u in ups]
    router = Router(CONFIG)
    three = Route.of("m", deps)
    two = Route.of("m", deps[:2])
    before = {f"s{i}": router.order(three, sticky=f"s{i}")[0].upstream.name for i in range(600)}
    assert set(before.values()) == {"a", "b", "c"}
    for session, name in before.items():
        after = router.order(two, sticky=session)[0].upstream.name
        if name != "c":
            assert after == name  # untouched sessions keep their deployment (and its prompt cache)
