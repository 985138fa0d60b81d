"""Zendesk webhooks in: a signed delivery becomes one ``WebhookEvent``.

Two payloads arrive here. Event subscriptions (Zendesk "Ticket events" webhook docs,
``zendesk_event_version`` 2022-11-06) send ``type`` ``zen:event-type:ticket.*``, an event
``id`` that is the same on every redelivery, the ticket in ``detail`` (ids as strings,
priority in upper case) and the change in ``event``. Accounts that connect the webhook to a
trigger instead send the JSON body docs/integrations/zendesk.md defines (``cca_trigger``),
which has no event id, so the body's hash is the event key.

The signature is checked before anything is parsed (Zendesk "Verifying webhook
authenticity": base64 HMAC-SHA256 of the timestamp header followed by the raw body), then the
timestamp's age, so an unsigned or replayed request never reaches the JSON parser.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipelines.connectors.base import parse_time, text_of
from pipelines.connectors.zendesk import PRIORITY
from pipelines.integrations.events import WebhookEvent, WebhookRejected, parse_body
from pipelines.integrations.signatures import body_key, check_base64, check_fresh, unix_seconds

SOURCE = "zendesk"
SIGNATURE_HEADER = "x-zendesk-webhook-signature"
TIMESTAMP_HEADER = "x-zendesk-webhook-signature-timestamp"
EVENT_PREFIX = "zen:event-type:"
CREATED = EVENT_PREFIX + "ticket.created"
GROUP_CHANGED = EVENT_PREFIX + "ticket.group_assignment_changed"
PRIORITY_CHANGED = EVENT_PREFIX + "ticket.priority_changed"
TAGS_CHANGED = EVENT_PREFIX + "ticket.tags_changed"
ROUTED_CHANGES = (GROUP_CHANGED, PRIORITY_CHANGED, TAGS_CHANGED)
TRIGGER_KEY = "cca_trigger"


def parse_webhook(headers: Mapping[str, str], body: bytes, secret: str, *,
                  max_skew_s: float = 300, now: float | None = None,
                  **vendor_kw: Any) -> list[WebhookEvent]:
    """The event(s) in one Zendesk delivery, or ``WebhookRejected``.

    ``headers`` has lower-case names. ``vendor_kw`` is accepted so every vendor's parser has
    one signature; Zendesk needs nothing more than the secret.
    """
    stamp = headers.get(TIMESTAMP_HEADER)
    if not stamp:
        raise WebhookRejected(401, f"missing {TIMESTAMP_HEADER} header")
    check_base64(secret, stamp.encode("utf-8") + body, headers.get(SIGNATURE_HEADER))
    check_fresh(unix_seconds(stamp), max_skew_s, now)
    data = parse_body(body)
    if TRIGGER_KEY in data:
        return [_from_trigger(data, body)]
    kind = data.get("type")
    if not isinstance(kind, str) or not kind:
        raise WebhookRejected(422, "type: missing; expected a Zendesk event "
                                   f"(zen:event-type:...) or a {TRIGGER_KEY!r} trigger body")
    return [_from_event(kind, data, body)]


# -- values --------------------------------------------------------------------------------

def ticket_ref_of(value: Any, field: str) -> str:
    """A Zendesk ticket id as text: 123 and "123" are the same ticket (event payloads send
    strings, the REST API and trigger placeholders numbers or strings)."""
    if value is None or value == "":
        raise WebhookRejected(422, f"{field}: missing ticket id")
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise WebhookRejected(422, f"{field}: ticket id must be a number or a string of "
                                   f"digits, not {type(value).__name__}")
    text = str(value).strip()
    if not text.isdigit() or not text.isascii():
        raise WebhookRejected(422, f"{field}: ticket id must be digits, got {text[:40]!r}")
    return str(int(text))


def _id_text(value: Any) -> str | None:
    """A user or group id (number or string) as text; None when absent."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return str(value)
    text = value.strip() if isinstance(value, str) else ""
    return text or None


def our_priority(value: Any) -> str:
    """Zendesk priority (any case; the event payloads send URGENT) as ours; none: normal."""
    return PRIORITY.get(text_of(value).lower(), "normal")


def _tags(value: Any) -> list[str]:
    """Tags as a list: event payloads send a list, the ``{{ticket.tags}}`` placeholder a
    space-separated string."""
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list):
        return [t for t in value if isinstance(t, str) and t]
    return []


# -- event subscriptions -------------------------------------------------------------------

def _from_event(kind: str, data: dict[str, Any], body: bytes) -> WebhookEvent:
    event_id = data.get("id")
    key = event_id if isinstance(event_id, str) and event_id else body_key(SOURCE, body)
    detail = data.get("detail")
    if kind != CREATED and kind not in ROUTED_CHANGES:
        return _ignored(kind, key, data, detail)
    if not isinstance(detail, dict):
        raise WebhookRejected(422, "detail: missing or not an object (the ticket)")
    ref = ticket_ref_of(detail.get("id"), "detail.id")
    common = _ticket_fields(detail)
    actor = _id_text(detail.get("actor_id"))
    when = parse_time(data.get("time"))
    if kind == CREATED:
        _require_text(common)
        return WebhookEvent(source=SOURCE, event_key=key, kind="created", event_type=kind,
                            ticket_ref=ref, ticket_id=f"zendesk-{ref}", actor=actor,
                            occurred_at=when, **common)
    change = data.get("event") if isinstance(data.get("event"), dict) else {}
    return WebhookEvent(source=SOURCE, event_key=key, kind="updated", event_type=kind,
                        ticket_ref=ref, ticket_id=f"zendesk-{ref}", actor=actor,
                        occurred_at=when, changes=_changes(kind, change, detail), **common)


def _ticket_fields(ticket: Mapping[str, Any]) -> dict[str, Any]:
    return {"subject": text_of(ticket.get("subject")), "body": text_of(ticket.get("description")),
            "priority": our_priority(ticket.get("priority")),
            "group": _id_text(ticket.get("group_id")),
            "customer_ref": _id_text(ticket.get("requester_id"))}


def _require_text(fields: Mapping[str, Any]) -> None:
    if not (fields["subject"] or fields["body"]):
        raise WebhookRejected(422, "no text to classify: subject and description are empty")


def _changes(kind: str, change: Mapping[str, Any], detail: Mapping[str, Any]) -> dict[str, Any]:
    """The routed field's new value by our name; ``detail`` is the ticket after the change."""
    if kind == GROUP_CHANGED:
        current = change["current"] if "current" in change else detail.get("group_id")
        return {"group": _id_text(current)}
    if kind == PRIORITY_CHANGED:
        current = change["current"] if "current" in change else detail.get("priority")
        return {"priority": our_priority(current)}
    return {"tags": _tags(detail.get("tags"))}


def _ignored(kind: str, key: str, data: Mapping[str, Any], detail: Any) -> WebhookEvent:
    """An event type we do not act on: acknowledged, counted, never an error. The ticket is
    named when the payload is about one, so the count can be traced."""
    ref = ""
    subject = data.get("subject")
    if isinstance(subject, str) and subject.startswith("zen:ticket:"):
        candidate = detail.get("id") if isinstance(detail, dict) else subject[11:]
        try:
            ref = ticket_ref_of(candidate, "detail.id")
        except WebhookRejected:
            ref = ""
    return WebhookEvent(source=SOURCE, event_key=key, kind="ignored", event_type=kind,
                        ticket_ref=ref, ticket_id=f"zendesk-{ref}" if ref else "",
                        occurred_at=parse_time(data.get("time")))


# -- trigger bodies ------------------------------------------------------------------------

def _from_trigger(data: dict[str, Any], body: bytes) -> WebhookEvent:
    """The body docs/integrations/zendesk.md asks a trigger to send (placeholders rendered):
    a created ticket, or the ticket's current routed fields after an update (the worker
    compares them with what it wrote)."""
    trigger = data.get(TRIGGER_KEY)
    key = body_key(SOURCE, body)
    event_type = f"trigger:{trigger}" if isinstance(trigger, str) else "trigger"
    if trigger not in ("created", "updated"):
        return WebhookEvent(source=SOURCE, event_key=key, kind="ignored",
                            event_type=event_type, ticket_ref="", ticket_id="")
    ref = ticket_ref_of(data.get("ticket_id"), "ticket_id")
    common = _ticket_fields(data)
    when = parse_time(data.get("updated_at"))
    actor = _id_text(data.get("updated_by"))
    if trigger == "created":
        _require_text(common)
        return WebhookEvent(source=SOURCE, event_key=key, kind="created",
                            event_type=event_type, ticket_ref=ref, ticket_id=f"zendesk-{ref}",
                            actor=actor, occurred_at=when, **common)
    changes = {"group": common["group"], "priority": common["priority"],
               "tags": _tags(data.get("tags"))}
    return WebhookEvent(source=SOURCE, event_key=key, kind="updated", event_type=event_type,
                        ticket_ref=ref, ticket_id=f"zendesk-{ref}", actor=actor,
                        occurred_at=when, changes=changes, **common)
