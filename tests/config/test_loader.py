from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]

BASE = """
keys:
  - name: a
    key: ${KEY:-sk-a}
upstreams:
  - name: up
    dialect: openai
    base_url: https://api.example.com/v1/
    api_key: ${UP_KEY:-}
models:
  - name: m
    upstream: up
"""


def _error(text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, env=env or {}, source="test.yaml")
    return str(info.value)


def test_shipped_config_is_valid_offline() -> None:
    config = load_config(ROOT / "config" / "gateway.yaml", env={})
    assert config.redis_url is None
    assert {u.name for u in config.upstreams if u.enabled} == {"local"}
    assert any(m.name == "echo" for m in config.models)


def test_interpolation_with_defaults_and_values() -> None:
    config = parse_config(BASE, env={"UP_KEY": "sk-live"})
    assert config.keys[0].key is not None and config.keys[0].key.get_secret_value() == "sk-a"
    assert config.upstreams[0].api_key is not None and config.upstreams[0].api_key.get_secret_value() == "sk-live"
    assert config.upstreams[0].base_url == "https://api.example.com/v1"  # trailing slash dropped
    assert config.upstreams[0].enabled


def test_empty_api_key_disables_the_upstream() -> None:
    assert not parse_config(BASE, env={}).upstreams[0].enabled


def test_missing_variable_without_default_names_field_and_variable() -> None:
    message = _error(BASE.replace("${KEY:-sk-a}", "${NOPE}"))
    assert "keys[0].key" in message and "`NOPE`" in message


def test_dollar_escape() -> None:
    config = parse_config(BASE.replace("${KEY:-sk-a}", "sk-$${literal}"), env={})
    assert config.keys[0].key is not None and config.keys[0].key.get_secret_value() == "sk-${literal}"


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        (("dialect: openai", "dialect: opena1"), "upstreams[0].dialect", "'anthropic', 'dashscope' or 'echo'"),
        (("upstream: up", "upstream: nowhere"), "models[0].upstream", "unknown upstream `nowhere`"),
        (("base_url: https://api.example.com/v1/", "base_url: ftp://x"), "upstreams[0].base_url", "http"),
        (("    key: ${KEY:-sk-a}", "    key: ${KEY:-sk-a}\n    key_sha256: abc"), "keys[0].key_sha256", "64 hex"),
        (("    upstream: up", "    upstream: up\n    weight: 0"), "models[0].weight", "greater than 0"),
        (("    upstream: up", "    upstream: up\n    wieght: 2"), "models[0].wieght", "unknown field"),
        (("- name: m\n", "- upstream: up\n"), "models[0].name", "required"),
        (
            ("    api_key: ${UP_KEY:-}", "    api_key: x\n    headers: {Connection: close}"),
            "upstreams[0].headers",
            "Connection cannot be configured",
        ),
        (("  - name: a\n", "  - name: 'a:{b}'\n"), "keys[0].name", "letters, digits"),
    ],
)
def test_bad_field_is_named(change: tuple[str, str], field: str, words: str) -> None:
    message = _error(BASE.replace(*change))
    assert "test.yaml" in message and field in message and words in message, message


def test_key_sha256_and_duplicates() -> None:
    digest = hashlib.sha256(b"sk-a").hexdigest()
    text = BASE.replace("    key: ${KEY:-sk-a}", f"    key_sha256: {digest}\n  - name: b\n    key: sk-a")
    assert "same secret" in _error(text)
    twice = BASE.replace("upstreams:", "  - name: a\n    key: sk-b\nupstreams:")
    assert "keys[1].name: `a` is used twice" in _error(twice)
    # Several model entries may share a name (deployments of one model); other names may not.
    dup = BASE + "  - name: m\n    upstream: up\n"
    assert [m.name for m in parse_config(dup, env={}).models] == ["m", "m"]


def test_duplicate_upstream_names() -> None:
    text = BASE.replace("models:", "  - name: up\n    dialect: echo\nmodels:")
    assert "upstreams[1].name: `up` is used twice" in _error(text)


@pytest.mark.parametrize("text", ["[1, 2]", "keys: [", ""])
def test_not_a_mapping_or_not_yaml(text: str) -> None:
    assert "test.yaml" in _error(text)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
