"""The ticketing loop with ServiceNow and Jira Service Management: the real service and
queue against their stand-ins (tests/standins/), and the hourly pull written back too.
"""

from __future__ import annotations

import random

import pytest

from cca.settings import Settings
from cca.store import open_database
from pipelines.lifecycle import ingest_connectors
from tests.conftest import FIXTURES, wait_until
from tests.integration.service_harness import rows, service
from tests.standins.jira import ACCOUNT_ID, AGENT_ID, JiraStandIn
from tests.standins.servicenow import ServiceNowStandIn

SN_GROUP = "0a0a0a0a0a0a0a0a0a0a0a0a0a0a50{:02d}"
# Ticket numbers new to every session (the replay store in Redis outlives a test run).
KEY = f"HELP-{random.randrange(10**6, 10**7)}"


@pytest.fixture(scope="module")
def sn():
    groups = [SN_GROUP.format(n) for n in (0, 1, 2, 3)]
    with ServiceNowStandIn(groups=groups) as standin:
        standin._next_number = random.randrange(10**6, 9 * 10**6)
        yield standin


@pytest.fixture(scope="module")
def jira():
    with JiraStandIn() as standin:
        yield standin


def vendor_env(sn: ServiceNowStandIn, jira: JiraStandIn) -> dict[str, str]:
    return {"CCA_SERVICENOW_WEBHOOK_SECRET": sn.secret, "CCA_SERVICENOW_URL": sn.url,
            "CCA_SERVICENOW_USER": sn.user, "CCA_SERVICENOW_PASSWORD": sn.password,
            "CCA_JIRA_WEBHOOK_SECRET": jira.webhook_secret, "CCA_JIRA_URL": jira.url,
            "CCA_JIRA_EMAIL": "bot@acme.example", "CCA_JIRA_TOKEN": "atl-token",
            "CCA_JIRA_SERVICE_DESK_ID": "10",
            "CCA_ROUTING_PATH": str(FIXTURES / "routing_service_desk.yaml"),
            "CCA_INTAKE_POLL_S": "0.05", "CCA_WRITEBACK_BACKOFF_S": "0.5"}


@pytest.fixture(scope="module")
def client(service_home, sn, jira):
    with service(service_home, **vendor_env(sn, jira)) as c:
        yield c


def send(client, source: str, delivery) -> dict:
    headers, body = delivery
    r = client.post(f"/webhooks/{source}", content=body, headers=headers)
    assert r.status_code == 202, r.text
    return r.json()


def test_servicenow_incident_routed_and_agent_reassignment_learnt(client, sn, service_home):
    sys_id = sn.create("Invoice", "I have a billing question about my invoice")
    assert send(client, "servicenow", sn.webhook(sys_id))["stored"] == 1
    assert wait_until(lambda: sn.notes(sys_id), 30)
    (note,) = sn.notes(sys_id)
    assert "Call Centre Agent" in note and "[cca:" in note
    written = sn.tickets[sys_id]["assignment_group"]
    assert written in {SN_GROUP.format(n) for n in (0, 1, 2, 3)}
    # The Business Rule fires on our own PATCH too: sys_updated_by is the integration user.
    send(client, "servicenow", sn.webhook_for_last_write(sys_id))
    moved_to = SN_GROUP.format(3 if written != SN_GROUP.format(3) else 1)
    send(client, "servicenow", sn.agent_change(sys_id, "jane.agent",
                                               assignment_group=moved_to))
    q = "SELECT outcome FROM intake_events WHERE ticket_id LIKE 'servicenow-%' AND kind = 'updated'"
    assert wait_until(lambda: len(rows(service_home, q)) == 2 and all(
        r["outcome"] for r in rows(service_home, q)), 30)
    assert sorted(r["outcome"] for r in rows(service_home, q)) == ["correction", "own-write"]
    (c,) = rows(service_home, "SELECT corrected, actor FROM corrections "
                "WHERE ticket_id LIKE 'servicenow-%'")
    assert c == {"corrected": moved_to, "actor": "jane.agent"}
    assert len(sn.notes(sys_id)) == 1
    assert not sn.violations, sn.violations


def test_jira_request_routed_with_internal_comment_and_label(client, jira, service_home):
    delivery = jira.webhook("created", KEY, summary="Parcel late",
                            description="My delivery is late, where is my parcel?")
    assert send(client, "jira", delivery)["stored"] == 1
    assert send(client, "jira", delivery)["duplicates"] == 1  # same X-Atlassian identifier
    assert wait_until(lambda: jira.comments.get(KEY), 30)
    (comment,) = jira.comments[KEY]
    assert comment["public"] is False and "[cca:" in comment["body"]
    assert "cca_routed" in jira.issues[KEY]["labels"]
    assert jira.group_of(KEY) in {"10", "11", "12", "13"}
    # An agent moves the request: a correction; the product's account changing it is not.
    send(client, "jira", jira.webhook("updated", KEY, actor=ACCOUNT_ID,
                                      group=jira.group_of(KEY)))
    other = "11" if jira.group_of(KEY) != "11" else "12"
    send(client, "jira", jira.webhook("updated", KEY, actor=AGENT_ID, group=other))
    q = f"SELECT corrected, actor FROM corrections WHERE ticket_id = 'jira-{KEY}'"
    assert wait_until(lambda: rows(service_home, q), 30)
    assert rows(service_home, q) == [{"corrected": other, "actor": AGENT_ID}]
    assert len(jira.comments[KEY]) == 1
    assert not jira.violations, jira.violations


def test_pulled_incidents_are_written_back_when_enabled(client, sn, jira, service_home):
    settings = Settings(home=service_home, writeback=True, servicenow_url=sn.url,
                        servicenow_user=sn.user, servicenow_password=sn.password)
    db = open_database(settings)
    try:
        first = ingest_connectors(settings, db)["connectors"]
        # The first pull is the system's history: stored, never written back.
        assert first[0]["queued_for_writeback"] == 0
        sys_id = sn.create("Card", "My card payment was declined twice today")
        second = ingest_connectors(settings, db)["connectors"]
        assert second[0]["queued_for_writeback"] == 1
        third = ingest_connectors(settings, db)["connectors"]  # seen again: not queued again
        assert third[0]["queued_for_writeback"] == 0
    finally:
        db.dispose()
    assert wait_until(lambda: sn.notes(sys_id), 30)
    assert len(sn.notes(sys_id)) == 1
    number = sn.tickets[sys_id]["number"]
    assert rows(service_home, "SELECT event_type, status FROM intake_events "
                "WHERE ticket_id = :t", t=f"servicenow-{number}") == [
        {"event_type": "pull", "status": "done"}]


def test_same_ticket_by_webhook_and_pull_at_once_is_written_once(client, sn, service_home):
    settings = Settings(home=service_home, writeback=True, servicenow_url=sn.url,
                        servicenow_user=sn.user, servicenow_password=sn.password)
    db = open_database(settings)
    try:
        ingest_connectors(settings, db)  # not the first pull: new incidents are queued
        sys_id = sn.create("Card", "My card was swallowed by the machine outside the bank")
        # The pull and the webhook each bring it (two events, two keys), a moment apart.
        assert ingest_connectors(settings, db)["connectors"][0]["queued_for_writeback"] == 1
        assert send(client, "servicenow", sn.webhook(sys_id))["stored"] == 1
    finally:
        db.dispose()
    number = sn.tickets[sys_id]["number"]
    q = "SELECT event_type, status, outcome FROM intake_events WHERE ticket_id = :t"
    assert wait_until(lambda: all(r["status"] == "done" for r in rows(
        service_home, q, t=f"servicenow-{number}")), 30)
    events = rows(service_home, q, t=f"servicenow-{number}")
    assert len(events) == 2
    assert sorted(e["outcome"] for e in events) in (["already-routed", "routed"],
                                                    ["already-routed", "review"])
    assert len(sn.notes(sys_id)) == 1
    patches = [r for r in sn.requests if r.method == "PATCH" and r.path.endswith(sys_id)]
    assert len(patches) == 1


def test_group_and_urgency_changed_together_are_two_corrections(client, sn, service_home):
    sys_id = sn.create("Refund", "Please refund the double charge on my bill")
    assert send(client, "servicenow", sn.webhook(sys_id))["stored"] == 1
    assert wait_until(lambda: sn.notes(sys_id), 30)
    written = sn.tickets[sys_id]
    group = SN_GROUP.format(3 if written["assignment_group"] != SN_GROUP.format(3) else 1)
    urgency = "3" if written["urgency"] != "3" else "1"
    send(client, "servicenow", sn.agent_change(sys_id, "jane.agent", assignment_group=group,
                                               urgency=urgency))
    number = written["number"]
    q = "SELECT field, corrected FROM corrections WHERE ticket_id = :t ORDER BY field"
    assert wait_until(lambda: len(rows(service_home, q, t=f"servicenow-{number}")) == 2, 30)
    (g, p) = rows(service_home, q, t=f"servicenow-{number}")
    assert g == {"field": "group", "corrected": group}
    assert p["field"] == "priority" and p["corrected"] in ("low", "high")
