"""Rate limiting and idempotency on a real Redis (a unique key prefix per test), and on a
private redis-server the test kills, stalls (SIGSTOP) or never starts (a closed port).
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from unittest import mock

import pytest
import redis

from cca.settings import Settings
from serving.idempotency import IdempotencyStore
from serving.ratelimit import RateLimiter
from serving.redis_guard import RedisUnavailable
from tests.conftest import require
from tests.servers import PrivateRedis, free_port

REDIS_URL = Settings().redis_url


@pytest.fixture(scope="module")
def shared() -> redis.Redis:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=0.5)
    try:
        up = bool(client.ping())
    except redis.RedisError:
        up = False
    require(up, f"no Redis at {REDIS_URL}")
    return client


@pytest.fixture
def prefix(shared: redis.Redis) -> Iterator[str]:
    pfx = f"cca:test:{uuid.uuid4().hex}:"
    yield pfx
    for key in shared.scan_iter(match=pfx + "*", count=1000):
        shared.delete(key)


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    require(shutil.which("redis-server") is not None, "redis-server binary not installed")
    server = PrivateRedis()
    server.start()
    yield server
    server.kill()  # SIGKILL also ends a stopped (SIGSTOP) server


def _cost_ms(fn, n: int = 200) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1000


def test_burst_refusal_retry_after_and_refill(prefix: str) -> None:
    rl = RateLimiter(REDIS_URL, rate_per_s=10, burst=5, prefix=prefix)
    assert [rl.check("c")[0] for _ in range(5)] == [True] * 5
    allowed, retry = rl.check("c")
    assert not allowed and 0 < retry <= 0.1  # one token at 10/s
    allowed, retry = rl.check("c", cost=3)
    assert not allowed and 0.1 < retry <= 0.3
    assert rl.redis_up and rl.checks_local == 0 and rl.refused == 2
    # One Lua script, loaded once and then run by SHA.
    assert rl._guard.client.script_exists(rl.script_sha) == [True]
    with pytest.raises(ValueError, match="bucket size"):
        rl.check("c", cost=6)  # can never succeed: the caller answers 413
    with pytest.raises(ValueError):
        rl.check("c", cost=0)
    time.sleep(rl.check("c")[1] + 0.01)  # refill: one token back after retry_after
    assert rl.check("c")[0] and not rl.check("c")[0]


def test_clients_are_isolated_and_keys_expire(prefix: str, shared: redis.Redis) -> None:
    rl = RateLimiter(REDIS_URL, rate_per_s=1, burst=3, prefix=prefix)
    for _ in range(3):
        rl.check("alice")
    assert not rl.check("alice")[0]
    assert rl.check("bob")[0]
    assert 0 < shared.pttl(prefix + "bob") <= 4000  # full again after 3 s, plus margin
    long_id = "x" * 500
    assert rl.check(long_id)[0]
    assert rl.key(long_id).startswith(prefix + "sha256:")


def _hammer(workers: list[RateLimiter], attempts: int) -> int:
    """Four threads per worker check the same client ``attempts`` times each, all released
    together; how many were admitted."""
    barrier = threading.Barrier(4 * len(workers))

    def hammer(rl: RateLimiter) -> int:
        barrier.wait()
        return sum(rl.check("shared")[0] for _ in range(attempts))

    with ThreadPoolExecutor(4 * len(workers)) as pool:
        return sum(pool.map(hammer, workers * 4))


def test_concurrent_workers_never_over_admit(prefix: str) -> None:
    # Two limiters = two workers sharing Redis; almost no refill during the test.
    workers = [RateLimiter(REDIS_URL, rate_per_s=0.001, burst=50, prefix=prefix)
               for _ in range(2)]
    assert _hammer(workers, 40) == 50  # 320 attempts, exactly the burst admitted
    assert all(w.checks_local == 0 for w in workers)


def test_leases_save_round_trips_and_workers_still_never_over_admit(prefix: str) -> None:
    # Two workers leasing 10 tokens at a time from one bucket of 200 (almost no refill).
    workers = [RateLimiter(REDIS_URL, rate_per_s=0.001, burst=200, prefix=prefix, lease=10,
                           workers=2) for _ in range(2)]
    assert [w.lease for w in workers] == [10, 10]
    admitted = _hammer(workers, 60)
    assert admitted == 200  # 480 attempts: exactly the bucket, none held back at the end
    leased = sum(w.checks_leased for w in workers)
    assert leased >= 200 - 2 * 20, leased  # ~9 of every 10 admitted without a Redis call
    refused = sum(w.refused for w in workers)
    assert sum(w.checks_redis for w in workers) == admitted - leased + refused


def test_lease_size_and_how_long_tokens_are_held(prefix: str, shared: redis.Redis) -> None:
    # A lease is at most a quarter of the bucket over the workers: small buckets stay exact.
    assert RateLimiter(REDIS_URL, rate_per_s=10, burst=5, lease=10, workers=2).lease == 1
    assert RateLimiter(REDIS_URL, rate_per_s=10, burst=40, lease=10, workers=2).lease == 5
    rl = RateLimiter(REDIS_URL, rate_per_s=100, burst=40, prefix=prefix, lease=10)
    assert rl.lease == 10
    assert rl.check("alice") == (True, 0.0)
    assert float(shared.hget(prefix + "alice", "tokens")) <= 30.01  # 10 taken: 9 held
    assert [rl.check("alice")[0] for _ in range(9)] == [True] * 9
    assert (rl.checks_redis, rl.checks_leased) == (1, 9)
    assert rl.check("bob")[0] and rl.checks_redis == 2  # a lease is one client's
    rl.check("alice")  # a new lease of 10: 9 held ...
    time.sleep(40 / 100 + 0.05)  # ... until the bucket could have filled again: forfeited
    assert rl.check("alice")[0] and (rl.checks_redis, rl.checks_leased) == (4, 9)
    # A batch larger than the lease takes exactly its cost.
    assert rl.check("carol", cost=25) == (True, 0.0)
    assert 14.99 <= float(shared.hget(prefix + "carol", "tokens")) <= 15.01


def test_rate_limit_survives_redis_death_and_recovers(
    private_redis: PrivateRedis, caplog: pytest.LogCaptureFixture,
) -> None:
    rl = RateLimiter(private_redis.url, rate_per_s=1, burst=3, cooldown_s=0.3)
    assert rl.check("x")[0]
    redis.Redis(port=private_redis.port).script_flush()  # Redis lost the script: reloaded
    assert rl.check("c")[0] and rl.redis_up and rl.checks_redis == 2
    private_redis.kill()
    with caplog.at_level(logging.WARNING, logger="cca.serving.ratelimit"):
        start = time.perf_counter()
        assert rl.check("c")[0] and not rl.redis_up
        assert time.perf_counter() - start < 0.5
        # The fallback bucket still limits (fresh in-process bucket of 3, one taken above).
        assert [rl.check("c")[0] for _ in range(3)] == [True, True, False]
        assert _cost_ms(lambda: rl.check("other")) < 10
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "Redis unavailable" in warnings[0].getMessage()
    assert rl.checks_local > 200

    private_redis.start()  # same port; after the breaker's cooldown Redis is used again
    time.sleep(0.35)
    rl.check("c")
    assert rl.redis_up and rl._guard.outages == 1 and rl.checks_redis == 3


def test_rate_limit_on_stalled_or_absent_redis(private_redis: PrivateRedis) -> None:
    rl = RateLimiter(private_redis.url, rate_per_s=100, burst=10)
    assert rl.check("c")[0]
    assert private_redis.proc is not None
    private_redis.proc.send_signal(signal.SIGSTOP)  # accepts TCP, never answers
    try:
        start = time.perf_counter()
        assert rl.check("c")[0] and not rl.redis_up
        assert time.perf_counter() - start < 0.5  # one read timeout (~0.1 s), no retries
        assert _cost_ms(lambda: rl.check("c")) < 10
    finally:
        private_redis.proc.send_signal(signal.SIGCONT)
    nowhere = RateLimiter(f"redis://127.0.0.1:{free_port()}/0", rate_per_s=100, burst=200)
    assert nowhere.check("c") == (True, 0.0) and not nowhere.redis_up
    assert _cost_ms(lambda: nowhere.check("c")) < 10


@dataclass
class FakeDb:
    """Stands in for the audit table lookup; records calls, can be made to fail."""

    rows: dict[tuple[str, str], dict] = field(default_factory=dict)
    fail: bool = False
    calls: list[tuple[str, str]] = field(default_factory=list)
    batches: int = 0

    def __call__(self, items: list[tuple[str, str]]) -> list[dict | None]:
        self.calls.extend(items)
        self.batches += 1
        if self.fail:
            raise OSError("connection to PostgreSQL refused")
        return [self.rows.get(item) for item in items]


DECISION = {"label": "card_arrival", "department": "cards", "confidence": 0.97, "stage": "rules"}


def test_round_trip_ttl_and_db_fallback(prefix: str, shared: redis.Redis) -> None:
    db = FakeDb()
    store = IdempotencyStore(REDIS_URL, ttl_s=3600, db_lookup=db, prefix=prefix)
    tid = "TCK-1 with spaces, ünïcode\nand newlines " + "x" * 150
    store.put(tid, "hash-a", DECISION)
    assert store.get(tid, "hash-a") == DECISION and db.calls == []
    key = store.key(tid)
    assert key.startswith(prefix) and len(key) == len(prefix) + 64
    assert json.loads(shared.get(key)) == {"h": "hash-a", "d": DECISION}
    assert 3590 <= shared.ttl(key) <= 3600 and store.hits_redis == 1
    # A Redis miss asks the DB; a DB hit re-warms Redis, so the next get stays in Redis.
    db.rows[("T2", "h")] = DECISION
    assert store.get("T2", "h") == DECISION and store.hits_db == 1 and len(db.calls) == 1
    assert 3590 <= shared.ttl(store.key("T2")) <= 3600
    assert store.get("T2", "h") == DECISION and store.hits_redis == 2 and len(db.calls) == 1


def test_same_id_other_content_is_not_a_replay(prefix: str) -> None:
    db = FakeDb()
    store = IdempotencyStore(REDIS_URL, ttl_s=60, db_lookup=db, prefix=prefix)
    store.put("T1", "hash-a", DECISION)
    assert store.get("T1", "hash-b") is None
    assert db.calls == [("T1", "hash-b")]  # the DB may know older content of this id
    assert store.misses == 1
    db.rows[("T1", "hash-old")] = old = {**DECISION, "label": "card_linking"}
    assert store.get("T1", "hash-old") == old  # from the DB; re-warming must not replace
    assert store.get("T1", "hash-a") == DECISION  # the newer content Redis holds (SET NX)


def test_db_lookup_raising_means_not_seen(prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    db = FakeDb(fail=True)
    store = IdempotencyStore(REDIS_URL, ttl_s=60, db_lookup=db, prefix=prefix)
    with caplog.at_level(logging.WARNING, logger="cca.serving.idempotency"):
        assert store.get("T4", "h") is None
        assert store.get_many([("T5", "h"), ("T6", "h")]) == [None, None]
    assert db.batches == 2  # one query per batch, failed or not
    assert store.db_errors == 2 and store.misses == 3
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


@pytest.mark.parametrize("how", ["closed-port", "killed"])
def test_idempotency_with_redis_down(
    how: str, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture,
) -> None:
    server = request.getfixturevalue("private_redis") if how == "killed" else None
    url = server.url if server else f"redis://127.0.0.1:{free_port()}/0"
    store = IdempotencyStore(url, ttl_s=60, db_lookup=FakeDb({("T7", "h"): DECISION}))
    if server:
        store.put("T8", "h", DECISION)
        assert store.get("T8", "h") == DECISION and store.redis_up
        server.kill()
    with caplog.at_level(logging.WARNING, logger="cca.serving.idempotency"):
        assert store.get("T7", "h") == DECISION and not store.redis_up  # from the DB
        assert store.get("T8", "h") is None
        store.put("T9", "h", DECISION)
        store.put_many([("T10", "h", DECISION)])
        assert store.get_many([("T7", "h"), ("T9", "h")]) == [DECISION, None]
        assert _cost_ms(lambda: store.get("T8", "h")) < 10
    assert store.puts_skipped == 2
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    with pytest.raises(RedisUnavailable):  # a deletion must not be silently dropped
        store.forget(["T7"])


def test_forget_removes_keys(prefix: str, shared: redis.Redis) -> None:
    store = IdempotencyStore(REDIS_URL, ttl_s=60, db_lookup=FakeDb(), prefix=prefix)
    store.put_many([(f"T{i}", "h", DECISION) for i in range(3)])
    assert store.forget(["T0", "T1", "T1", "never-seen"]) == 2
    assert shared.exists(store.key("T0"), store.key("T1")) == 0
    assert store.get("T0", "h") is None
    assert store.get("T2", "h") == DECISION
    assert store.forget([]) == 0
    many = [f"bulk-{i}" for i in range(2500)]
    store.put_many([(t, "h", DECISION) for t in many])
    assert store.forget(many) == 2500


def test_batches_take_one_round_trip(prefix: str) -> None:
    db = FakeDb({("B3", "h"): DECISION})
    store = IdempotencyStore(REDIS_URL, ttl_s=60, db_lookup=db, prefix=prefix)
    with mock.patch.object(store._guard, "run", wraps=store._guard.run) as trips:
        store.put_many([("B1", "h", {"n": 1}), ("B2", "h", {"n": 2})])
        assert trips.call_count == 1
        got = store.get_many([("B1", "h"), ("B2", "x"), ("B3", "h"), ("B1", "h"), ("B4", "h")])
        assert got == [{"n": 1}, None, DECISION, {"n": 1}, None]
        assert db.batches == 1 and len(db.calls) == 3  # the three misses: one DB query
        assert trips.call_count == 3  # one MGET, one pipelined re-warm for the DB hit
        assert store.get_many([]) == [] and trips.call_count == 3
        assert store.get_many([("B3", "h"), ("B2", "h")]) == [DECISION, {"n": 2}]
        assert trips.call_count == 4
    assert (store.hits_redis, store.hits_db, store.misses) == (4, 1, 2)
