"""ServiceNow webhook deliveries (the project's signed Business Rule) become WebhookEvents.

The recorded deliveries in tests/fixtures/webhooks/servicenow_*.json are byte-exact bodies
with the headers the Business Rule sends, signed with the fixture's ``_secret``."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from pipelines.connectors import ServiceNowConnector
from pipelines.integrations.events import WebhookEvent, WebhookRejected
from pipelines.integrations.servicenow import parse_webhook
from pipelines.integrations.signatures import body_key
from tests.conftest import FIXTURES
from tests.standins.servicenow import ServiceNowStandIn, sign

SECRET = "whsec-servicenow"


def delivery(name: str) -> tuple[dict[str, str], bytes, float]:
    rec = json.loads((FIXTURES / "webhooks" / f"servicenow_{name}.json").read_text("utf-8"))
    assert rec["_secret"] == SECRET and "docs/integrations/servicenow.md" in rec["_recorded_from"]
    headers = {k.lower(): v for k, v in rec["headers"].items()}
    return headers, rec["body"].encode("utf-8"), float(headers["x-cca-timestamp"])


def parse(name: str, **kw: Any) -> WebhookEvent:
    headers, body, stamp = delivery(name)
    events = parse_webhook(headers, body, SECRET, now=stamp + 1, **kw)
    assert len(events) == 1
    return events[0]


def signed(payload: dict[str, Any] | bytes, stamp: int = 1_800_000_000,
           secret: str = SECRET) -> tuple[dict[str, str], bytes]:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return {"x-cca-timestamp": str(stamp),
            "x-cca-signature": sign(secret, str(stamp), body)}, body


def rejected(headers: dict[str, str], body: bytes, now: float = 1_800_000_000,
             secret: str = SECRET) -> WebhookRejected:
    with pytest.raises(WebhookRejected) as err:
        parse_webhook(headers, body, secret, now=now)
    return err.value


BASE = {"sys_id": "c3a1f7e21b1a2010c0a8f3a2604bcb20", "number": "INC0010005",
        "short_description": "Lost card", "description": "", "assignment_group": "",
        "urgency": "3", "sys_updated_by": "abel.tuter", "sys_updated_on": "2026-11-21 09:12:44",
        "sys_created_on": "2026-11-21 09:12:44", "caller_id": "", "operation": "insert",
        "changed": []}


# --- recorded deliveries ----------------------------------------------------------------

def test_recorded_insert_is_a_created_event_with_text_priority_and_caller() -> None:
    _, body, _ = delivery("insert")
    event = parse("insert")
    assert (event.source, event.kind, event.event_type) == ("servicenow", "created",
                                                            "incident.insert")
    assert (event.ticket_ref, event.ticket_id) == ("c3a1f7e21b1a2010c0a8f3a2604bcb20",
                                                   "servicenow-INC0010005")
    assert event.subject == "Card payment declined at the café"
    assert event.body.endswith("funds.\nPlease help.")
    assert (event.priority, event.group) == ("normal", None)
    assert event.customer_ref == "62826bf03710200044e0bfc8bcbe5df1"
    assert (event.actor, event.changes) == ("abel.tuter", {})
    assert event.occurred_at == datetime(2026, 11, 21, 9, 12, 44, tzinfo=UTC)
    assert event.event_key == body_key("servicenow", body)
    assert WebhookEvent.from_dict(event.to_dict()) == event


def test_recorded_group_change_by_an_agent_is_an_update_naming_the_agent() -> None:
    event = parse("update_assignment_group")
    assert (event.kind, event.event_type, event.actor) == ("updated", "incident.update",
                                                           "beth.anglin")
    assert event.changes == {"group": "6b2f1a0f1b6a2010c0a8f3a2604bcb16"}
    assert event.group == "6b2f1a0f1b6a2010c0a8f3a2604bcb16"
    assert event.occurred_at == datetime(2026, 11, 21, 9, 40, 2, tzinfo=UTC)


def test_recorded_urgency_change_comes_back_as_our_priority() -> None:
    event = parse("update_urgency")
    assert (event.kind, event.changes, event.priority) == ("updated", {"priority": "high"},
                                                           "high")


def test_recorded_own_write_is_an_update_by_the_integration_user() -> None:
    event = parse("update_own_write")
    assert event.kind == "updated" and event.actor == "cca.integration"
    assert event.changes == {"group": "6b2f1a0f1b6a2010c0a8f3a2604bcb12"}


def test_recorded_update_of_other_fields_is_one_ignored_event() -> None:
    event = parse("update_other")
    assert (event.kind, event.event_type, event.changes) == ("ignored", "incident.update", {})
    assert event.ticket_id == "servicenow-INC0010005"


@pytest.mark.parametrize("operation", ["delete", "insert_or_update"])
def test_other_operations_are_ignored_not_refused(operation: str) -> None:
    headers, body = signed({**BASE, "operation": operation})
    [event] = parse_webhook(headers, body, SECRET, now=1_800_000_000)
    assert (event.kind, event.event_type) == ("ignored", f"incident.{operation}")


def test_ticket_id_is_the_pull_connectors_id_for_the_same_incident() -> None:
    with ServiceNowStandIn() as sn:
        pulled = ServiceNowConnector(sn.url, sn.user, sn.password, page_size=2).fetch(None)
        sys_id = "9d385017c611228701d22104cc95c371"
        headers, body = sn.webhook(sys_id)
    [event] = parse_webhook(headers, body, sn.secret)
    record = next(r for r in pulled.records if r["metadata"]["sys_id"] == sys_id)
    assert event.ticket_id == record["id"] == "servicenow-INC0010001"
    assert (event.subject, event.customer_ref) == (record["subject"], record["customer_ref"])


# --- signature and freshness ------------------------------------------------------------

def test_redelivery_with_a_new_timestamp_is_the_same_event() -> None:
    headers, body = signed(BASE, stamp=1_800_000_000)
    again = signed(BASE, stamp=1_800_000_090)[0]
    first = parse_webhook(headers, body, SECRET, now=1_800_000_000)[0]
    second = parse_webhook(again, body, SECRET, now=1_800_000_100)[0]
    assert headers != again and first.event_key == second.event_key


def test_tampered_body_is_refused() -> None:
    headers, body, stamp = delivery("update_assignment_group")
    forged = body.replace(b"beth.anglin", b"cca.integration")
    err = rejected(headers, forged, now=stamp)
    assert (err.status, err.message) == (401, "signature does not match the body")


def test_wrong_secret_and_moved_timestamp_are_refused() -> None:
    headers, body, stamp = delivery("insert")
    assert rejected(headers, body, now=stamp, secret="other").status == 401
    # The timestamp is signed: moving it to look fresh breaks the signature.
    moved = {**headers, "x-cca-timestamp": str(int(stamp) + 3600)}
    assert rejected(moved, body, now=stamp + 3600).message == "signature does not match the body"


@pytest.mark.parametrize("skew", [-301, 301])
def test_stale_or_future_timestamp_is_refused(skew: int) -> None:
    headers, body = signed(BASE)
    err = rejected(headers, body, now=1_800_000_000 + skew)
    assert err.status == 401 and "allowed: 300 s" in err.message
    assert parse_webhook(headers, body, SECRET, now=1_800_000_000 + skew, max_skew_s=400)


@pytest.mark.parametrize(("drop", "message"), [
    ("x-cca-signature", "missing signature header"),
    ("x-cca-timestamp", "signature does not match the body"),
])
def test_missing_headers_are_refused(drop: str, message: str) -> None:
    headers, body = signed(BASE)
    err = rejected({k: v for k, v in headers.items() if k != drop}, body)
    assert (err.status, err.message) == (401, message)


def test_unsigned_timestamp_header_without_digits_is_refused() -> None:
    body = json.dumps(BASE).encode()
    headers = {"x-cca-timestamp": "", "x-cca-signature": sign(SECRET, "", body)}
    err = rejected(headers, body)
    assert (err.status, err.message) == (401, "missing or unreadable signature timestamp")


def test_signature_is_checked_before_the_body_is_parsed() -> None:
    err = rejected({"x-cca-timestamp": "1800000000", "x-cca-signature": "sha256=00"},
                   b"{not json")
    assert err.status == 401


def test_header_names_are_matched_whatever_their_case() -> None:
    headers, body = signed(BASE)
    upper = {k.upper(): v for k, v in headers.items()}
    assert parse_webhook(upper, body, SECRET, now=1_800_000_000)[0].kind == "created"


# --- body errors ------------------------------------------------------------------------

@pytest.mark.parametrize("body", [b"{\"sys_id\": ", b"{\"sys_id\": NaN}", b"[1, 2]",
                                  b"{\"urgency\": Infinity}"])
def test_malformed_or_nan_json_is_400(body: bytes) -> None:
    headers, body = signed(body)
    assert rejected(headers, body).status == 400


@pytest.mark.parametrize(("field", "value"), [
    ("sys_id", None), ("sys_id", ["a"]), ("sys_id", {"value": "a"}), ("sys_id", True),
    ("sys_id", 1.5), ("sys_id", ""), ("number", None), ("number", False), ("number", [1]),
])
def test_missing_or_mistyped_ids_are_422_naming_the_field(field: str, value: Any) -> None:
    payload = {**BASE, field: value} if value is not None else {
        k: v for k, v in BASE.items() if k != field}
    err = rejected(*signed(payload))
    assert err.status == 422 and err.message.startswith(field)


def test_id_sent_as_number_or_string_names_the_same_ticket() -> None:
    as_text = parse_webhook(*signed({**BASE, "sys_id": "12345", "number": "777"}), SECRET,
                            now=1_800_000_000)[0]
    as_int = parse_webhook(*signed({**BASE, "sys_id": 12345, "number": 777}), SECRET,
                           now=1_800_000_000)[0]
    assert (as_int.ticket_ref, as_int.ticket_id) == (as_text.ticket_ref, as_text.ticket_id) == (
        "12345", "servicenow-777")


def test_created_ticket_without_text_is_422() -> None:
    err = rejected(*signed({**BASE, "short_description": "  ", "description": None}))
    assert err.status == 422 and err.message.startswith("no text to classify")


@pytest.mark.parametrize(("payload", "field"), [
    ({**BASE, "operation": None}, "operation"),
    ({**BASE, "operation": "update", "changed": "urgency"}, "changed"),
    ({**BASE, "operation": "update", "changed": ["urgency"], "urgency": "9"}, "urgency"),
    ({**BASE, "short_description": ["x"]}, "short_description"),
])
def test_malformed_fields_are_422(payload: dict[str, Any], field: str) -> None:
    err = rejected(*signed(payload))
    assert err.status == 422 and err.message.startswith(field)


def test_update_fields_come_back_as_strings_and_cleared_group_as_empty() -> None:
    payload = {**BASE, "operation": "update", "changed": ["assignment_group", "urgency"],
               "assignment_group": "", "urgency": 3}
    [event] = parse_webhook(*signed(payload), SECRET, now=1_800_000_000)
    assert event.changes == {"group": "", "priority": "low"} and event.group is None
