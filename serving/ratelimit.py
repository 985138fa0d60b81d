"""Per-client token buckets in Redis, shared by every worker, with an in-process fallback.

One Lua script reads, refills and takes tokens atomically, so concurrent workers can never
admit more than the bucket holds; it uses Redis' clock so workers' clocks need not agree.
If Redis is down the service keeps answering: each worker then limits on its own bucket
(so the effective limit is up to workers x the configured one until Redis returns).

Leases: a worker takes up to ``lease`` tokens per Redis call and spends them from memory, so
a busy client costs one round trip per ``lease`` requests instead of one each (the call
blocks the event loop, where under load it was the largest wait: ``docs/ARCHITECTURE.md``).
Tokens are taken from the shared bucket before they are spent, so the workers together
admit no more than it gave them. A worker holds fewer than ``lease`` of a client's tokens at a
time, for at most the time the bucket takes to fill after its last take (then they are
forfeited). So a burst can exceed the bucket by at most ``lease - 1`` per worker, and a client
can be refused up to ``lease - 1`` requests early for each other worker holding its tokens. A
lease is at most a quarter of the bucket over the workers, which bounds both; small buckets
(burst < 4 x workers) get no lease and stay exact.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from serving.redis_guard import RedisGuard, RedisUnavailable

log = logging.getLogger("cca.serving.ratelimit")

# KEYS[1] bucket; ARGV: rate per s, burst, cost, wanted (>= cost), ttl ms.
# Returns {granted, retry_after_s}: granted is 0 (refused) or between cost and wanted.
# A refusal writes nothing: the stored state already yields the same refill later.
_TOKEN_BUCKET = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local wanted = tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = burst
elseif now > ts then
  tokens = math.min(burst, tokens + (now - ts) * rate)
else
  now = ts
end
if tokens >= cost then
  local granted = math.max(cost, math.min(wanted, math.floor(tokens)))
  redis.call('HSET', KEYS[1], 'tokens', string.format('%.9f', tokens - granted),
             'ts', string.format('%.6f', now))
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  return {granted, '0'}
end
return {0, string.format('%.6f', math.max((cost - tokens) / rate, 0.000001))}
"""

_MAX_CLIENT_KEY = 128


class _LocalBuckets:
    """The same token bucket in process memory, for when Redis is unreachable.

    Bounded LRU: a forgotten client simply starts again with a full bucket.
    """

    def __init__(self, rate_per_s: float, burst: int, max_clients: int) -> None:
        self._rate = rate_per_s
        self._burst = float(burst)
        self._max = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, client: str, cost: int) -> tuple[bool, float]:
        now = time.monotonic()
        with self._lock:
            tokens, ts = self._buckets.pop(client, (self._burst, now))
            tokens = min(self._burst, tokens + max(0.0, now - ts) * self._rate)
            if tokens >= cost:
                self._buckets[client] = (tokens - cost, now)
                allowed, retry = True, 0.0
            else:
                self._buckets[client] = (tokens, now)
                allowed, retry = False, (cost - tokens) / self._rate
            if len(self._buckets) > self._max:
                self._buckets.popitem(last=False)
        return allowed, retry


class _Leases:
    """Tokens a worker took from the shared bucket and has not spent yet, per client.

    Bounded LRU: a forgotten client's tokens are forfeited, which errs on the strict side.
    """

    def __init__(self, hold_s: float, max_clients: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._hold_s = hold_s
        self._max = max_clients
        self._clock = clock
        self._held: OrderedDict[str, tuple[int, float]] = OrderedDict()  # tokens, until
        self._lock = threading.Lock()

    def spend(self, client: str, cost: int) -> bool:
        now = self._clock()
        with self._lock:
            tokens, until = self._held.get(client, (0, 0.0))
            if tokens < cost or now >= until:
                return False
            self._held[client] = (tokens - cost, until)
        return True

    def keep(self, client: str, tokens: int) -> None:
        """Add ``tokens`` (taken, not spent) to what ``client``'s lease still holds; the lease
        then runs for ``hold_s`` from now (it holds fewer than ``lease`` tokens, since a
        worker only takes more when what it holds cannot pay)."""
        now = self._clock()
        with self._lock:
            held, until = self._held.pop(client, (0, 0.0))
            if now >= until:
                held = 0
            if held + tokens > 0:
                self._held[client] = (held + tokens, now + self._hold_s)
            if len(self._held) > self._max:
                self._held.popitem(last=False)


class RateLimiter:
    """``check(client)`` -> (allowed, retry_after_s); never raises on Redis failure.

    Counters for metrics: ``redis_up``, ``checks_redis`` (Redis calls), ``checks_leased``
    (answered from a lease), ``checks_local`` (Redis down), ``refused``.
    """

    def __init__(
        self,
        redis_url: str,
        rate_per_s: float,
        burst: int,
        prefix: str = "cca:rl:",
        *,
        connect_timeout_s: float = 0.05,
        read_timeout_s: float = 0.1,
        cooldown_s: float = 1.5,
        local_max_clients: int = 10_000,
        lease: int = 1,
        workers: int = 1,
    ) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError(f"rate_per_s must be > 0 and burst >= 1, got {rate_per_s}, {burst}")
        self.rate_per_s = float(rate_per_s)
        self.burst = int(burst)
        self.prefix = prefix
        # Idle keys expire once the bucket would be full again: an absent key means "full".
        self._ttl_ms = math.ceil(self.burst / self.rate_per_s * 1000) + 1000
        self._guard = RedisGuard(
            redis_url, name="rate limiter", fallback="limiting per worker in memory",
            connect_timeout_s=connect_timeout_s, read_timeout_s=read_timeout_s,
            cooldown_s=cooldown_s, logger=log,
        )
        # redis-py's Script sends EVALSHA and loads the script only on NOSCRIPT (first use,
        # or after a Redis restart), so the body crosses the wire once per Redis lifetime.
        self._script = self._guard.client.register_script(_TOKEN_BUCKET)
        self._local = _LocalBuckets(self.rate_per_s, self.burst, local_max_clients)
        self.lease = max(1, min(lease, self.burst // (4 * max(1, workers))))
        self._leases = _Leases(self.burst / self.rate_per_s, local_max_clients)
        self._count_lock = threading.Lock()
        self.checks_redis = 0
        self.checks_leased = 0
        self.checks_local = 0
        self.refused = 0

    @property
    def redis_up(self) -> bool:
        return self._guard.up

    @property
    def script_sha(self) -> str:
        return self._script.sha

    def key(self, client: str) -> str:
        """Readable key for ordinary client ids; long ones are hashed to bound key size."""
        if len(client) > _MAX_CLIENT_KEY:
            client = "sha256:" + hashlib.sha256(client.encode("utf-8", "surrogatepass")).hexdigest()
        return self.prefix + client

    def check(self, client: str, cost: int = 1) -> tuple[bool, float]:
        """Take ``cost`` tokens from ``client``'s bucket if it holds them.

        Returns (allowed, retry_after_s): when refused, the seconds until ``cost`` tokens are
        there. ``cost`` outside 1..burst can never succeed, so it is a ValueError (413/400).
        """
        if not 1 <= cost <= self.burst:
            raise ValueError(
                f"cost {cost} is outside 1..{self.burst} (the bucket size): "
                "split the request into smaller batches"
            )
        if self.lease > 1 and self._leases.spend(client, cost):
            with self._count_lock:
                self.checks_leased += 1
            return True, 0.0
        key = self.key(client)
        args = (self.rate_per_s, self.burst, cost, max(cost, self.lease), self._ttl_ms)
        try:
            res = self._guard.run(lambda r: self._script(keys=[key], args=args, client=r))
            granted, retry = int(res[0]), float(res[1])
            allowed, local = granted >= cost, False
            if granted > cost:
                self._leases.keep(client, granted - cost)
        except RedisUnavailable:
            allowed, retry = self._local.take(client, cost)
            local = True
        with self._count_lock:
            if local:
                self.checks_local += 1
            else:
                self.checks_redis += 1
            if not allowed:
                self.refused += 1
        return allowed, retry

    def stats(self) -> dict[str, float]:
        return {
            "redis_up": float(self.redis_up),
            "checks_redis": self.checks_redis,
            "checks_leased": self.checks_leased,
            "checks_local": self.checks_local,
            "refused": self.refused,
            "redis_outages": self._guard.outages,
        }

    def close(self) -> None:
        self._guard.close()
