"""Caller keys: which principal a presented API key belongs to.

Keys come from the config file (`KeyTable`) and, with Redis, from the managed key store
(`accounting/keystore.py`: the admin API and `gateway keys`). Either way only SHA-256 digests are
held. `Keys.authenticate` looks in the config table first, then in an in-process cache of the
store, then in the store itself: a managed key's record is reused for `cache_seconds`, which bounds
how long a revoke or an update takes to reach every replica.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

from gateway.config import KeyConfig
from gateway.errors import AuthenticationFailed, GatewayError

if TYPE_CHECKING:
    from gateway.accounting.keystore import KeyStore

# Unknown digests remembered at most this long, and at most this many entries, so a client spraying
# random keys costs one store lookup per key and per replica, with bounded memory.
_CACHE_ENTRIES = 10_000


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a key's name and everything decided by the key (models, limits, budget)."""

    name: str
    model_patterns: tuple[str, ...] | None = None
    team: str | None = None
    rpm: int | None = None
    tpm: int | None = None
    budget: float | None = None
    budget_period: str = "month"
    model_limits: tuple[tuple[str, int | None, int | None], ...] = ()  # (model pattern, rpm, tpm)
    expires_at: float | None = None  # Unix time
    enabled: bool = True
    metadata: Mapping[str, str] = field(default_factory=dict)
    managed: bool = False  # from the key store (else from the config file)

    def may_use(self, model: str) -> bool:
        if self.model_patterns is None:
            return True
        return any(fnmatchcase(model, pattern) for pattern in self.model_patterns)

    @property
    def limited(self) -> bool:
        """Whether admission has anything to check for this key."""
        return self.rpm is not None or self.tpm is not None or self.budget is not None or bool(self.model_limits)

    def matching_model_limits(self, model: str) -> list[tuple[str, int | None, int | None]]:
        return [limit for limit in self.model_limits if fnmatchcase(model, limit[0])]

    def check_usable(self, now: float) -> None:
        if not self.enabled:
            raise AuthenticationFailed("This API key has been revoked.")
        if self.expires_at is not None and now >= self.expires_at:
            when = datetime.fromtimestamp(self.expires_at, UTC).isoformat(timespec="seconds")
            raise AuthenticationFailed(f"This API key expired at {when}.")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["model_patterns"] = list(self.model_patterns) if self.model_patterns is not None else None
        out["metadata"] = dict(self.metadata)
        out["model_limits"] = [{"model": m, "rpm": r, "tpm": t} for m, r, t in self.model_limits]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Principal:
        values = {k: v for k, v in data.items() if k in _FIELDS}
        patterns = values.get("model_patterns")
        values["model_patterns"] = tuple(patterns) if patterns is not None else None
        values["metadata"] = dict(values.get("metadata") or {})
        values["model_limits"] = tuple(
            (limit["model"], limit.get("rpm"), limit.get("tpm")) for limit in values.get("model_limits") or ()
        )
        return cls(**values)

    @classmethod
    def from_config(cls, key: KeyConfig) -> Principal:
        return cls(
            name=key.name,
            model_patterns=tuple(key.models) if key.models is not None else None,
            team=key.team,
            rpm=key.rpm,
            tpm=key.tpm,
            budget=key.budget,
            budget_period=key.budget_period,
            model_limits=tuple((limit.model, limit.rpm, limit.tpm) for limit in key.model_limits),
            expires_at=unix_time(key.expires) if key.expires is not None else None,
            metadata=dict(key.metadata),
        )


_FIELDS = frozenset(Principal.__slots__)


def unix_time(when: datetime) -> float:
    """A datetime without a zone is UTC."""
    return (when if when.tzinfo is not None else when.replace(tzinfo=UTC)).timestamp()


def digest_of(presented: str) -> bytes:
    return hashlib.sha256(presented.encode()).digest()


class KeyStoreUnavailable(GatewayError):
    status = 503
    type = "server_error"
    code = "key_store_unavailable"


class KeyTable:
    """The config file's keys, held only as SHA-256 digests and compared with `hmac.compare_digest`."""

    def __init__(self, keys: list[KeyConfig]) -> None:
        self._by_digest: dict[bytes, tuple[bytes, Principal]] = {}
        for key in keys:
            digest = key.digest()
            self._by_digest[digest] = (digest, Principal.from_config(key))

    def find(self, digest: bytes) -> Principal | None:
        # The dict lookup is on the digest, so its timing says nothing usable about the key itself.
        found = self._by_digest.get(digest)
        if found is None or not hmac.compare_digest(found[0], digest):
            return None
        return found[1]

    def names(self) -> set[str]:
        return {principal.name for _, principal in self._by_digest.values()}

    def authenticate(self, presented: str | None) -> Principal:
        """Config keys only (no store): for tests and tools."""
        if not presented:
            raise AuthenticationFailed(_NO_KEY)
        found = self.find(digest_of(presented))
        if found is None:
            raise AuthenticationFailed(_WRONG_KEY)
        found.check_usable(time.time())
        return found


_NO_KEY = "You didn't provide an API key. Send it as `Authorization: Bearer <key>`."
_WRONG_KEY = "Incorrect API key provided."


class Keys:
    """Config keys, then managed keys through a bounded in-process cache."""

    def __init__(self, table: KeyTable, store: KeyStore | None = None, cache_seconds: float = 2.0) -> None:
        self.table = table
        self.store = store
        self.cache_seconds = cache_seconds
        self._cache: dict[bytes, tuple[Principal | None, float]] = {}  # digest -> (found, fetched at)
        self._finding: dict[bytes, asyncio.Future[Principal | None]] = {}  # lookups in flight

    async def authenticate(self, presented: str | None) -> Principal:
        if not presented:
            raise AuthenticationFailed(_NO_KEY)
        digest = digest_of(presented)
        found = self.table.find(digest)
        if found is None and self.store is not None:
            found = await self._managed(digest)
        if found is None:
            raise AuthenticationFailed(_WRONG_KEY)
        found.check_usable(time.time())
        return found

    async def _managed(self, digest: bytes) -> Principal | None:
        assert self.store is not None
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and now - cached[1] < self.cache_seconds:
            return cached[0]
        try:
            found = await self._find(digest)
        except KeyStoreUnavailable:
            if cached is not None:  # the last known record beats refusing a known caller
                return cached[0]
            raise
        if cached is None and len(self._cache) >= _CACHE_ENTRIES:
            self._cache.pop(next(iter(self._cache)))
        self._cache[digest] = (found, now)
        return found

    async def _find(self, digest: bytes) -> Principal | None:
        """One store lookup per digest at a time: a burst of requests with a key this replica has
        not seen yet shares one Redis read."""
        assert self.store is not None
        running = self._finding.get(digest)
        if running is None:
            running = self._finding[digest] = asyncio.ensure_future(self.store.find(digest))
            running.add_done_callback(lambda done: self._found(digest, done))
        return await asyncio.shield(running)

    def _found(self, digest: bytes, done: asyncio.Future[Principal | None]) -> None:
        self._finding.pop(digest, None)
        if not done.cancelled():
            done.exception()  # retrieved here too, in case every request waiting for it has gone


def key_from_headers(authorization: str | None, api_key: str | None, x_api_key: str | None) -> str | None:
    """The caller's key from `Authorization: Bearer`, `api-key` or `x-api-key`, in that order."""
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return api_key or x_api_key or None
