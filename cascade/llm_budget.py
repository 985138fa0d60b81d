"""A daily spending cap for the LLM stage, shared by every worker and process.

Past the cap the stage is skipped (its tickets go to human review) until the next UTC day, so
a traffic spike or a prompt that grew cannot turn into an unbounded bill. The day's spend is
an INCRBYFLOAT counter in Redis when Redis is reachable; otherwise (or with no Redis
installed) each process counts its own spend, which can only under-count across processes —
said in the log once per outage.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger(__name__)

_REDIS_RETRY_S = 5.0


def _today() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d")


class DailyBudget:
    def __init__(self, limit_usd: float | None, redis_url: str | None = None,
                 prefix: str = "cca:llm:spend:") -> None:
        self.limit_usd = limit_usd
        self.prefix = prefix
        self._local: dict[str, float] = {}
        self._lock = threading.Lock()
        self._redis: Any = None
        self._redis_down_until = 0.0
        if limit_usd is not None and redis_url:
            try:
                # Deferred: redis is an optional dependency (the serving extra).
                import redis

                self._redis = redis.Redis.from_url(redis_url, socket_timeout=0.1,
                                                   socket_connect_timeout=0.1)
            except ImportError:
                log.info("redis is not installed: the LLM budget is counted per process")

    def _shared(self, op: str, *args: Any) -> float | None:
        if self._redis is None or time.monotonic() < self._redis_down_until:
            return None
        try:
            value = getattr(self._redis, op)(*args)
        except Exception as exc:  # any Redis problem: count locally for a while
            if self._redis_down_until == 0.0 or time.monotonic() >= self._redis_down_until:
                log.warning("LLM budget: Redis unavailable (%s); counting per process",
                            type(exc).__name__)
            self._redis_down_until = time.monotonic() + _REDIS_RETRY_S
            return None
        return float(value or 0.0)

    def spent_today(self) -> float:
        day = _today()
        shared = self._shared("get", self.prefix + day)
        with self._lock:
            local = self._local.get(day, 0.0)
        return max(shared, local) if shared is not None else local

    def exhausted(self) -> bool:
        return self.limit_usd is not None and self.spent_today() >= self.limit_usd

    def add(self, cost_usd: float) -> None:
        if self.limit_usd is None or cost_usd <= 0:
            return
        day = _today()
        with self._lock:
            self._local = {day: self._local.get(day, 0.0) + cost_usd}  # older days dropped
        key = self.prefix + day
        if self._shared("incrbyfloat", key, cost_usd) is not None:
            self._shared("expire", key, 2 * 24 * 3600)
