"""The one way the gateway connects to Redis: one server (password or TLS in the URL) or a cluster."""

from __future__ import annotations

import logging
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ClusterCrossSlotError, ConnectionError, RedisClusterException, RedisError, ResponseError

log = logging.getLogger("gateway.redis")

# What a Redis call can fail with when Redis is unreachable or the connection breaks. redis-py's
# cluster client raises RedisClusterException (not a RedisError) when no node answers, and surfaces
# a connection closed under a command (uvloop) as RuntimeError or AttributeError.
REDIS_ERRORS = (TimeoutError, RedisError, RedisClusterException, OSError, RuntimeError, AttributeError)


def rejected(exc: BaseException) -> bool:
    """Redis answered, and would answer the same again: the command itself is wrong (a script error,
    a wrong type, a cross-slot call), not an outage. Retrying it cannot help."""
    return type(exc) in (ResponseError, ClusterCrossSlotError)


# Connections per process to one Redis. A request that finds them all busy waits for one (up to the
# timeout) rather than failing at once, as redis-py's default pool would.
MAX_CONNECTIONS = 256


def redis_client(url: str, *, timeout: float, cluster: bool = False) -> Any:
    kwargs: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        # A pooled connection Redis closed (it restarted) fails once, then a fresh one is tried. A
        # timeout is not tried again: the command may still run (a stalled Redis runs both, and a
        # script that counts would count twice), and the caller would wait two timeouts, not one.
        "retry": Retry(NoBackoff(), 1, supported_errors=(ConnectionError,)),
        "retry_on_error": [ConnectionError],
    }
    if cluster:
        return aioredis.RedisCluster.from_url(url, max_connections=MAX_CONNECTIONS, **kwargs)
    pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=MAX_CONNECTIONS, timeout=timeout, **kwargs)
    return aioredis.Redis(connection_pool=pool)


async def warm_up(client: Any) -> None:
    """Learn a cluster's slots before the first requests: commands that race the client's own first
    discovery can fail on connections it replaces. Unreachable now is not fatal: the client retries."""
    if isinstance(client, aioredis.RedisCluster):
        try:
            await client.initialize()
        except REDIS_ERRORS as exc:
            log.warning("Redis Cluster unreachable at start-up (%s): serving, and retrying on use", type(exc).__name__)
