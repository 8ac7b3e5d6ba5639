"""The one way the gateway connects to Redis: one server (password or TLS in the URL) or a cluster."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis


def redis_client(url: str, *, timeout: float, cluster: bool = False) -> Any:
    kwargs: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    if cluster:
        return aioredis.RedisCluster.from_url(url, **kwargs)
    return aioredis.Redis.from_url(url, **kwargs)
