"""Jira admin webhooks: signature, event mapping, refusals.

Each tests/fixtures/webhooks/jira_*.json is one delivery ({headers, body}) shaped like
Atlassian's "Webhooks" page named in its ``_recorded_from``; the body is signed here with the
test secret the way Jira signs it (HMAC-SHA256 of the raw body, ``X-Hub-Signature``)."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from pipelines.connectors.jira_sm import JiraServiceManagementConnector
from pipelines.integrations.events import WebhookRejected
from pipelines.integrations.jira_webhook import parse_webhook
from pipelines.integrations.signatures import body_key
from tests.conftest import FIXTURES
from tests.standins.jira import AGENT_ID, CUSTOMER_ID, JiraStandIn, recorded

SECRET = "jira-webhook-secret"
RT_FIELD = "customfield_10010"


def delivery(name: str, secret: str = SECRET, **edit: Any) -> tuple[dict[str, str], bytes]:
    """A recorded delivery, re-signed; ``edit`` replaces top-level body keys."""
    rec = json.loads((FIXTURES / "webhooks" / f"{name}.json").read_text(encoding="utf-8"))
    return signed(rec["headers"], {**rec["body"], **edit}, secret)


def signed(headers: dict[str, str], body: Any, secret: str = SECRET) -> tuple[dict, bytes]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode("utf-8")
    sig = hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()
    return {**headers, "X-Hub-Signature": f"sha256={sig}"}, raw


def parse(headers: dict[str, str], raw: bytes, **kw: Any):
    lower = {k.lower(): v for k, v in headers.items()}
    return parse_webhook(lower, raw, SECRET, **{"group_field": RT_FIELD, **kw})


def rejected(headers: dict[str, str], raw: bytes, status: int, match: str) -> None:
    with pytest.raises(WebhookRejected, match=match) as err:
        parse(headers, raw)
    assert err.value.status == status


# --- signature --------------------------------------------------------------------------

def test_recorded_issue_created_becomes_one_created_event() -> None:
    [event] = parse(*delivery("jira_issue_created"))
    assert (event.source, event.kind, event.event_type) == ("jira", "created", "jira:issue_created")
    assert (event.ticket_ref, event.ticket_id) == ("HELP-5", "jira-HELP-5")
    assert event.event_key == "5f4b0c1e-0b52-4c1e-9d4e-3f1b7c2a9e01"
    assert event.subject == "Card declined abroad"
    assert event.body == "My card was declined in a shop in Lisbon.\nIs it blocked?"
    assert (event.priority, event.group) == ("normal", "11")   # Medium; request type id
    assert event.customer_ref == event.actor == CUSTOMER_ID
    assert event.occurred_at == datetime(2026, 11, 20, 8, 30, 0, 123000, tzinfo=UTC)
    assert event.changes == {}


@pytest.mark.parametrize("tamper", [
    lambda h, b: (h, b.replace(b"Lisbon", b"Lisb0n")),                          # body changed
    lambda h, b: signed(h, b, secret="not-the-secret"),                         # wrong secret
    lambda h, b: ({k: v for k, v in h.items() if k != "X-Hub-Signature"}, b),   # missing
    lambda h, b: ({**h, "X-Hub-Signature": h["X-Hub-Signature"][7:]}, b),       # no sha256=
    lambda h, b: ({**h, "X-Hub-Signature": "sha256="}, b),                      # empty digest
])
def test_bad_or_missing_signature_is_401(tamper) -> None:
    headers, raw = tamper(*delivery("jira_issue_created"))
    rejected(headers, raw, 401, "signature")


def test_signature_is_checked_before_the_body_is_parsed() -> None:
    headers, _ = delivery("jira_issue_created")
    rejected(headers, b"{not json", 401, "does not match")


def test_header_names_are_read_in_any_case() -> None:
    headers, raw = delivery("jira_issue_created")
    [event] = parse_webhook({k.upper(): v for k, v in headers.items()}, raw, SECRET)
    assert event.event_key == "5f4b0c1e-0b52-4c1e-9d4e-3f1b7c2a9e01" and event.group is None


@pytest.mark.parametrize("age_s", [-3 * 3600, 25 * 60, 3 * 3600])
def test_stale_or_future_timestamp_is_accepted_and_keyed_by_the_delivery_id(age_s) -> None:
    """Jira retries for up to about 30 minutes and signs no timestamp: a redelivery is not a
    replay to refuse but the same event, deduplicated by its unchanged identifier."""
    now = 1795163400.123
    headers, raw = delivery("jira_issue_created", timestamp=int((now - age_s) * 1000))
    [event] = parse(headers, raw, max_skew_s=300, now=now)
    assert event.event_key == "5f4b0c1e-0b52-4c1e-9d4e-3f1b7c2a9e01"
    assert event.occurred_at == datetime.fromtimestamp(int((now - age_s) * 1000) / 1000, UTC)


def test_without_identifier_header_the_key_is_the_body_hash() -> None:
    headers, raw = delivery("jira_issue_created")
    del headers["X-Atlassian-Webhook-Identifier"]
    [event] = parse(headers, raw)
    assert event.event_key == body_key("jira", raw) and event.event_key.startswith("sha256:")
    assert parse(headers, raw)[0].event_key == event.event_key


# --- event types ------------------------------------------------------------------------

def test_recorded_update_of_routed_fields_gives_changes_by_our_names() -> None:
    [event] = parse(*delivery("jira_issue_updated"))
    assert (event.kind, event.ticket_ref, event.ticket_id) == ("updated", "HELP-5", "jira-HELP-5")
    assert event.actor == AGENT_ID
    # The group is the request type id the issue now holds, not the changelog's portal key;
    # the status item is not a routed field.
    assert event.changes == {"group": "15", "priority": "high", "labels": ["cca_routed", "vip"]}


def test_update_without_a_group_field_configured_leaves_the_group_out() -> None:
    [event] = parse(*delivery("jira_issue_updated"), group_field=None)
    assert event.changes == {"priority": "high", "labels": ["cca_routed", "vip"]}


def test_select_field_group_comes_from_the_issue_else_the_changelog_id() -> None:
    rec = json.loads((FIXTURES / "webhooks" / "jira_issue_updated.json").read_text())
    body = rec["body"]
    item = body["changelog"]["items"][0]
    item.update(fieldId="customfield_10050", field="Support team", to="10021",
                toString="Cards")
    body["issue"]["fields"]["customfield_10050"] = {"value": "Cards", "id": "10021"}
    [event] = parse(*signed(rec["headers"], body), group_field="customfield_10050")
    assert event.changes["group"] == "10021"
    del body["issue"]["fields"]["customfield_10050"]
    [event] = parse(*signed(rec["headers"], body), group_field="customfield_10050")
    assert event.changes["group"] == "10021"


@pytest.mark.parametrize(("name", "event_type", "ref"), [
    ("jira_issue_updated_status", "jira:issue_updated", "HELP-5"),
    ("jira_comment_created", "comment_created", "HELP-5"),
])
def test_recorded_other_events_are_one_ignored_event(name, event_type, ref) -> None:
    events = parse(*delivery(name))
    assert [(e.kind, e.event_type, e.ticket_ref) for e in events] == [
        ("ignored", event_type, ref)]
    assert events[0].changes == {} and events[0].event_key


def test_event_without_an_issue_is_ignored_not_refused() -> None:
    headers, raw = signed({"X-Atlassian-Webhook-Identifier": "p1"},
                          {"timestamp": 1795163400000, "webhookEvent": "project_created",
                           "project": {"id": 10100, "key": "NEW"}})
    [event] = parse(headers, raw)
    assert (event.kind, event.ticket_ref, event.ticket_id, event.event_key) == (
        "ignored", "", "", "p1")


def test_stand_in_deliveries_parse_like_the_recorded_ones() -> None:
    jira = JiraStandIn(webhook_secret=SECRET)
    created = parse(*jira.webhook("created", "HELP-7", summary="PIN", description="Locked",
                                  group="14", priority="Highest"))[0]
    assert (created.kind, created.group, created.priority) == ("created", "14", "critical")
    moved = parse(*jira.webhook("updated", "HELP-7", group="16", actor="agent-1"))[0]
    assert (moved.kind, moved.changes, moved.actor) == ("updated", {"group": "16"}, "agent-1")
    assert parse(*jira.webhook("updated", "HELP-7", status="Done"))[0].kind == "ignored"


def test_ticket_id_and_text_match_the_pull_connector_for_the_same_issue() -> None:
    jira = JiraStandIn().start()
    try:
        batch = JiraServiceManagementConnector(jira.url, "bot@acme.example", "atl-token",
                                               "10").fetch(None)
    finally:
        jira.stop()
    issue = recorded("jira_search_page1.json").body["issues"][0]
    [event] = parse(*signed({}, {"webhookEvent": "jira:issue_created", "issue": issue}))
    pulled = batch.records[0]
    assert (event.ticket_id, event.subject, event.body, event.priority, event.customer_ref) == (
        pulled["id"], pulled["subject"], pulled["body"], pulled["priority"],
        pulled["customer_ref"])


# --- refusals ---------------------------------------------------------------------------

@pytest.mark.parametrize("raw", [b"{not json", b'{"webhookEvent": NaN}', b"[]",
                                 b'{"timestamp": Infinity}'])
def test_malformed_or_non_strict_json_is_400(raw) -> None:
    rejected(*signed({}, raw), 400, ".")


@pytest.mark.parametrize(("issue", "field"), [
    ({"id": "10005", "fields": {"summary": "x"}}, "issue.key missing"),
    ({"key": "", "fields": {"summary": "x"}}, "issue.key missing"),
    ({"key": ["HELP-5"]}, "issue.key must be .* not list"),
    ({"key": {"k": "HELP-5"}}, "issue.key must be .* not dict"),
    ({"key": True}, "issue.key must be .* not bool"),
    ({"key": 5.0}, "issue.key must be .* not float"),
    ({"key": "HELP-5", "id": [10005]}, "issue.id must be .* not list"),
    ("HELP-5", "issue missing or not an object"),
])
def test_missing_or_wrongly_typed_issue_id_is_422_naming_the_field(issue, field) -> None:
    rejected(*delivery("jira_issue_created", issue=issue), 422, field)
    rejected(*delivery("jira_issue_updated", issue=issue), 422, field)


def test_id_as_number_or_string_is_the_same_ticket() -> None:
    rec = json.loads((FIXTURES / "webhooks" / "jira_issue_created.json").read_text())
    events = []
    for issue_id, key in (("10005", "5"), (10005, 5)):
        issue = {**rec["body"]["issue"], "id": issue_id, "key": key}
        events += parse(*delivery("jira_issue_created", issue=issue))
    assert {(e.ticket_ref, e.ticket_id) for e in events} == {("5", "jira-5")}


def test_created_issue_without_text_is_422() -> None:
    rec = json.loads((FIXTURES / "webhooks" / "jira_issue_created.json").read_text())
    issue = rec["body"]["issue"]
    issue["fields"].update(summary="  ", description={"type": "doc", "version": 1,
                                                      "content": []})
    rejected(*delivery("jira_issue_created", issue=issue), 422, "no text to classify")


def test_missing_event_type_is_422() -> None:
    rejected(*delivery("jira_issue_created", webhookEvent=None), 422, "webhookEvent")
