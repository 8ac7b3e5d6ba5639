from __future__ import annotations

import pytest

from gateway.config import UpstreamConfig
from gateway.errors import UpstreamProtocolError
from gateway.relay.stream import decoding

UPSTREAM = UpstreamConfig(name="up", dialect="openai", base_url="http://127.0.0.1:9/v1")


def _raises(exc: BaseException) -> None:
    raise exc


def test_a_reply_too_deep_to_write_is_the_upstreams_and_says_so() -> None:
    with pytest.raises(UpstreamProtocolError, match="nested too deeply"):
        decoding(UPSTREAM, _raises, TypeError("Recursion limit reached"))


def test_any_other_type_error_in_decoding_is_not_called_nesting() -> None:
    with pytest.raises(UpstreamProtocolError, match="could not read"):
        decoding(UPSTREAM, _raises, TypeError("unhashable type: 'list'"))
    assert decoding(UPSTREAM, lambda x: x + 1, 1) == 2
