"""A thread-safe circuit breaker, so a failing dependency costs no latency while it is down.

closed: calls go through; ``failures`` consecutive failures open it.
open: calls are refused without touching the network until the cooldown (or a server's
Retry-After) has passed.
half_open: exactly one trial call goes through; its success closes the breaker, its failure
opens it again. Other callers are refused while the trial is in flight.
"""

from __future__ import annotations

import contextlib
import email.utils
import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Literal

BreakerState = Literal["closed", "open", "half_open"]
MAX_RETRY_AFTER_S = 600.0  # a server asking for hours is treated as asking for 10 minutes


def retry_after_s(headers: Mapping[str, str] | None) -> float | None:
    """Seconds from retry-after-ms / Retry-After (seconds or HTTP date), capped; None if absent."""
    if not headers:
        return None
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) * scale
        except ValueError:
            parsed = email.utils.parsedate_tz(value) if name == "retry-after" else None
            if parsed is None:
                continue
            seconds = email.utils.mktime_tz(parsed) - time.time()
        if math.isfinite(seconds):
            return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)
    return None


class CircuitBreaker:
    def __init__(
        self,
        failures: int,
        cooldown_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[BreakerState, BreakerState], None] | None = None,
    ) -> None:
        if failures < 1 or cooldown_s <= 0:
            raise ValueError("failures must be >= 1 and cooldown_s > 0")
        self.failures, self.cooldown_s = failures, cooldown_s
        self._clock, self._on_change = clock, on_change
        self._lock = threading.RLock()  # re-entrant: on_change may read the state
        self._state: BreakerState = "closed"
        self._consecutive = 0
        self._open_until = 0.0
        self._trial_in_flight = False
        self.opened_count = 0  # times the breaker has opened, for metrics

    @property
    def state(self) -> BreakerState:
        """The state as a caller would meet it now: an expired open breaker reads half_open."""
        with self._lock:
            if self._state == "open" and self._clock() >= self._open_until:
                return "half_open"
            return self._state

    @property
    def retry_in_s(self) -> float:
        """Seconds until an open breaker lets a trial call through (0 when not open)."""
        with self._lock:
            if self._state != "open":
                return 0.0
            return max(0.0, self._open_until - self._clock())

    def allow(self) -> bool:
        """True when the caller may make the call; the caller must then record its outcome."""
        with self._lock:
            if self._state == "closed":
                return True
            if self._state == "open":
                if self._clock() < self._open_until:
                    return False
                self._set("half_open")
            if self._trial_in_flight:
                return False
            self._trial_in_flight = True
            return True

    def record_success(self) -> None:
        with self._lock:
            self._consecutive = 0
            if self._state == "half_open":
                self._trial_in_flight = False
                self._set("closed")
            # open: a late success from a call begun before the breaker opened does not
            # override a cooldown or a server's Retry-After.

    def record_failure(self) -> None:
        with self._lock:
            self._consecutive += 1
            if self._state == "half_open" or self._consecutive >= self.failures:
                self._open_locked(self.cooldown_s)

    def trip(self, for_s: float | None = None) -> None:
        """Open at once, e.g. on HTTP 429 for the server's Retry-After seconds."""
        with self._lock:
            self._consecutive += 1
            self._open_locked(self.cooldown_s if for_s is None else max(0.0, for_s))

    def _open_locked(self, for_s: float) -> None:
        self._trial_in_flight = False
        # Never shorten an opening another thread already set (e.g. a longer Retry-After).
        self._open_until = max(self._open_until, self._clock() + for_s)
        if self._state != "open":
            self.opened_count += 1
            self._set("open")

    def _set(self, new: BreakerState) -> None:
        old, self._state = self._state, new
        if self._on_change is not None and old != new:
            with contextlib.suppress(Exception):  # a metrics hook must not break the caller
                self._on_change(old, new)
