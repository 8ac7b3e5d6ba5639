from __future__ import annotations

import hashlib

import pytest
from pydantic import SecretStr

from gateway.accounting.keys import KeyTable, key_from_headers
from gateway.config import KeyConfig
from gateway.errors import AuthenticationFailed

TABLE = KeyTable(
    [
        KeyConfig(name="plain", key=SecretStr("sk-plain")),
        KeyConfig(name="hashed", key_sha256=hashlib.sha256(b"sk-hashed").hexdigest().upper()),
        KeyConfig(name="narrow", key=SecretStr("sk-narrow"), models=["echo", "gpt-*"]),
    ]
)


def test_plain_and_hashed_keys() -> None:
    assert TABLE.authenticate("sk-plain").name == "plain"
    assert TABLE.authenticate("sk-hashed").name == "hashed"


@pytest.mark.parametrize("presented", [None, "", "sk-plai", "sk-plain ", "SK-PLAIN"])
def test_wrong_keys_are_401(presented: str | None) -> None:
    with pytest.raises(AuthenticationFailed) as info:
        TABLE.authenticate(presented)
    assert info.value.status == 401 and info.value.code == "invalid_api_key"
    assert "sk-plain" not in info.value.message


def test_model_allow_list() -> None:
    narrow = TABLE.authenticate("sk-narrow")
    assert narrow.may_use("echo") and narrow.may_use("gpt-4o") and not narrow.may_use("claude-3")
    assert TABLE.authenticate("sk-plain").may_use("anything")


@pytest.mark.parametrize(
    ("authorization", "api_key", "x_api_key", "expected"),
    [
        ("Bearer sk-1", None, None, "sk-1"),
        ("bearer  sk-1 ", None, None, "sk-1"),
        ("Basic abc", "sk-2", None, "sk-2"),
        (None, None, "sk-3", "sk-3"),
        ("Bearer ", None, None, None),
        (None, None, None, None),
    ],
)
def test_key_from_headers(
    authorization: str | None, api_key: str | None, x_api_key: str | None, expected: str | None
) -> None:
    assert key_from_headers(authorization, api_key, x_api_key) == expected
