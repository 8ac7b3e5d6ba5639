"""Managed keys in Redis: created, listed, updated and revoked through the admin API or `gateway keys`.

Only a key's SHA-256 digest is stored; the key itself is shown once, when it is made. Layout (one
hash tag, so every script touches one Redis Cluster slot):

    gw:{keys}:digest:<sha-256 hex>   string: the key's record (JSON): name, team, models, limits,
                                     budget and period, expiry, enabled, metadata, created_at
    gw:{keys}:name:<name>            string: the digest of the key of that name
    gw:{keys}:names                  set: every managed key's name

A revoked key keeps its record (with `enabled` false), so its name stays taken and its usage stays
attributed.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from typing import Any

import orjson

from gateway.accounting.keys import KeyStoreUnavailable, Principal, digest_of
from gateway.accounting.redis_client import REDIS_ERRORS
from gateway.errors import GatewayError

KEY_PREFIX = "sk-gw-"

# KEYS: name -> digest, digest -> record, the set of names. ARGV: digest hex, record, name.
_CREATE = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX') then
  return 0
end
redis.call('SET', KEYS[2], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[3])
return 1
"""


class KeyExists(GatewayError):
    status = 409
    type = "invalid_request_error"
    code = "key_exists"


class KeyNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "key_not_found"


class KeyStore:
    def __init__(self, redis: Any, prefix: str = "gw") -> None:
        self._redis = redis
        self._prefix = f"{prefix}:{{keys}}"
        self._create = redis.register_script(_CREATE)

    def _digest_key(self, hex_digest: str) -> str:
        return f"{self._prefix}:digest:{hex_digest}"

    def _name_key(self, name: str) -> str:
        return f"{self._prefix}:name:{name}"

    async def find(self, digest: bytes) -> Principal | None:
        """The usable-or-not record of the key with this digest; None when there is none."""
        raw = await self._call(self._redis.get(self._digest_key(digest.hex())))
        return Principal.from_dict(orjson.loads(raw)) if raw is not None else None

    async def create(self, principal: Principal) -> tuple[str, dict[str, Any]]:
        """Store a new key for `principal`; returns the key (shown once) and the stored record."""
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        hex_digest = digest_of(key).hex()
        record = {**principal.to_dict(), "managed": True, "created_at": time.time()}
        keys = [self._name_key(principal.name), self._digest_key(hex_digest), f"{self._prefix}:names"]
        made = await self._call(self._create(keys=keys, args=[hex_digest, orjson.dumps(record), principal.name]))
        if not made:
            raise KeyExists(f"A key named `{principal.name}` exists already.", param="name")
        return key, record

    async def get(self, name: str) -> dict[str, Any]:
        return (await self._record(name))[1]

    async def _record(self, name: str) -> tuple[str, dict[str, Any]]:
        """The digest (hex) and the record of the key of this name."""
        hex_digest = await self._call(self._redis.get(self._name_key(name)))
        raw = await self._call(self._redis.get(self._digest_key(hex_digest.decode()))) if hex_digest else None
        if raw is None:
            raise KeyNotFound(f"There is no managed key named `{name}`.", param="name")
        return hex_digest.decode(), orjson.loads(raw)

    async def list(self) -> list[dict[str, Any]]:
        names = sorted(n.decode() for n in await self._call(self._redis.smembers(f"{self._prefix}:names")))
        return [await self.get(name) for name in names]

    async def update(self, name: str, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Change fields of a key's record (not its name or its secret)."""
        hex_digest, record = await self._record(name)
        record.update({k: v for k, v in changes.items() if k not in ("name", "managed", "created_at")})
        Principal.from_dict(record)  # still a valid record
        await self._call(self._redis.set(self._digest_key(hex_digest), orjson.dumps(record)))
        return record

    async def revoke(self, name: str) -> dict[str, Any]:
        return await self.update(name, {"enabled": False})

    async def aclose(self) -> None:
        await self._redis.aclose()

    async def _call(self, awaitable: Any) -> Any:
        try:
            return await awaitable
        except REDIS_ERRORS as exc:
            raise KeyStoreUnavailable(f"The key store (Redis) is unreachable: {type(exc).__name__}.") from None
