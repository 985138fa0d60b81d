"""The replay lookup's deadline, without servers: PostgreSQL is a function that can hang,
Redis a closed port (every Redis read misses at once)."""

from __future__ import annotations

import threading
import time

from serving.idempotency import IdempotencyStore
from serving.replay_lookup import ReplayLookup

CLOSED_REDIS = "redis://127.0.0.1:1/0"


class _HangingDb:
    def __init__(self) -> None:
        self.release = threading.Event()
        self.hang = True
        self.calls = 0

    def __call__(self, items: list[tuple[str, str]]) -> list[dict | None]:
        self.calls += 1
        if self.hang:
            self.release.wait(30)
        return [{"label": "found"} if tid == "known" else None for tid, _ in items]


def _lookup(db: _HangingDb, timeout_s: float = 0.1) -> ReplayLookup:
    store = IdempotencyStore(CLOSED_REDIS, 60, db)
    return ReplayLookup(store, timeout_s, before_db=lambda: None, before_db_allowance_s=0.0)


def test_an_answer_in_time_is_used() -> None:
    db = _HangingDb()
    db.hang = False
    lookup = _lookup(db)
    future, deadline = lookup.start([("known", "h"), ("new", "h")])
    assert lookup.result(future, deadline, 2) == [{"label": "found"}, None]
    assert (lookup.timeouts, lookup.redis_only, lookup.stuck) == (0, 0, False)
    lookup.close()


def test_a_hung_database_costs_one_deadline_then_nothing() -> None:
    db = _HangingDb()
    lookup = _lookup(db)
    t0 = time.monotonic()
    future, deadline = lookup.start([("known", "h")])
    assert lookup.result(future, deadline, 1) == [None]  # past the deadline: new
    assert 0.09 <= time.monotonic() - t0 < 1.0
    assert lookup.stuck and lookup.timeouts == 1
    t1 = time.monotonic()
    for _ in range(5):  # while it is stuck: Redis only, no wait, nothing queued behind it
        future, deadline = lookup.start([("known", "h")])
        assert future.done() and lookup.result(future, deadline, 1) == [None]
    assert time.monotonic() - t1 < 0.5
    assert lookup.redis_only == 5 and db.calls == 1
    db.release.set()  # the database answers again
    for _ in range(100):
        if not lookup.stuck:
            break
        time.sleep(0.01)
    db.hang = False
    future, deadline = lookup.start([("known", "h")])
    assert lookup.result(future, deadline, 1) == [{"label": "found"}]
    lookup.close()


def test_close_does_not_wait_for_a_lookup_stuck_on_the_database() -> None:
    db = _HangingDb()
    lookup = _lookup(db)
    future, deadline = lookup.start([("x", "h")])
    lookup.result(future, deadline, 1)
    t0 = time.monotonic()
    lookup.close(timeout_s=0.2)
    assert time.monotonic() - t0 < 1.0
    db.release.set()
