"""Caller keys: which principal a presented API key belongs to."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from fnmatch import fnmatchcase

from gateway.config import KeyConfig
from gateway.errors import AuthenticationFailed


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the name of the key in config, and the models it may use."""

    name: str
    model_patterns: tuple[str, ...] | None = None

    def may_use(self, model: str) -> bool:
        if self.model_patterns is None:
            return True
        return any(fnmatchcase(model, pattern) for pattern in self.model_patterns)


class KeyTable:
    """Keys are held only as SHA-256 digests and compared with `hmac.compare_digest`."""

    def __init__(self, keys: list[KeyConfig]) -> None:
        self._by_digest: dict[bytes, tuple[bytes, Principal]] = {}
        for key in keys:
            digest = key.digest()
            patterns = tuple(key.models) if key.models is not None else None
            self._by_digest[digest] = (digest, Principal(key.name, patterns))

    def authenticate(self, presented: str | None) -> Principal:
        if not presented:
            raise AuthenticationFailed("You didn't provide an API key. Send it as `Authorization: Bearer <key>`.")
        digest = hashlib.sha256(presented.encode()).digest()
        # The dict lookup is on the digest, so its timing says nothing usable about the key itself.
        found = self._by_digest.get(digest)
        if found is None or not hmac.compare_digest(found[0], digest):
            raise AuthenticationFailed("Incorrect API key provided.")
        return found[1]


def key_from_headers(authorization: str | None, api_key: str | None, x_api_key: str | None) -> str | None:
    """The caller's key from `Authorization: Bearer`, `api-key` or `x-api-key`, in that order."""
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return api_key or x_api_key or None
