"""Every aiohttp exception maps to a gateway error, and messages name the upstream, not its URL."""

from __future__ import annotations

import inspect

import aiohttp
import pytest

from gateway.dialects.base import UpstreamRequest
from gateway.errors import UpstreamConnectError, UpstreamError, UpstreamProtocolError, UpstreamTimeout
from gateway.upstream.http import EXCEPTION_TABLE, HttpTransport, translate


def _aiohttp_exceptions() -> list[type[BaseException]]:
    return [
        obj for _, obj in inspect.getmembers(aiohttp) if inspect.isclass(obj) and issubclass(obj, aiohttp.ClientError)
    ]


def _instance(cls: type[BaseException]) -> BaseException:
    exc = cls.__new__(cls)
    BaseException.__init__(exc)
    return exc


@pytest.mark.parametrize("cls", _aiohttp_exceptions(), ids=lambda c: c.__name__)
def test_every_aiohttp_exception_is_mapped(cls: type[BaseException]) -> None:
    err = translate(_instance(cls), "vendor")
    assert isinstance(err, UpstreamError)
    assert err.message.startswith("The upstream `vendor`")


def test_specific_mappings() -> None:
    assert isinstance(translate(TimeoutError(), "u"), UpstreamTimeout)
    assert isinstance(translate(_instance(aiohttp.ServerTimeoutError), "u"), UpstreamTimeout)
    assert isinstance(translate(_instance(aiohttp.ClientConnectorError), "u"), UpstreamConnectError)
    assert isinstance(translate(_instance(aiohttp.ServerDisconnectedError), "u"), UpstreamProtocolError)
    assert isinstance(translate(ConnectionResetError(), "u"), UpstreamConnectError)
    assert translate(TimeoutError(), "u").status == 504


def test_table_has_subclasses_before_bases() -> None:
    classes = [source for source, _, _ in EXCEPTION_TABLE]
    for i, earlier in enumerate(classes):
        for later in classes[i + 1 :]:
            assert not issubclass(later, earlier), f"{later.__name__} is shadowed by {earlier.__name__}"


def test_non_transport_exceptions_are_not_swallowed() -> None:
    with pytest.raises(TypeError):
        translate(ValueError("bug"), "u")


async def test_connection_refused_is_502_without_url() -> None:
    transport = HttpTransport(pool_size=4, connect_timeout=1, read_timeout=1)
    request = UpstreamRequest("POST", "http://user:pw@127.0.0.1:9/v1/chat/completions", {}, b"{}", "vendor")
    with pytest.raises(UpstreamConnectError) as info:
        await transport.open(request)
    assert info.value.status == 502
    assert "127.0.0.1" not in info.value.message and "pw" not in info.value.message
    await transport.aclose()
