"""Several serving processes for real: ``cca serve --workers 2`` (A) and a second replica (B,
``cca serve`` on another port, its own home and spool, sharing A's PostgreSQL, model
registry, secrets and a private Redis), as two machines behind a load balancer would.

What only shows across processes: a retried ticket replayed by whichever process gets it,
one rate limit and one LLM budget for all of them (Redis), a label given through one process
in every process's in-memory vector cache within a second, an erasure honoured by all of
them as soon as it is answered. BentoML's workers share one listening socket, so a request
cannot be sent to a chosen worker of A: each goes on a new connection and the worker that
answered is read off the audit spool it wrote to (``spooled_by``); B is always another process.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
import sqlalchemy as sa

from cca.store import open_database
from tests.fake_openai import FakeOpenAI
from tests.integration.serve_process import Serve, replica_home, spooled_by, token
from tests.integration.service_harness import home_settings, rows
from tests.servers import PrivateRedis

BURST = 40  # per client, shared by every process through Redis
PRICE_IN, PRICE_OUT = 0.5, 1.5  # USD per 1k tokens; the fake answers 120 + 30 tokens
CALL_USD = (120 * PRICE_IN + 30 * PRICE_OUT) / 1000
BUDGET_USD = 0.5
UNSURE = "zxqv blorp"  # the fixture model is unsure: it goes on to the LLM
# No two of the 48 fixture tickets are near-identical, so training leaves the cache no track
# record and it never answers; these labels get the one a larger training set would give.
SEEDED = {"delivery_delay": (200, 200), "billing_question": (200, 200)}


def _trusted_cache(home: Path, seeds: dict[str, dict[str, tuple[int, int]]] | None
                   ) -> dict[str, dict[str, tuple[int, int]]]:
    """Set the cache's training-time track record per label (``None``: ``SEEDED`` for every
    embedding model indexed); the one it replaced, per model."""
    from cca.store.vectors import seed_track_record

    settings = home_settings(home)
    db = open_database(settings)
    try:
        with db.begin() as conn:
            models = conn.execute(sa.text(
                "SELECT DISTINCT model_id FROM ticket_embeddings")).scalars().all()
            before = {m: {r.label: (r.seed_reuses, r.seed_confirmed) for r in conn.execute(
                sa.text("SELECT label, seed_reuses, seed_confirmed FROM cache_track_record "
                        "WHERE model_id = :m AND seed_reuses > 0"), {"m": m})} for m in models}
            for m in models:
                seed_track_record(conn, m, SEEDED if seeds is None else seeds.get(m, {}))
    finally:
        db.dispose()
    return before


@dataclass
class Cluster:
    a: Serve  # two workers
    b: Serve  # the replica
    redis: PrivateRedis
    llm: FakeOpenAI
    home: Path
    run: str

    def answered_by(self, ids: list[str]) -> dict[str, str]:
        """Ticket id -> "A/worker-N" or "B/worker-1"."""
        out = {t: f"A/{w}" for t, w in spooled_by(self.a.home).items()}
        out.update({t: f"B/{w}" for t, w in spooled_by(self.b.home).items()})
        return {t: out.get(t, "?") for t in ids}


@pytest.fixture(scope="module")
def cluster(service_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    logs = tmp_path_factory.mktemp("multi")
    redis_server, llm = PrivateRedis(), FakeOpenAI()
    redis_server.start()
    llm.start()
    env = {"CCA_REDIS_URL": redis_server.url,
           # One token at a time from Redis: the count across processes is exact.
           "CCA_RATE_LIMIT_PER_S": "0.01", "CCA_RATE_LIMIT_BURST": str(BURST),
           "CCA_RATE_LIMIT_LEASE": "1",
           "CCA_LLM_BASE_URL": llm.base_url, "CCA_LLM_MAX_ATTEMPTS": "1",
           "CCA_LLM_MIN_TOP_PROBABILITY": "0", "CCA_LLM_DAILY_BUDGET_USD": str(BUDGET_USD),
           "CCA_LLM_PRICE_IN_PER_1K_USD": str(PRICE_IN),
           "CCA_LLM_PRICE_OUT_PER_1K_USD": str(PRICE_OUT)}
    a = Serve(service_home, logs / "a.log", workers=2, env=env)
    b = Serve(replica_home(service_home, logs / "replica"), logs / "b.log", env=env)
    restore = _trusted_cache(service_home, None)
    try:
        a.start()
        b.start()
        a.wait_ready()
        b.wait_ready()
        yield Cluster(a, b, redis_server, llm, service_home, uuid.uuid4().hex[:8])
    finally:
        a.stop()
        b.stop()
        llm.stop()
        redis_server.kill()
        _trusted_cache(service_home, restore)


def _post(url: str, body: dict, headers: dict[str, str], path: str = "/classify"
          ) -> httpx.Response:
    """On a new connection: the accept race decides which of the service's workers gets it."""
    return httpx.post(f"{url}{path}", json=body, headers=headers, timeout=30)


def _spread(cluster: Cluster, bodies: list[dict], headers: dict[str, str],
            path: str = "/classify") -> list[httpx.Response]:
    """Every other body to A (concurrently, new connections), the rest to B."""
    urls = [cluster.a.url if i % 2 == 0 else cluster.b.url for i in range(len(bodies))]
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda ub: _post(ub[0], ub[1], headers, path),
                             zip(urls, bodies, strict=True)))


def _ticket(tid: str, body: str, **extra: str) -> dict:
    return {"ticket": {"id": tid, "body": body, **extra}}


def test_llm_daily_budget_holds_across_processes(cluster: Cluster):
    """First in the module: no process has spent on the LLM yet."""
    auth = token(cluster.home, "classify", subject=f"llm-{cluster.run}")
    expected = math.ceil(BUDGET_USD / CALL_USD - 1e-9)
    ids, calls_by = [], {}
    for i in range(3 * expected):
        tid = f"llm-{cluster.run}-{i}"
        before = cluster.llm.hits
        r = _post(cluster.a.url if i % 2 else cluster.b.url, _ticket(tid, f"{UNSURE} {i}"), auth)
        assert r.status_code == 200, r.text
        ids.append(tid)
        calls_by[tid] = cluster.llm.hits - before
    assert cluster.llm.hits == expected, (cluster.llm.hits, expected)
    who = cluster.answered_by(ids)
    callers = {who[t] for t, n in calls_by.items() if n}
    assert len(callers) >= 2, f"the LLM calls all came from one process: {callers}"
    day = time.strftime("%Y-%m-%d", time.gmtime())
    spent = redis.Redis.from_url(cluster.redis.url).get(f"cca:llm:spend:{day}")
    assert spent is not None and float(spent) >= BUDGET_USD  # counted in the shared Redis


def test_both_workers_of_a_serve(cluster: Cluster):
    auth = token(cluster.home, "classify", subject=f"spread-{cluster.run}")
    ids = [f"spread-{cluster.run}-{i}" for i in range(24)]
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda t: _post(cluster.a.url, _ticket(t, "my invoice is "
                                                                       "wrong"), auth), ids))
    assert all(r.status_code == 200 for r in answers), [r.text for r in answers]
    assert set(cluster.answered_by(ids).values()) == {"A/worker-1", "A/worker-2"}


def test_a_retried_ticket_is_decided_once_whichever_process_gets_it(cluster: Cluster):
    auth = token(cluster.home, "classify", subject=f"idem-{cluster.run}")
    tid = f"idem-{cluster.run}"
    body = _ticket(tid, "My parcel has not arrived, it is two weeks late")
    first = _post(cluster.a.url, body, auth)
    assert first.status_code == 200 and first.json()["decision"]["replayed"] is False
    again = _spread(cluster, [body] * 8, auth)
    decisions = [r.json()["decision"] for r in again]
    assert all(d["replayed"] for d in decisions), decisions
    assert {(d["label"], d["stage"]) for d in decisions} == {
        (first.json()["decision"]["label"], first.json()["decision"]["stage"])}
    _wait_rows(cluster.home, "SELECT record_id FROM decisions WHERE ticket_id = :t", 1, t=tid)
    time.sleep(0.5)  # a second record delivered late would show now
    assert len(rows(cluster.home, "SELECT 1 FROM decisions WHERE ticket_id = :t", t=tid)) == 1
    assert len(rows(cluster.home, "SELECT 1 FROM tickets WHERE id = :t", t=tid)) == 1


def test_one_rate_limit_across_processes(cluster: Cluster):
    auth = token(cluster.home, "classify", subject=f"flood-{cluster.run}")
    bodies = [_ticket(f"flood-{cluster.run}-{i}", "I forgot my password") for i in range(90)]
    answers = _spread(cluster, bodies, auth)
    codes = [r.status_code for r in answers]
    assert set(codes) <= {200, 429}, codes
    admitted = [b["ticket"]["id"] for b, c in zip(bodies, codes, strict=True) if c == 200]
    # The bucket refills 0.01 token/s: at most one more while the test runs.
    assert BURST <= len(admitted) <= BURST + 1, (len(admitted), codes)
    assert all(int(r.headers["retry-after"]) >= 1 for r in answers if r.status_code == 429)
    who = set(cluster.answered_by(admitted).values())
    assert len(who) >= 2, f"one process admitted everything: {who}"


def _wait_rows(home: Path, sql: str, n: int, timeout_s: float = 10.0, **params) -> None:
    deadline = time.monotonic() + timeout_s
    while len(rows(home, sql, **params)) < n:
        assert time.monotonic() < deadline, f"fewer than {n} rows after {timeout_s} s: {sql}"
        time.sleep(0.1)


def _repeats(cluster: Cluster, text: str, seconds: float, until=None
             ) -> list[tuple[float, str, dict]]:
    """New tickets with ``text``, 6 to A and 2 to B at a time, for ``seconds`` or until
    ``until(seen)``: (seconds since the start, ticket id, decision) each. A client of its
    own per round: the module's rate limit is small."""
    t0, out = time.monotonic(), []
    while time.monotonic() - t0 < seconds and not (until and until(out)):
        round_id = uuid.uuid4().hex[:8]  # new tickets every round, never a replay
        auth = token(cluster.home, "classify", subject=f"rep-{round_id}")
        ids = [f"rep-{round_id}-{i}" for i in range(8)]
        urls = [cluster.a.url] * 6 + [cluster.b.url] * 2

        def one(url: str, tid: str, auth: dict[str, str] = auth
                ) -> tuple[float, str, httpx.Response]:
            r = _post(url, _ticket(tid, text), auth)
            return time.monotonic() - t0, tid, r

        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(one, urls, ids))
        for at, tid, r in got:
            assert r.status_code == 200, r.text
            assert r.json()["decision"]["replayed"] is False
            out.append((at, tid, r.json()["decision"]))
    return out


def _first_and_stays(cluster: Cluster, seen: list[tuple[float, str, dict]], ok
                     ) -> dict[str, float]:
    """Per process/worker: seconds until its first answer with ``ok(decision)``, checking
    that none after it goes back."""
    who = cluster.answered_by([tid for _, tid, _ in seen])
    first: dict[str, float] = {}
    for at, tid, d in sorted(seen, key=lambda s: s[0]):
        w = who[tid]
        if w in first:
            assert ok(d), f"{w} went back at {at:.2f} s: {d}"
        elif ok(d):
            first[w] = at
    return first


def test_feedback_and_erasure_reach_every_process_at_once(cluster: Cluster):
    from pipelines import lifecycle

    auth = token(cluster.home, "classify", "feedback", "admin", subject=f"fb-{cluster.run}")
    text = f"The pelican-shaped parcel locker {cluster.run} at the station refuses my code"
    tid, ref = f"fb-{cluster.run}", f"CUST-{int(cluster.run, 16) % 10**6:06d}"
    body = _ticket(tid, text, customer_ref=ref)
    assert _post(cluster.a.url, body, auth).status_code == 200
    _wait_rows(cluster.home, "SELECT 1 FROM tickets WHERE id = :t", 1, t=tid)
    r = _post(cluster.a.url, {"ticket_id": tid, "label": "delivery_delay"}, auth, "/feedback")
    assert r.status_code == 200, r.text
    settings = home_settings(cluster.home)
    db = open_database(settings)
    try:
        lifecycle.prepare(settings, db)  # redacted and indexed, as the DAG would
    finally:
        db.dispose()

    def labelled(label: str):
        return lambda d: d["stage"] == "cache" and d["label"] == label

    every = {"A/worker-1", "A/worker-2", "B/worker-1"}
    seen = _repeats(cluster, text, 20.0, until=lambda out: set(_first_and_stays(
        cluster, out, labelled("delivery_delay"))) == every)
    assert set(_first_and_stays(cluster, seen, labelled("delivery_delay"))) == every

    # The correction, through the replica: every process answers with it within 1 s.
    r = _post(cluster.b.url, {"ticket_id": tid, "label": "billing_question"}, auth,
              "/feedback")
    assert r.status_code == 200 and "added to the index" in r.json()["message"], r.text
    first = _first_and_stays(cluster, _repeats(cluster, text, 1.5),
                             labelled("billing_question"))
    assert set(first) == every, first
    assert max(first.values()) < 1.0, first

    # Erasure through A: from its answer on, no process answers from the erased ticket.
    seeded = _post(cluster.b.url, body, auth).json()["decision"]
    assert seeded["replayed"] is True  # B replays A's decision (Redis) before the erasure
    r = httpx.post(f"{cluster.a.url}/customers/erase", json={"customer_ref": ref},
                   headers=auth, timeout=30)
    assert r.status_code == 200 and r.json()["counts"]["tickets"] == 1, r.text
    after = _repeats(cluster, text, 0.5)
    assert not [d for _, _, d in after if d["stage"] == "cache"], after
    assert set(cluster.answered_by([t for _, t, _ in after]).values()) == every
    # Nor is its decision replayed: B, which replayed it a moment ago, decides anew.
    assert _post(cluster.b.url, body, auth).json()["decision"]["replayed"] is False
