"""The one way the gateway connects to Redis: one server (password or TLS in the URL) or a cluster."""

from __future__ import annotations

import logging
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ClusterCrossSlotError, RedisClusterException, RedisError, ResponseError

log = logging.getLogger("gateway.redis")

# What a Redis call can fail with when Redis is unreachable or the connection breaks. redis-py's
# cluster client raises RedisClusterException (not a RedisError) when no node answers, and surfaces
# a connection closed under a command (uvloop) as RuntimeError or AttributeError.
REDIS_ERRORS = (TimeoutError, RedisError, RedisClusterException, OSError, RuntimeError, AttributeError)


def rejected(exc: BaseException) -> bool:
    """Redis answered, and would answer the same again: the command itself is wrong (a script error,
    a wrong type, a cross-slot call), not an outage. Retrying it cannot help."""
    return type(exc) in (ResponseError, ClusterCrossSlotError)


def redis_client(url: str, *, timeout: float, cluster: bool = False) -> Any:
    kwargs: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    if cluster:
        return aioredis.RedisCluster.from_url(url, **kwargs)
    return aioredis.Redis.from_url(url, **kwargs)


async def warm_up(client: Any) -> None:
    """Learn a cluster's slots before the first requests: commands that race the client's own first
    discovery can fail on connections it replaces. Unreachable now is not fatal: the client retries."""
    if isinstance(client, aioredis.RedisCluster):
        try:
            await client.initialize()
        except REDIS_ERRORS as exc:
            log.warning("Redis Cluster unreachable at start-up (%s): serving, and retrying on use", type(exc).__name__)
