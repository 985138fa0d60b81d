"""Per-client token buckets in Redis, shared by every worker, with an in-process fallback.

One Lua script reads, refills and takes tokens atomically, so concurrent workers can never
admit more than the bucket holds; it uses Redis' clock so workers' clocks need not agree.
If Redis is down the service keeps answering: each worker then limits on its own bucket
(so the effective limit is up to workers x the configured one until Redis returns).
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections import OrderedDict

from serving.redis_guard import RedisGuard, RedisUnavailable

log = logging.getLogger("cca.serving.ratelimit")

# KEYS[1] bucket; ARGV: rate per s, burst, cost, ttl ms. Returns {allowed, retry_after_s}.
# A refusal writes nothing: the stored state already yields the same refill later.
_TOKEN_BUCKET = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
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
  redis.call('HSET', KEYS[1], 'tokens', string.format('%.9f', tokens - cost),
             'ts', string.format('%.6f', now))
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  return {1, '0'}
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


class RateLimiter:
    """``check(client)`` -> (allowed, retry_after_s); never raises on Redis failure.

    Counters for metrics: ``redis_up``, ``checks_redis``, ``checks_local``, ``refused``.
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
        self._count_lock = threading.Lock()
        self.checks_redis = 0
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
        key = self.key(client)
        args = (self.rate_per_s, self.burst, cost, self._ttl_ms)
        try:
            res = self._guard.run(lambda r: self._script(keys=[key], args=args, client=r))
            allowed, retry = bool(res[0]), float(res[1])
            local = False
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
            "checks_local": self.checks_local,
            "refused": self.refused,
            "redis_outages": self._guard.outages,
        }

    def close(self) -> None:
        self._guard.close()
