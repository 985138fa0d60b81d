"""The ticketing loop end to end: the real service, PostgreSQL queue and workers, against a
Zendesk stand-in on a real socket (tests/standins/zendesk.py).

Signed webhooks in, routing written back once, agents' corrections learned and the
product's own writes never looped; a vendor outage, a 429 and a refusal on the way.
"""

from __future__ import annotations

import json
import random
import time
from datetime import UTC, datetime, timedelta

import pytest

from cca.settings import Settings
from cca.store import open_database
from tests.conftest import FIXTURES, wait_until
from tests.integration.conftest import run_cli
from tests.integration.service_harness import rows, service, ticket, token
from tests.standins.base import Reply
from tests.standins.zendesk import ZendeskStandIn
from tests.standins.zendesk_webhooks import sign, zulu

GROUPS = {5000, 5001, 5002, 5003, 5011}
AGENT = 777001  # a person, not the integration user


@pytest.fixture(scope="module")
def zd():
    with ZendeskStandIn(groups=GROUPS) as standin:
        yield standin


def loop_env(zd: ZendeskStandIn, **extra: str) -> dict[str, str]:
    return {"CCA_ZENDESK_WEBHOOK_SECRET": zd.webhook_secret, "CCA_ZENDESK_URL": zd.url,
            "CCA_ZENDESK_EMAIL": zd.user, "CCA_ZENDESK_TOKEN": zd.secret,
            "CCA_ROUTING_PATH": str(FIXTURES / "routing_service_desk.yaml"),
            "CCA_INTAKE_POLL_S": "0.05", "CCA_WRITEBACK_BACKOFF_S": "0.5",
            "CCA_WRITEBACK_MAX_BACKOFF_S": "2", "CCA_WRITEBACK_MAX_ATTEMPTS": "60", **extra}


@pytest.fixture(scope="module")
def client(service_home, zd):
    with service(service_home, **loop_env(zd)) as c:
        yield c


def post(client, delivery) -> object:
    headers, body = delivery
    return client.post("/webhooks/zendesk", content=body, headers=headers)


# Ticket ids new to every session: the service's replay store (Redis, shared by every test
# session on this machine and kept for days) must not answer them from an earlier run.
_FIRST = random.randrange(10**8, 9 * 10**8)
_next = iter(range(_FIRST, _FIRST + 100_000))


def new_ticket(zd: ZendeskStandIn, subject: str, description: str) -> int:
    ticket_id = next(_next)
    zd.add_ticket(ticket_id, subject, description)
    return ticket_id


def routed(zd: ZendeskStandIn, ticket_id: int, timeout: float = 30.0) -> list[str]:
    """The ticket's internal notes once one is there."""
    assert wait_until(lambda: zd.notes(ticket_id), timeout), f"ticket {ticket_id} not routed"
    return zd.notes(ticket_id)


def test_created_ticket_is_routed_written_back_once_and_audited(client, zd, service_home):
    tid = new_ticket(zd, "Password", "I forgot my password and cannot sign in")
    delivery = zd.webhook("created", tid)
    first = post(client, delivery)
    assert first.status_code == 202, first.text
    assert first.json()["stored"] == 1
    again = post(client, delivery)  # the vendor's redelivery of the same event
    assert again.status_code == 202 and again.json() == {**again.json(), "stored": 0,
                                                          "duplicates": 1}
    (note,) = routed(zd, tid)
    t = zd.tickets[tid]
    # The fixture rule routes it to password_reset, which has its own group.
    assert t["group_id"] == 5011 and "cca_routed" in t["tags"]
    assert "Stage: rules" in note and "Rule: forgot-password" in note
    time.sleep(0.5)  # a second write would have landed by now
    assert len(zd.notes(tid)) == 1
    assert not zd.violations, zd.violations
    (event,) = rows(service_home, "SELECT status, outcome FROM intake_events "
                    "WHERE ticket_id = :t", t=f"zendesk-{tid}")
    assert event == {"status": "done", "outcome": "routed"}
    audit = rows(service_home, "SELECT stage, endpoint FROM decisions WHERE ticket_id = :t",
                 t=f"zendesk-{tid}")
    assert audit == [{"stage": "rules", "endpoint": "webhook"}]


def test_note_names_neighbours_by_id_only(client, zd):
    tid = new_ticket(zd, "Refund", "I was charged twice on my invoice, please refund one")
    assert post(client, zd.webhook("created", tid)).status_code == 202
    (note,) = routed(zd, tid)
    corpus = (FIXTURES / "service_desk.csv").read_text(encoding="utf-8").splitlines()[1:]
    texts = [line.split(",", 3)[2] for line in corpus]
    assert not [t for t in texts if len(t) > 12 and t in note]
    assert "I was charged twice" not in note  # the ticket's own text is not repeated either


def test_unfamiliar_ticket_goes_to_the_triage_group_tagged_for_review(client, zd,
                                                                      service_home):
    tid = new_ticket(zd, "qwzx", "vlorp snark quibble frobnicate zyxxy plonk")
    assert post(client, zd.webhook("created", tid)).status_code == 202
    (note,) = routed(zd, tid)
    t = zd.tickets[tid]
    assert t["group_id"] == 5000
    assert {"cca_needs_review", "cca_routed"} <= set(t["tags"])
    assert "needs a person" in note and "Stage: review" in note


def test_signature_and_bad_input_refused_and_nothing_stored(client, zd, service_home):
    count = "SELECT count(*) AS n FROM intake_events"
    before = rows(service_home, count)[0]["n"]
    tid = new_ticket(zd, "Card", "My card payment was declined")
    headers, body = zd.webhook("created", tid)
    tampered = body.replace(b"declined", b"accepted")
    assert client.post("/webhooks/zendesk", content=tampered, headers=headers
                       ).status_code == 401
    wrong = zd.deliver(json.loads(body), secret="not-the-secret")
    assert post(client, wrong).status_code == 401
    stale = zd.webhook("created", tid, when=datetime.now(UTC) - timedelta(minutes=6))
    future = zd.webhook("created", tid, when=datetime.now(UTC) + timedelta(minutes=6))
    for delivery in (stale, future):
        r = post(client, delivery)
        assert r.status_code == 401 and "timestamp" in r.json()["error"]
    unsigned = {k: v for k, v in headers.items() if "signature" not in k}
    assert client.post("/webhooks/zendesk", content=body, headers=unsigned).status_code == 401
    nan = zd.deliver({**json.loads(body), "account_id": float("nan")})
    r = post(client, nan)
    assert r.status_code == 400 and "NaN" in r.json()["error"]
    assert post(client, zd.deliver({"type": "zen:event-type:ticket.created"})
                ).status_code in (400, 422)
    raw = body.replace(b'"account_id":', b'"x":1e999,"account_id":')  # valid grammar, inf
    r = client.post("/webhooks/zendesk", content=raw,
                    headers={"content-type": "application/json",
                             **sign(zd.webhook_secret, raw, zulu())})
    assert r.status_code == 400 and "too large" in r.json()["error"]
    deep = b"[" * 100_000 + b"]" * 100_000
    r = client.post("/webhooks/zendesk", content=deep,
                    headers={"content-type": "application/json",
                             **sign(zd.webhook_secret, deep, zulu())})
    assert r.status_code == 400
    nul = zd.deliver({**json.loads(body), "detail": {**json.loads(body)["detail"],
                                                     "subject": "card\u0000declined"}})
    assert post(client, nul).status_code == 422
    huge = zd.deliver({**json.loads(body), "pad": "x" * 1_100_000})
    assert post(client, huge).status_code == 413
    assert client.post("/webhooks/jira", content=b"{}").status_code == 404  # no secret set
    assert client.post("/webhooks/freshdesk", content=b"{}").status_code == 404
    assert rows(service_home, count)[0]["n"] == before


def test_nan_and_infinity_refused_on_every_json_endpoint(client, service_home):
    auth = token(service_home, "classify", "feedback")
    for raw in (b'{"ticket": {"id": "n1", "body": "hello", "metadata": {"a": NaN}}}',
                b'{"ticket": {"id": "n2", "body": "hello", "metadata": {"a": Infinity}}}',
                b'{"ticket": {"id": "n3", "body": "hello", "metadata": {"a": -Infinity}}}'):
        r = client.post("/classify", content=raw,
                        headers={**auth, "Content-Type": "application/json"})
        assert r.status_code == 400, r.text
        assert "RFC 8259" in r.json()["error"]
    for raw in (b'{"ticket": {"id": "n4", "body": "hello", "metadata": {"a": 1e999}}}',
                b'{"ticket": {"id": "n5", "body": "hello", "metadata": {"a": -1e400}}}'):
        r = client.post("/classify", content=raw,
                        headers={**auth, "Content-Type": "application/json"})
        assert r.status_code == 400 and "too large" in r.json()["error"], r.text
    deep = b'{"ticket": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    r = client.post("/classify", content=deep,
                    headers={**auth, "Content-Type": "application/json"})
    assert 400 <= r.status_code < 500
    ok = client.post("/classify", json=ticket("my parcel is late"), headers=auth)
    assert ok.status_code == 200


def test_unknown_event_type_is_acknowledged_and_ignored(client, zd, service_home):
    tid = new_ticket(zd, "Status", "The delivery is late")
    r = post(client, zd.webhook("status_changed", tid,
                                event={"current": "PENDING", "previous": "NEW"}))
    assert r.status_code == 202 and r.json()["ignored"] == 1 and r.json()["stored"] == 0
    metrics = client.get("/metrics").text
    assert 'cca_webhooks_total{outcome="ignored",source="zendesk"}' in metrics


def test_agent_correction_is_learnt_and_own_write_is_not(client, zd, service_home):
    tid = new_ticket(zd, "Invoice", "Why is my invoice higher this month? billing question")
    assert post(client, zd.webhook("created", tid)).status_code == 202
    routed(zd, tid)
    written = zd.tickets[tid]["group_id"]
    # Zendesk reports the product's own write as a change by the integration user.
    for echo in zd.agent_update(tid, zd.me_id, group_id=written):
        assert post(client, echo).status_code == 202
    # An agent moves it to the password group: a label-level correction.
    (move,) = zd.agent_update(tid, AGENT, group_id=5011)
    assert post(client, move).status_code == 202
    assert post(client, move).json()["duplicates"] == 1

    def corrections():
        return rows(service_home, "SELECT corrected, corrected_label, corrected_department, "
                    "actor, stage FROM corrections WHERE ticket_id = :t", t=f"zendesk-{tid}")

    assert wait_until(lambda: corrections(), 30)
    (c,) = corrections()
    assert c["corrected"] == "5011" and c["corrected_label"] == "password_reset"
    assert c["corrected_department"] is None and c["actor"] == str(AGENT)
    outcomes = {r["outcome"] for r in rows(
        service_home, "SELECT outcome FROM intake_events WHERE ticket_id = :t "
        "AND kind = 'updated'", t=f"zendesk-{tid}")}
    assert outcomes == {"own-write", "correction-label"}
    label = rows(service_home, "SELECT label, origin, validated FROM ticket_labels "
                 "WHERE ticket_id = :t", t=f"zendesk-{tid}")
    assert label == [{"label": "password_reset", "origin": "feedback", "validated": True}]
    assert len(zd.notes(tid)) == 1  # the correction wrote nothing back
    metrics = client.get("/metrics").text
    assert f'cca_reroutes_total{{source="zendesk",stage="{c["stage"]}"}}' in metrics
    status = client.get("/status", headers=token(service_home, "admin")).json()["intake"]
    assert any(r["source"] == "zendesk" and r["rerouted"] >= 1 for r in status["reroutes"])


def test_priority_change_by_an_agent_is_an_urgency_correction_not_a_reroute(client, zd,
                                                                          service_home):
    tid = new_ticket(zd, "Delivery", "My parcel is overdue by a week")
    assert post(client, zd.webhook("created", tid)).status_code == 202
    routed(zd, tid)
    written = zd.tickets[tid]["priority"]
    admin = token(service_home, "admin")

    def rerouted() -> int:
        return sum(r["rerouted"] for r in client.get("/status", headers=admin).json()[
            "intake"]["reroutes"])

    before = rerouted()
    (echo,) = zd.agent_update(tid, AGENT, priority=written)  # same value: not a change
    (raise_,) = zd.agent_update(tid, AGENT, priority="urgent")
    for delivery in (echo, raise_):
        assert post(client, delivery).status_code == 202
    q = "SELECT field, written, corrected FROM corrections WHERE ticket_id = :t"
    assert wait_until(lambda: rows(service_home, q, t=f"zendesk-{tid}"), 30)
    assert rows(service_home, q, t=f"zendesk-{tid}") == [
        {"field": "priority", "written": written, "corrected": "critical"}]
    assert rerouted() == before  # an urgency correction is not a reroute


def test_department_level_correction_when_the_group_maps_to_a_department(client, zd,
                                                                         service_home):
    tid = new_ticket(zd, "Password", "I forgot my password again")
    assert post(client, zd.webhook("created", tid)).status_code == 202
    routed(zd, tid)
    (move,) = zd.agent_update(tid, AGENT, group_id=5003)
    assert post(client, move).status_code == 202
    q = ("SELECT corrected_label, corrected_department FROM corrections "
         "WHERE ticket_id = :t")
    assert wait_until(lambda: rows(service_home, q, t=f"zendesk-{tid}"), 30)
    assert rows(service_home, q, t=f"zendesk-{tid}") == [
        {"corrected_label": None, "corrected_department": "Logistics"}]


def test_429_with_retry_after_is_honoured(client, zd):
    tid = new_ticket(zd, "Delivery", "My parcel is stuck in transit")
    zd.fail_next(1, Reply(429, {"error": "TooManyRequests"}, {"Retry-After": "1"}),
                 path_pattern=rf"/api/v2/tickets/{tid}")
    t0 = time.monotonic()
    assert post(client, zd.webhook("created", tid)).status_code == 202
    routed(zd, tid)
    assert time.monotonic() - t0 >= 1.0
    puts = [r for r in zd.requests if r.method == "PUT" and r.path.endswith(f"/{tid}")]
    assert len(puts) == 2 and len(zd.notes(tid)) == 1


def test_vendor_down_for_a_minute_is_written_after(client, zd, service_home):
    zd.stop()
    try:
        tids = [new_ticket(zd, "Delivery", f"Parcel number {n} is late") for n in range(3)]
        # Deliveries reach us while the vendor's API is down (its webhooks still send).
        for tid in tids:
            assert post(client, zd.webhook("created", tid)).status_code == 202
        time.sleep(60)
        assert not any(zd.notes(t) for t in tids)
        q = "SELECT attempts, status FROM intake_events WHERE ticket_id = :t"
        assert rows(service_home, q, t=f"zendesk-{tids[0]}")[0]["attempts"] > 3
    finally:
        zd.start()
    for tid in tids:
        assert len(routed(zd, tid)) == 1
    q = "SELECT status FROM intake_events WHERE ticket_id = ANY(:t)"
    assert wait_until(lambda: {r["status"] for r in rows(
        service_home, q, t=[f"zendesk-{t}" for t in tids])} == {"done"}, 10)


def test_refused_write_goes_to_dead_letters_and_replays(client, zd, service_home):
    zd.groups.discard(5003)  # the vendor no longer has the Logistics group: 422
    try:
        tid = new_ticket(zd, "Delivery", "The courier lost my parcel and it is overdue")
        assert post(client, zd.webhook("created", tid)).status_code == 202
        q = "SELECT id, status, last_error FROM intake_events WHERE ticket_id = :t"
        assert wait_until(lambda: rows(service_home, q, t=f"zendesk-{tid}")[0]["status"]
                          == "dead", 30)
        (event,) = rows(service_home, q, t=f"zendesk-{tid}")
        assert "422" in event["last_error"]
        metrics = client.get("/metrics").text
        assert ('cca_writebacks_total{outcome="dead-letter",source="zendesk",status="422"} 1.0'
                in metrics)
        outcomes = client.get("/status", headers=token(service_home, "admin")).json()[
            "intake"]["outcomes_24h"]["zendesk"]
        assert outcomes["dead-letter"] >= 1 and outcomes["routed"] >= 1
        settings = Settings(home=service_home)
        listed = run_cli(settings, "integrations", "dead-letters")
        assert listed.returncode == 0 and f"zendesk-{tid}" in listed.stdout
    finally:
        zd.groups.add(5003)
    zd.violations.clear()
    replayed = run_cli(settings, "integrations", "replay", str(event["id"]))
    assert replayed.returncode == 0, replayed.stderr
    assert len(routed(zd, tid)) == 1
    missing = run_cli(settings, "integrations", "replay", "99999999")
    assert missing.returncode != 0 and "not on the dead-letter list" in missing.stderr


def test_erasure_and_retention_reach_the_queue(client, zd, service_home):
    tid = next(_next)
    zd.add_ticket(tid, "Card", "My card was declined at the shop", requester_id=555123)
    assert post(client, zd.webhook("created", tid)).status_code == 202
    routed(zd, tid)
    # Retention: handled events lose their text and customer after the raw-text window.
    from cca.store import intake_repo

    db = open_database(Settings(home=service_home))
    try:
        with db.begin() as conn:
            assert intake_repo.purge_text(conn, datetime.now(UTC) - timedelta(days=1)) == 0
    finally:
        db.dispose()
    q = ("SELECT payload->>'body' AS body, customer_ref FROM intake_events "
         "WHERE ticket_id = :t")
    assert rows(service_home, q, t=f"zendesk-{tid}") == [
        {"body": "My card was declined at the shop", "customer_ref": "555123"}]
    # The right to deletion takes the customer's queued events and write-back records.
    r = client.post("/customers/erase", json={"customer_ref": "555123"},
                    headers=token(service_home, "admin"))
    assert r.status_code == 200 and r.json()["counts"]["intake_events"] == 1
    assert rows(service_home, q, t=f"zendesk-{tid}") == []
    assert rows(service_home, "SELECT id FROM writebacks WHERE ticket_id = :t",
                t=f"zendesk-{tid}") == []
    other = next(_next)
    zd.add_ticket(other, "Card", "Another declined card payment", requester_id=555124)
    assert post(client, zd.webhook("created", other)).status_code == 202
    routed(zd, other)
    db = open_database(Settings(home=service_home))
    try:
        with db.begin() as conn:
            assert intake_repo.purge_text(conn, datetime.now(UTC) + timedelta(seconds=1)) >= 1
    finally:
        db.dispose()
    assert rows(service_home, q, t=f"zendesk-{other}") == [{"body": "", "customer_ref": None}]


def test_cli_status_reports_reroutes_and_bad_routing_map_is_one_line(client, zd, service_home,
                                                                      tmp_path):
    settings = Settings(home=service_home)
    status = run_cli(settings, "integrations", "status", "--json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["reroutes"]["routed"] >= 1 and report["reroutes"]["rerouted"] >= 1
    assert isinstance(report["queue"]["dead"], int) and report["reroutes"]["target"] == 0.05
    bad = tmp_path / "routing.yaml"
    bad.write_text("zendesk:\n  departments: {Acounts: 1}\n", encoding="utf-8")
    serve = run_cli(settings, "serve", "--port", "3999", CCA_ROUTING_PATH=str(bad),
                    CCA_ZENDESK_WEBHOOK_SECRET="s")
    assert serve.returncode == 2
    lines = [ln for ln in serve.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Acounts" in lines[0], serve.stderr
