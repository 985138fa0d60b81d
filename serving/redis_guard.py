"""Redis behind short timeouts and a small breaker, shared by the rate limiter and idempotency.

The request path must never wait on a dead or stalled Redis: every call gets
``connect_timeout_s`` to connect and ``read_timeout_s`` to answer (50 and 100 ms by default),
and after a failure the breaker skips Redis for ``cooldown_s`` so only one call per cooldown
(the probe) can pay a timeout. Callers catch :class:`RedisUnavailable` and fall back; the
guard logs one warning per outage, not one per request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

T = TypeVar("T")

_log = logging.getLogger("cca.serving.redis_guard")


class RedisUnavailable(RuntimeError):
    """Redis is down, slow or erroring, or the breaker is open: use the fallback."""


class RedisGuard:
    """A pooled, thread-safe Redis client whose calls fail fast instead of hanging.

    ``up`` is the last known state (False from the first failure until a call succeeds).
    """

    def __init__(
        self,
        redis_url: str,
        *,
        name: str,
        fallback: str,
        connect_timeout_s: float = 0.05,
        read_timeout_s: float = 0.1,
        cooldown_s: float = 1.5,
        logger: logging.Logger | None = None,
    ) -> None:
        self.name = name
        self._fallback = fallback
        self._cooldown_s = cooldown_s
        self._log = logger or _log
        # No retries: redis-py 6+ retries 10 times with backoff by default, which would turn
        # one short timeout into seconds on the request path.
        self._pool = redis.ConnectionPool.from_url(
            redis_url,
            socket_connect_timeout=connect_timeout_s,
            socket_timeout=read_timeout_s,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        self.client = redis.Redis(connection_pool=self._pool)
        self._lock = threading.Lock()
        self._open_until = 0.0
        self.up = True
        self.failures = 0  # calls that failed (each one paid at most one timeout)
        self.outages = 0  # up -> down transitions
        self.skipped = 0  # calls refused by the open breaker (no network, no wait)

    def run(self, op: Callable[[redis.Redis], T], *, force: bool = False) -> T:
        """Run ``op(client)``; raise :class:`RedisUnavailable` instead of any Redis error.

        ``force`` tries Redis even while the breaker is open (for rare calls that must not be
        silently skipped, e.g. deletion requests).
        """
        if not force and not self._allow():
            raise RedisUnavailable(f"{self.name}: Redis skipped (breaker open)")
        try:
            result = op(self.client)
        except (redis.RedisError, OSError) as exc:
            self._failed(exc)
            raise RedisUnavailable(f"{self.name}: {exc}") from exc
        if not self.up:
            self._recovered()
        return result

    def _allow(self) -> bool:
        if self.up:  # fast path: no lock while healthy
            return True
        now = time.monotonic()
        with self._lock:
            if now < self._open_until:
                self.skipped += 1
                return False
            # This caller is the probe; everyone else keeps skipping until it reports back.
            self._open_until = now + self._cooldown_s
            return True

    def _failed(self, exc: BaseException) -> None:
        with self._lock:
            self.failures += 1
            self._open_until = time.monotonic() + self._cooldown_s
            first = self.up
            if first:
                self.up = False
                self.outages += 1
        if first:
            self._log.warning(
                "%s: Redis unavailable (%s: %s); %s, retrying every %.1f s",
                self.name, type(exc).__name__, exc, self._fallback, self._cooldown_s,
            )

    def _recovered(self) -> None:
        with self._lock:
            was_down = not self.up
            self.up = True
            self._open_until = 0.0
        if was_down:
            self._log.info("%s: Redis is back", self.name)

    def close(self) -> None:
        """Drop pooled connections (tests, shutdown)."""
        self._pool.disconnect()
