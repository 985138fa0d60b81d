"""Right to deletion, checked against every store the data can reach, found at run time.

One customer's tickets come in through every path (an inbox file, a ServiceNow connector,
``/classify``, a Zendesk webhook, feedback, and the quarantine at import and at validation),
next to a second customer's. After ``POST /customers/erase`` the walk
(``tests/integration/erasure_walk.py``) reads every text column of every table in the
catalogue, every Redis key and value of the service's Redis, every file under CCA_HOME and
the worker's in-memory vectors: none may hold the first customer's reference, ticket ids
(or their sha256, the replay keys) or canary phrases, except what is allowed:

* ``decisions.ticket_id``: the audit keeps one row per decision, identified by ticket id,
  with hashes and labels (``text_hash`` is a sha256; ``details`` must hold none of the
  customer's traces: the walk reads that column too);
* ``erasures``: one new tombstone, a keyed hash of the reference (not the reference, nor
  its plain digest), the actor and counts.

The second customer's data must all survive. A fault test kills the service's Redis, and
another stops PostgreSQL: the erasure answers 503, is counted, and leaves everything as it
was until it is retried.
"""

from __future__ import annotations

import hashlib
import random
import re
import uuid

import bentoml
import pytest
import redis
import sqlalchemy as sa

from cca.departments import load_department_map
from cca.store import open_database
from pipelines import lifecycle
from pipelines.connectors.servicenow import ServiceNowConnector
from pipelines.ingest import ingest_from_connector
from tests.conftest import FIXTURES, wait_until
from tests.integration import erasure_walk as walk
from tests.integration.service_harness import home_settings, prepare_home, service, token
from tests.servers import PrivateRedis
from tests.standins.servicenow import ServiceNowStandIn
from tests.standins.zendesk import ZendeskStandIn

RUN = uuid.uuid4().hex[:6]


@pytest.fixture(scope="module")
def redis_server():
    server = PrivateRedis()
    server.start()
    yield server
    server.kill()


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return prepare_home(tmp_path_factory.mktemp("erasure")).home


@pytest.fixture(scope="module")
def settings(home, redis_server):
    return home_settings(home).model_copy(update={"redis_url": redis_server.url})


@pytest.fixture(scope="module")
def db(settings):
    database = open_database(settings)
    yield database
    database.dispose()


@pytest.fixture(scope="module")
def zd():
    with ZendeskStandIn(groups={5000, 5001, 5002, 5003, 5011}) as standin:
        yield standin


@pytest.fixture(scope="module")
def client(home, redis_server, zd):
    env = {"CCA_REDIS_URL": redis_server.url, "CCA_ZENDESK_WEBHOOK_SECRET": zd.webhook_secret,
           "CCA_ZENDESK_URL": zd.url, "CCA_ZENDESK_EMAIL": zd.user,
           "CCA_ZENDESK_TOKEN": zd.secret, "CCA_INTAKE_POLL_S": "0.05",
           "CCA_ROUTING_PATH": str(FIXTURES / "routing_service_desk.yaml")}
    with service(home, **env) as c:
        yield c


@pytest.fixture(scope="module")
def auth(home):
    return token(home, "classify", "feedback", "admin")


class Customer:
    """A customer with a 10-digit reference and canary phrases no other data holds."""

    def __init__(self, tag: str) -> None:
        self.digits = str(random.randrange(9 * 10**9, 10**10))
        self.ref = f"CUST-{self.digits}"
        self.tag = f"erz{tag}{RUN}"
        self.ids: set[str] = set()
        self.canaries: set[str] = set()

    def canary(self, path: str) -> str:
        phrase = f"zq{path}{self.tag}quokka"
        self.canaries.add(phrase)
        return phrase

    def tid(self, path: str) -> str:
        self.ids.add(f"{self.tag}-{path}")
        return f"{self.tag}-{path}"

    def traces(self) -> walk.Traces:
        return walk.Traces(self.digits, frozenset(self.ids), frozenset(self.canaries))


def everywhere(db, redis_server, home, traces: walk.Traces) -> walk.Found:
    found = walk.Found()
    client = redis.Redis.from_url(redis_server.url)
    for part in (walk.database(db, traces), walk.redis_keyspace(client, traces),
                 walk.files(home, traces),
                 walk.vectors(bentoml.get_current_service().runtime.engine, traces)):
        found.hits += part.hits
        found.tables = max(found.tables, part.tables)
    return found


def _audit_id(hit: tuple[str, str, str], ids: set[str]) -> bool:
    """The one place an erased customer's ticket id may stay: an audit row's ticket_id."""
    store, place, _ = hit
    return store == "postgres" and place.startswith("public.decisions.ticket_id=") \
        and place.split("=", 1)[1] in ids


def _left(found: walk.Found, ids: set[str]) -> list[tuple[str, str, str]]:
    return [h for h in found.hits if not _audit_id(h, ids)]


def _show(hits: list[tuple[str, str, str]]) -> str:
    return "\n".join(f"{store}: {place[:160]} (holds {needle!r})"
                     for store, place, needle in hits)


def _csv_row(*cells: str) -> str:
    return ",".join(f'"{c}"' for c in cells) + "\n"


def _seed_everywhere(client, auth, zd, settings, db, a: Customer, b: Customer) -> None:
    """Tickets of ``a`` (and ``b``) through every path into the store, Redis and files."""
    for c in (a, b):  # /classify: ticket, replay entry in Redis, audit
        body = {"ticket": {"id": c.tid("api"), "customer_ref": c.ref.lower().replace("-", " "),
                           "body": f"My parcel {c.canary('api')} has not arrived, it is late"}}
        assert client.post("/classify", json=body, headers=auth).status_code == 200
    zid = random.randrange(10**8, 9 * 10**8)  # a webhook: the intake queue, then a ticket
    zd.add_ticket(zid, "Card", f"My card {a.canary('hook')} was declined",
                  requester_id=int(a.digits))
    a.ids.add(f"zendesk-{zid}")
    headers, raw = zd.webhook("created", zid)
    assert client.post("/webhooks/zendesk", content=raw, headers=headers).status_code == 202
    assert wait_until(lambda: zd.notes(zid), 30), "webhook ticket never routed"
    settings.inbox.mkdir(parents=True, exist_ok=True)  # a file: import and quarantine
    csv = "ticket_id,subject,message,customer,intent\n"
    for c in (a, b):
        csv += _csv_row(c.tid("file"), "Parcel", f"Parcel {c.canary('file')} lost",
                        c.ref, "delivery_delay")
        # No label: refused at import, quarantined with the whole record.
        csv += _csv_row(c.tid("refused"), "Parcel", f"Parcel {c.canary('refused')}", c.ref, "")
    # Too short to carry an intent: stored, then quarantined by validation.
    csv += _csv_row(a.tid("short"), "", "?", a.ref, "delivery_delay")
    (settings.inbox / f"tickets-{RUN}.csv").write_text(csv)
    assert lifecycle.ingest_inbox(settings, db)["quarantined"] == 2
    with ServiceNowStandIn(recorded=False) as sn:  # a connector
        for c in (a, b):
            sn.create("Printer", f"Printer {c.canary('snow')} jams", caller_id=c.ref)
        connector = ServiceNowConnector(sn.url, sn.user, sn.password, sleep=lambda _: None)
        assert ingest_from_connector(db, connector, load_department_map(None))["new"] == 2
    with db.begin() as conn:
        for c in (a, b):
            c.ids |= set(conn.execute(sa.text(
                "SELECT id FROM tickets WHERE source = 'servicenow' AND customer_ref = :r"),
                {"r": c.ref}).scalars())
    assert wait_until(lambda: _stored(db, a.tid("api")), 10)
    lifecycle.prepare(settings, db)  # redaction, signatures (Redis), validation, vectors
    r = client.post("/feedback", json={"ticket_id": a.tid("api"), "label": "delivery_delay"},
                    headers=auth)
    assert r.status_code == 200, r.text


def _stored(db, tid: str) -> bool:
    with db.begin() as conn:
        return conn.execute(sa.text("SELECT count(*) FROM tickets WHERE id = :t"),
                            {"t": tid}).scalar_one() == 1


def test_erasure_reaches_every_table_key_and_file(client, auth, zd, settings, db, home,
                                                  redis_server):
    a, b = Customer("A"), Customer("B")
    _seed_everywhere(client, auth, zd, settings, db, a, b)
    engine = bentoml.get_current_service().runtime.engine
    assert wait_until(lambda: a.tid("api") in engine.vector_feed.index, 10)
    before = everywhere(db, redis_server, home, a.traces())
    # The walk sees the customer wherever the paths put them: it can fail.
    stores = {s for s, _, _ in before.hits}
    assert stores == {"postgres", "redis", "file", "memory"}, stores
    tables = {p.split("=")[0].rsplit(".", 1)[0] for s, p, _ in before.hits if s == "postgres"}
    assert {"public.tickets", "public.quarantine", "public.intake_events",
            "public.ticket_labels", "public.served_decisions"} <= tables, tables
    assert before.tables >= 15, before.tables
    tombstones = _count(db, "erasures")

    r = client.post("/customers/erase", json={"customer_ref": a.ref}, headers=auth)
    assert r.status_code == 200, r.text
    after = everywhere(db, redis_server, home, a.traces())
    left = _left(after, a.ids)
    assert not left, "erasure left the customer's data in:\n" + _show(left)
    # Allowed: the audit's rows (id, hashes, labels) and one new tombstone.
    audited = {h[1].split("=", 1)[1] for h in after.hits if _audit_id(h, a.ids)}
    assert {a.tid("api"), *(i for i in a.ids if i.startswith("zendesk-"))} <= audited
    with db.begin() as conn:
        hashes = conn.execute(sa.text("SELECT text_hash FROM decisions "
                                      "WHERE ticket_id = ANY(:i)"), {"i": list(a.ids)}).scalars()
        assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes)
        tomb = conn.execute(sa.text("SELECT subject_hash, counts::text FROM erasures "
                                    "ORDER BY id DESC LIMIT 1")).one()
    assert _count(db, "erasures") == tombstones + 1
    assert re.fullmatch(r"[0-9a-f]{64}", tomb.subject_hash)
    assert tomb.subject_hash != hashlib.sha256(a.digits.encode()).hexdigest()
    counts = r.json()["counts"]
    assert counts["inbox_records"] == 3 and counts["quarantine"] == 2, counts
    assert counts["spool_lines"] >= 2 and counts["near_duplicate_keys"] >= 1, counts
    # The other customer keeps everything.
    kept = everywhere(db, redis_server, home, b.traces())
    assert {s for s, _, _ in kept.hits} == {s for s, _, _ in before.hits}
    survived = {n for _, _, n in kept.hits}
    assert {n.lower() for n in b.canaries} <= survived, b.canaries - survived


def test_metrics_name_no_customer(client, auth):
    c = Customer("M")
    assert client.post("/customers/erase", json={"customer_ref": c.ref},
                       headers=auth).status_code == 200
    assert c.digits not in client.get("/metrics").text


def test_a_table_erasure_does_not_know_is_found(client, auth, db, home, redis_server):
    """A store added later without erasure support fails the walk without editing it."""
    c = Customer("T")
    table = f"erz_feature_store_{RUN}"
    with db.begin() as conn:
        conn.execute(sa.text(f"CREATE TABLE {table} (note jsonb)"))
        conn.execute(sa.text(f"INSERT INTO {table} VALUES (CAST(:n AS jsonb))"),
                     {"n": f'{{"customer": "{c.ref}", "said": "{c.canary("new")}"}}'})
    try:
        body = {"ticket": {"id": c.tid("api"), "customer_ref": c.ref, "body": "Parcel late"}}
        assert client.post("/classify", json=body, headers=auth).status_code == 200
        assert client.post("/customers/erase", json={"customer_ref": c.ref},
                           headers=auth).status_code == 200
        left = walk.database(db, c.traces()).places()
        assert any(p.startswith(f"public.{table}.note=") for p in left), left
    finally:
        with db.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE {table}"))


def _count(db, table: str) -> int:
    with db.begin() as conn:
        return conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()


def _failures(client, store: str) -> float:
    text = client.get("/metrics").text
    m = re.search(rf'^cca_erasure_failures_total{{store="{store}"}} (\S+)$', text, re.M)
    assert m, "cca_erasure_failures_total not exported"
    return float(m.group(1))


def _seed_small(client, auth, settings, db, c: Customer) -> None:
    """A served ticket (replay key), an imported one (inbox file), both signed (Redis)."""
    body = {"ticket": {"id": c.tid("api"), "customer_ref": c.ref,
                       "body": f"My parcel {c.canary('api')} has not arrived"}}
    assert client.post("/classify", json=body, headers=auth).status_code == 200
    settings.inbox.mkdir(parents=True, exist_ok=True)
    (settings.inbox / f"small-{c.tag}.csv").write_text(
        "ticket_id,message,customer,intent\n"
        + _csv_row(c.tid("file"), f"Lost parcel {c.canary('file')}", c.ref, "delivery_delay"))
    lifecycle.ingest_inbox(settings, db)
    assert wait_until(lambda: _stored(db, c.tid("api")), 10)
    lifecycle.prepare(settings, db)


def _same(hits: list[tuple[str, str, str]], seen: walk.Found, *stores: str) -> None:
    """``hits`` are what ``seen`` found in ``stores``."""
    def kept(found: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
        return sorted(h for h in found if h[0] in stores)

    assert kept(hits) == kept(seen.hits), _show(kept(hits)) + "\n---\n" + _show(kept(seen.hits))


def test_erasure_with_redis_down_changes_nothing_and_is_retried(client, auth, settings, db,
                                                                home, redis_server):
    c = Customer("R")
    _seed_small(client, auth, settings, db, c)
    seen = everywhere(db, redis_server, home, c.traces())
    assert {"redis", "postgres", "file"} <= {s for s, _, _ in seen.hits}
    failed = _failures(client, "redis_near_duplicates")
    redis_server.kill()
    try:
        r = client.post("/customers/erase", json={"customer_ref": c.ref}, headers=auth)
        assert r.status_code == 503 and "Redis is unreachable" in r.json()["error"], r.text
        assert _failures(client, "redis_near_duplicates") == failed + 1
        # Redis is down: the rest is walked, and holds all it held.
        now = walk.database(db, c.traces()).hits + walk.files(home, c.traces()).hits
        _same(now, seen, "postgres", "file")
    finally:
        redis_server.start()  # same port, empty
    r = client.post("/customers/erase", json={"customer_ref": c.ref},
                    headers=auth)  # the caller's retry
    assert r.status_code == 200 and r.json()["counts"]["tickets"] == 2, r.text
    left = _left(everywhere(db, redis_server, home, c.traces()), c.ids)
    assert not left, _show(left)


def test_erasure_with_postgres_down_changes_nothing_and_is_retried(client, auth, settings, db,
                                                                   home, redis_server):
    from tests.integration.test_service_faults import _postgres_down

    c = Customer("P")
    _seed_small(client, auth, settings, db, c)
    seen = everywhere(db, redis_server, home, c.traces())
    assert {"redis", "postgres", "file"} <= {s for s, _, _ in seen.hits}
    failed = _failures(client, "postgres")
    with _postgres_down(home):
        r = client.post("/customers/erase", json={"customer_ref": c.ref}, headers=auth)
        assert r.status_code == 503 and "PostgreSQL is unreachable" in r.json()["error"]
        assert _failures(client, "postgres") == failed + 1
        redis_now = walk.redis_keyspace(redis.Redis.from_url(redis_server.url), c.traces())
        _same(redis_now.hits + walk.files(home, c.traces()).hits, seen, "redis", "file")
    db.dispose()  # connections from before the restart
    _same(everywhere(db, redis_server, home, c.traces()).hits, seen,
          "postgres", "redis", "file")
    r = client.post("/customers/erase", json={"customer_ref": c.ref}, headers=auth)
    assert r.status_code == 200 and r.json()["counts"]["tickets"] == 2, r.text
    left = _left(everywhere(db, redis_server, home, c.traces()), c.ids)
    assert not left, _show(left)
