from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import openai
import pytest
import redis

from gateway.config import GatewayConfig, parse_config
from gateway.http.app import GatewayApp, create_app
from gateway.http.protocol import connection_limits
from gateway.settings import Settings
from tests.support.fake_anthropic import ANTHROPIC_KEY, FakeAnthropic
from tests.support.fake_dashscope import FakeDashScope
from tests.support.fake_openai import UPSTREAM_KEY, FakeOpenAI
from tests.support.redis_server import RedisCluster, RedisServer
from tests.support.spec import AsyncValidatingTransport, Checker, ValidatingTransport
from tests.support.threads import AiohttpServer, UvicornServer

CLIENT_KEY = "sk-test-client-key"
LIMITED_KEY = "sk-test-limited-key"


def config_yaml(
    fake_url: str,
    redis_url: str | None = None,
    anthropic_url: str = "http://127.0.0.1:9",
    more_models: str = "",
    more: str = "",
) -> str:
    """The test config; `more_models` are YAML list items added to `models`, `more` is top-level YAML."""
    return f"""
redis_url: {redis_url or ""}
keys:
  - name: tester
    key: {CLIENT_KEY}
  - name: limited
    key: {LIMITED_KEY}
    models: [echo]
upstreams:
  - name: local
    dialect: echo
  - name: fake
    dialect: openai
    base_url: {fake_url}/v1
    api_key: {UPSTREAM_KEY}
  - name: fake-by-name
    dialect: openai
    base_url: {fake_url.replace("127.0.0.1", "localhost")}/v1
    api_key: {UPSTREAM_KEY}
  - name: claude
    dialect: anthropic
    base_url: {anthropic_url}/v1
    api_key: {ANTHROPIC_KEY}
  - name: dead
    dialect: openai
    base_url: http://127.0.0.1:9/v1
    api_key: sk-dead
  - name: unconfigured
    dialect: openai
    base_url: https://example.invalid/v1
    api_key: ""
models:
  - name: echo
    upstream: local
  - name: gpt-test
    upstream: fake
    upstream_model: ok
  - name: fake-*
    upstream: fake
  - name: fallback
    upstream: dead
    weight: 1000
  - name: fallback
    upstream: fake
    upstream_model: ok
    weight: 0.001
  - name: dead
    upstream: dead
  - name: by-name
    upstream: fake-by-name
    upstream_model: ok
  - name: sticky
    upstream: fake
    upstream_model: ok-a
  - name: sticky
    upstream: fake
    upstream_model: ok-b
  - name: claude-adaptive
    upstream: claude
    upstream_model: claude-thinking
    options: {{thinking: adaptive, efforts: [low, medium, high]}}
  - name: claude-*
    upstream: claude
  - name: nokey
    upstream: unconfigured
{more_models}
{more}"""


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    if redis_server.proc is None:
        redis_server.start()
    redis.Redis.from_url(redis_server.url).flushall()
    return redis_server.url


@dataclass
class RedisBackend:
    """A Redis the accounting suite runs against: one server, or a three-master Redis Cluster. Both
    keep their data on disk, so a stop and a start in the middle of a test lose nothing."""

    kind: str
    server: RedisServer | RedisCluster

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def cluster(self) -> bool:
        return self.kind == "cluster"

    @property
    def env(self) -> dict[str, str]:
        """What a gateway process needs to use it."""
        return {"GATEWAY_REDIS_CLUSTER": "true"} if self.cluster else {}

    def client(self, decode: bool = True) -> Any:
        if self.cluster:
            return redis.RedisCluster.from_url(self.url, decode_responses=decode)
        return redis.Redis.from_url(self.url, decode_responses=decode)

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        self.server.start()


@pytest.fixture(scope="session")
def _persistent_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis-aof"), persistent=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def _redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    cluster = RedisCluster(tmp_path_factory.mktemp("redis-cluster"), persistent=True)
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture(params=["single", "cluster"])
def redis_backend(request: pytest.FixtureRequest) -> RedisBackend:
    """Each accounting test that takes it runs on one Redis and on a three-master cluster, empty."""
    if request.param == "cluster":
        cluster: RedisCluster = request.getfixturevalue("_redis_cluster")
        if any(node.proc is None for node in cluster.nodes):
            cluster.start()
        cluster.flush()
        return RedisBackend("cluster", cluster)
    server: RedisServer = request.getfixturevalue("_persistent_redis")
    if server.proc is None:
        server.start()
    redis.Redis.from_url(server.url).flushall()
    return RedisBackend("single", server)


Fake = TypeVar("Fake", FakeOpenAI, FakeAnthropic, FakeDashScope)


def _serving(fake: Fake) -> Iterator[tuple[Fake, AiohttpServer]]:
    """A fake upstream on loopback for the whole session; tests clear what it recorded."""
    server = AiohttpServer(fake.app())
    yield fake, server
    server.close()


@pytest.fixture(scope="session")
def fake_server() -> Iterator[tuple[FakeOpenAI, AiohttpServer]]:
    yield from _serving(FakeOpenAI())


@pytest.fixture(scope="session")
def anthropic_server() -> Iterator[tuple[FakeAnthropic, AiohttpServer]]:
    yield from _serving(FakeAnthropic())


@pytest.fixture(scope="session")
def dashscope_server() -> Iterator[tuple[FakeDashScope, AiohttpServer]]:
    yield from _serving(FakeDashScope())


@pytest.fixture
def dashscope(dashscope_server: tuple[FakeDashScope, AiohttpServer]) -> FakeDashScope:
    dashscope_server[0].requests.clear()
    return dashscope_server[0]


@pytest.fixture
def fake(fake_server: tuple[FakeOpenAI, AiohttpServer]) -> FakeOpenAI:
    fake_server[0].requests.clear()
    return fake_server[0]


@pytest.fixture
def fake_url(fake_server: tuple[FakeOpenAI, AiohttpServer]) -> str:
    return fake_server[1].url


@pytest.fixture
def anthropic(anthropic_server: tuple[FakeAnthropic, AiohttpServer]) -> FakeAnthropic:
    anthropic_server[0].requests.clear()
    return anthropic_server[0]


def test_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "upstream_connect_timeout": 1.0,
        "upstream_read_timeout": 1.0,
        "ledger_flush_interval": 0.05,
        "max_body_bytes": 64 * 1024,
        "retry_backoff": 0.01,
        "access_log": False,  # tests about the access log turn it on; others keep the output readable
        "ledger_spool_dir": None,  # tests about the spool give one
        **overrides,
    }
    return Settings(**values)


@dataclass
class RunningGateway:
    app: GatewayApp
    server: UvicornServer

    @property
    def url(self) -> str:
        return self.server.url


@pytest.fixture
def start_gateway() -> Iterator[Callable[..., RunningGateway]]:
    running: list[RunningGateway] = []

    def start(config: GatewayConfig, **settings: Any) -> RunningGateway:
        values = test_settings(**settings)
        app = create_app(values, config)
        gateway = RunningGateway(app, UvicornServer(app, connection_limits(values)))
        running.append(gateway)
        return gateway

    yield start
    for gateway in running:
        gateway.server.close()


@pytest.fixture
def gateway(
    start_gateway: Callable[..., RunningGateway],
    fake_url: str,
    fake: FakeOpenAI,
    anthropic_server: tuple[FakeAnthropic, AiohttpServer],
) -> RunningGateway:
    """The gateway with the in-process ledger, in front of the fake upstreams and echo."""
    return start_gateway(parse_config(config_yaml(fake_url, anthropic_url=anthropic_server[1].url)))


@pytest.fixture
def checker() -> Iterator[Checker]:
    checker = Checker()
    yield checker


def sdk(url: str, checker: Checker, key: str = CLIENT_KEY) -> openai.OpenAI:
    """The official SDK, no retries, every response it reads validated against the spec."""
    http = httpx.Client(transport=ValidatingTransport(checker))
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, http_client=http)


def checked_http(checker: Checker, **kwargs: Any) -> httpx.Client:
    """A plain httpx client whose every response is validated against the spec."""
    return httpx.Client(transport=ValidatingTransport(checker), **kwargs)


@pytest.fixture
def client(gateway: RunningGateway, checker: Checker) -> Iterator[openai.OpenAI]:
    with sdk(gateway.url, checker) as client:
        yield client


@pytest.fixture
async def async_client(gateway: RunningGateway, checker: Checker) -> Any:
    http = httpx.AsyncClient(transport=AsyncValidatingTransport(checker))
    yield openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key=CLIENT_KEY, max_retries=0, http_client=http)
    await http.aclose()


@pytest.fixture
def raw(gateway: RunningGateway, checker: Checker) -> Iterator[httpx.Client]:
    with checked_http(checker, base_url=gateway.url, headers={"authorization": f"Bearer {CLIENT_KEY}"}) as http:
        yield http


@pytest.fixture
def anon(gateway: RunningGateway, checker: Checker) -> Iterator[httpx.Client]:
    """Without a key."""
    with checked_http(checker, base_url=gateway.url) as http:
        yield http


GOLDEN = Path(__file__).parent / "golden"
