"""An identity provider's RS256 signing keys (JWKS), kept fresh without a fetch per request.

Separate from ``serving.auth`` so the caching policy can be read (and tested) on its own; it
raises its own two errors and leaves HTTP statuses to the caller.
"""

from __future__ import annotations

import logging
import threading
import time
from urllib.error import HTTPError

import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from jwt.exceptions import PyJWKClientError, PyJWTError

from cca.errors import ConfigError

log = logging.getLogger("cca.serving.auth")


class KeysUnavailable(Exception):
    """The key is not known and the provider could not be asked (the reason is the message)."""


class UnknownKey(Exception):
    """The provider's current set does not hold this key id."""


class JwksKeys:
    """RS256 public keys by ``kid`` from a JWKS URL, fetched (and parsed) with PyJWKClient.

    The hot path is a dict lookup of parsed keys. The set is refetched by one thread once it is
    ``lifespan_s`` old (a withdrawn key stops working) or for an unseen kid, at most every
    ``cooldown_s`` (made-up kids cannot hammer the provider). PyJWKClient's caches are off: they
    keep withdrawn keys for ever (``cache_keys``) or retry a down provider on every request once
    expired; here fetched keys keep working through an outage and only unseen kids fail.
    """

    def __init__(self, url: str, timeout_s: float, lifespan_s: float, cooldown_s: float):
        try:
            self._client = jwt.PyJWKClient(url, cache_jwk_set=False, timeout=timeout_s)
        except PyJWKClientError as exc:
            raise ConfigError(f"CCA_AUTH_JWKS_URL: {exc}") from exc
        self.url, self.lifespan_s, self.cooldown_s = url, lifespan_s, cooldown_s
        self._keys: dict[str, RSAPublicKey] = {}
        self._fresh_until = self._next_fetch = float("-inf")  # time.monotonic() values
        self._error: str | None = None  # why the last fetch failed
        self._lock = threading.Lock()

    def fresh_key(self, kid: str | None) -> RSAPublicKey | None:
        """The key if it is known and the set is fresh; never fetches."""
        return self._keys.get(kid or "") if time.monotonic() < self._fresh_until else None

    def key(self, kid: str) -> RSAPublicKey:
        """The key for ``kid``, fetching the set when it is stale or lacks the kid;
        raises :class:`KeysUnavailable` or :class:`UnknownKey`."""
        key = self._keys.get(kid)
        if key is not None and time.monotonic() < self._fresh_until:
            return key
        if time.monotonic() >= self._next_fetch:
            # A thread that already has a (stale) key does not wait for another's fetch.
            if self._lock.acquire(blocking=key is None):
                try:
                    if time.monotonic() >= self._next_fetch:  # nobody fetched while we waited
                        self._fetch()
                finally:
                    self._lock.release()
            key = self._keys.get(kid)
        if key is not None:
            return key
        if self._error is not None:
            raise KeysUnavailable(self._error)
        raise UnknownKey(kid)

    def _fetch(self) -> None:
        self._next_fetch = time.monotonic() + self.cooldown_s
        try:
            jwks = self._client.get_signing_keys(refresh=True)
        except (PyJWTError, OSError, ValueError) as exc:
            cause = exc.__cause__ or exc
            reason = f"HTTP {cause.code}" if isinstance(cause, HTTPError) else getattr(
                cause, "reason", cause)
            self._error = str(reason) or type(cause).__name__
            log.warning("JWKS fetch from %s failed: %s", self.url, self._error)
            return
        keys = {k.key_id: k.key for k in jwks
                if k.algorithm_name == "RS256" and isinstance(k.key, RSAPublicKey)}
        if not keys:
            self._error = "no RS256 signing keys in the set"
            return
        self._keys, self._error = keys, None
        self._fresh_until = time.monotonic() + self.lifespan_s
        log.info("JWKS from %s: %d RS256 keys", self.url, len(keys))
