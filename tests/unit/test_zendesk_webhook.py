"""Zendesk webhook deliveries to WebhookEvents: signature, freshness, payload mapping, refusals.

Bodies come from tests/fixtures/webhooks/zendesk_*.json, each shaped like the Zendesk page
named in its ``_recorded_from``; the tests sign them as Zendesk does."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from pipelines.connectors import ZendeskConnector
from pipelines.integrations.events import WebhookEvent, WebhookRejected
from pipelines.integrations.signatures import body_key
from pipelines.integrations.zendesk_webhook import parse_webhook
from tests.conftest import FIXTURES
from tests.standins.zendesk import ZendeskStandIn
from tests.standins.zendesk_webhooks import sign, zulu

SECRET = "dGhpc19zZWNyZXRfaXNfZm9yX3Rlc3Rpbmdfb25seQ=="
NOW = datetime(2026, 11, 20, 8, 30, tzinfo=UTC)


def fixture(name: str) -> dict[str, Any]:
    rec = json.loads((FIXTURES / "webhooks" / f"zendesk_{name}.json").read_text("utf-8"))
    assert rec["_recorded_from"].startswith("https://")
    return rec["body"]


def signed(body: dict[str, Any] | bytes, *, at: datetime = NOW, secret: str = SECRET
           ) -> tuple[dict[str, str], bytes]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode("utf-8")
    return {"content-type": "application/json", **sign(secret, raw, zulu(at))}, raw


def parse(headers: dict[str, str], raw: bytes, **kw: Any) -> list[WebhookEvent]:
    return parse_webhook(headers, raw, SECRET, now=NOW.timestamp(), **kw)


def one(body: dict[str, Any] | bytes) -> WebhookEvent:
    events = parse(*signed(body))
    assert len(events) == 1
    return events[0]


def refused(headers: dict[str, str], raw: bytes, status: int) -> str:
    with pytest.raises(WebhookRejected) as err:
        parse(headers, raw)
    assert err.value.status == status
    return err.value.message


# --- signature and freshness ------------------------------------------------------------

def test_signed_created_event_becomes_created_with_ticket_text() -> None:
    event = one(fixture("ticket_created"))
    assert (event.kind, event.source, event.event_type) == (
        "created", "zendesk", "zen:event-type:ticket.created")
    assert (event.ticket_ref, event.ticket_id) == ("35436", "zendesk-35436")
    assert event.event_key == "cbe4028c-7239-495d-b020-f22348516046"
    assert (event.subject, event.body) == ("Help, my card was charged twice",
                                           "I see two identical payments for one purchase.")
    assert (event.priority, event.group, event.customer_ref) == ("high", "98738", "20978392")
    assert event.occurred_at == datetime(2026, 11, 20, 8, 0, 2, 672717, tzinfo=UTC)
    assert event.changes == {}


def test_tampered_body_and_wrong_secret_are_401() -> None:
    headers, raw = signed(fixture("ticket_created"))
    assert "does not match" in refused(headers, raw.replace(b"35436", b"35437"), 401)
    assert "does not match" in refused(*signed(fixture("ticket_created"), secret="other"), 401)
    moved = dict(headers, **{"x-zendesk-webhook-signature-timestamp": zulu(NOW.replace(second=1))})
    assert "does not match" in refused(moved, raw, 401)  # the timestamp is signed too


@pytest.mark.parametrize("skew_s", [-301, 301])
def test_stale_and_future_timestamps_are_401(skew_s: int) -> None:
    at = datetime.fromtimestamp(NOW.timestamp() + skew_s, UTC)
    assert "from now" in refused(*signed(fixture("ticket_created"), at=at), 401)
    inside = datetime.fromtimestamp(NOW.timestamp() + skew_s * 290 / 301, UTC)
    assert one_at(inside).kind == "created"


def one_at(at: datetime) -> WebhookEvent:
    return parse(*signed(fixture("ticket_created"), at=at))[0]


@pytest.mark.parametrize("header", ["x-zendesk-webhook-signature",
                                    "x-zendesk-webhook-signature-timestamp"])
def test_missing_signature_headers_are_401(header: str) -> None:
    headers, raw = signed(fixture("ticket_created"))
    del headers[header]
    assert "missing" in refused(headers, raw, 401)


def test_signature_is_checked_before_the_body_is_parsed() -> None:
    headers, _ = signed(fixture("ticket_created"))
    refused(headers, b"{not json", 401)
    refused({}, b"{not json", 401)


# --- routed-field changes and ignored events ---------------------------------------------

@pytest.mark.parametrize(("name", "changes"), [
    ("group_assignment_changed", {"group": "360000100004"}),
    ("priority_changed", {"priority": "critical"}),
    ("tags_changed", {"tags": ["card", "cca_routed", "vip"]}),
])
def test_routed_field_changes_become_updated_with_changes_and_actor(
        name: str, changes: dict[str, Any]) -> None:
    body = fixture(name)
    event = one(body)
    assert (event.kind, event.event_type) == ("updated", f"zen:event-type:ticket.{name}")
    assert (event.ticket_ref, event.ticket_id, event.actor) == ("35436", "zendesk-35436",
                                                                "372981")
    assert event.changes == changes
    assert event.event_key == body["id"]


def test_other_ticket_event_and_non_ticket_event_are_one_ignored_event() -> None:
    status = one(fixture("status_changed"))
    assert (status.kind, status.event_type, status.ticket_ref) == (
        "ignored", "zen:event-type:ticket.status_changed", "35436")
    assert status.changes == {} and status.event_key == fixture("status_changed")["id"]
    user = one(fixture("user_active_changed"))
    assert (user.kind, user.ticket_ref, user.ticket_id) == ("ignored", "", "")


def test_redelivery_keeps_the_event_key() -> None:
    body = fixture("group_assignment_changed")
    first = parse(*signed(body))[0]
    later = parse(*signed(body, at=NOW.replace(second=40)))[0]
    assert first.event_key == later.event_key == body["id"]


# --- refusals ---------------------------------------------------------------------------

def test_malformed_json_and_nan_are_400() -> None:
    refused(*signed(b'{"type": "zen:event-type:ticket.created", '), 400)
    assert "NaN" in refused(*signed(b'{"type": "zen:event-type:ticket.created", '
                                    b'"detail": {"id": NaN}}'), 400)
    refused(*signed(b'["not", "an", "object"]'), 400)


@pytest.mark.parametrize("bad", [None, "", [35436], {"id": 35436}, True, 35436.0, "35x"])
def test_missing_or_wrongly_typed_ticket_id_is_422_naming_the_field(bad: Any) -> None:
    body = fixture("ticket_created")
    if bad is None:
        del body["detail"]["id"]
    else:
        body["detail"]["id"] = bad
    assert "detail.id" in refused(*signed(body), 422)


def test_id_as_number_or_string_is_the_same_ticket_as_the_pull_connector() -> None:
    as_string = one(fixture("ticket_created"))
    body = fixture("ticket_created")
    body["detail"]["id"] = 35436
    as_number = one(body)
    assert (as_number.ticket_ref, as_number.ticket_id) == (as_string.ticket_ref,
                                                           as_string.ticket_id)
    with ZendeskStandIn() as zd, httpx.Client() as client:
        pulled = ZendeskConnector(zd.url, zd.user, zd.secret, client).fetch(None)
    assert as_string.ticket_id in [r["id"] for r in pulled.records]


def test_created_ticket_without_text_is_422() -> None:
    body = fixture("ticket_created")
    body["detail"].update(subject="  ", description=None)
    assert "no text to classify" in refused(*signed(body), 422)
    body["detail"]["description"] = "only a description"
    assert one(body).body == "only a description"


def test_body_that_is_neither_an_event_nor_a_trigger_is_422() -> None:
    assert "type" in refused(*signed({"ticket": {"id": 1}}), 422)


def test_created_without_detail_is_422() -> None:
    body = fixture("ticket_created")
    body["detail"] = "35436"
    assert "detail" in refused(*signed(body), 422)


@pytest.mark.parametrize(("given", "ours"), [("URGENT", "critical"), ("high", "high"),
                                             ("Normal", "normal"), ("LOW", "low"),
                                             (None, "normal"), ("odd", "normal")])
def test_priority_any_case_maps_to_ours(given: str | None, ours: str) -> None:
    body = copy.deepcopy(fixture("ticket_created"))
    body["detail"]["priority"] = given
    assert one(body).priority == ours


# --- trigger bodies (accounts without event subscriptions) --------------------------------

def test_trigger_created_is_created_keyed_by_body_hash() -> None:
    headers, raw = signed(fixture("trigger_created"))
    event = parse(headers, raw)[0]
    assert (event.kind, event.event_type, event.ticket_ref, event.ticket_id) == (
        "created", "trigger:created", "35440", "zendesk-35440")
    assert (event.priority, event.group, event.customer_ref) == ("critical", None, "20978392")
    assert event.event_key == body_key("zendesk", raw)


def test_trigger_updated_carries_current_routed_fields() -> None:
    event = one(fixture("trigger_updated"))
    assert (event.kind, event.actor) == ("updated", "372981")
    assert event.changes == {"group": "360000100005", "priority": "high",
                             "tags": ["card", "atm", "cca_routed"]}
    other = fixture("trigger_updated")
    other["cca_trigger"] = "solved"
    assert one(other).kind == "ignored"
    other = fixture("trigger_updated")
    other["ticket_id"] = ["35440"]
    assert "ticket_id" in refused(*signed(other), 422)
