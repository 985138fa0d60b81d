"""Signed Zendesk webhook deliveries built from a stand-in's ticket state.

What Zendesk sends (developer.zendesk.com): the headers of "Anatomy of a webhook request"
(/documentation/webhooks/anatomy-of-a-webhook-request), the signature of "Verifying webhook
authenticity" (/documentation/webhooks/verifying/: base64 HMAC-SHA256 of the timestamp header
followed by the raw body), and the event-subscription payloads of "Ticket events"
(/api-reference/webhooks/event-types/ticket-events/, ``zendesk_event_version`` 2022-11-06:
ids as strings, priority and status in upper case). Trigger deliveries carry the JSON body
docs/integrations/zendesk.md defines, placeholders rendered.
"""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime
from typing import Any

from pipelines.integrations.signatures import hmac_sha256

EVENT = "zen:event-type:ticket."
FIELD_EVENTS = {"group_id": EVENT + "group_assignment_changed",
                "priority": EVENT + "priority_changed", "tags": EVENT + "tags_changed"}
Delivery = tuple[dict[str, str], bytes]


def sign(secret: str, body: bytes, timestamp: str) -> dict[str, str]:
    """The two signature headers Zendesk sends, lower-case as the service reads them."""
    digest = hmac_sha256(secret, timestamp.encode("utf-8") + body)
    return {"x-zendesk-webhook-signature": base64.b64encode(digest).decode("ascii"),
            "x-zendesk-webhook-signature-timestamp": timestamp}


def zulu(when: datetime | None = None) -> str:
    """Zendesk's timestamp format, e.g. 2021-03-25T05:09:27Z."""
    return (when or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def str_id(value: Any) -> str | None:
    return None if value is None else str(value)


class WebhookDeliveries:
    """Mixed into ``ZendeskStandIn``: deliveries for its tickets, signed with its secret."""

    tickets: dict[int, dict[str, Any]]
    webhook_secret: str
    account_id: int
    _next_id: int

    def deliver(self, payload: dict[str, Any], *, when: datetime | None = None,
                secret: str | None = None) -> Delivery:
        """Headers and raw body of one delivery of ``payload``; ``when`` sets the signature
        timestamp (a stale or future one for the freshness tests)."""
        body = json.dumps(payload, separators=(",", ":")).encode("utf-8")
        self._next_id += 1
        headers = {"content-type": "application/json",
                   "x-zendesk-account-id": str(self.account_id),
                   "x-zendesk-webhook-id": "01F1KRFQ6BG29CNWFR60NK5FNY",
                   "x-zendesk-webhook-invocation-id": str(8350205582 + self._next_id),
                   **sign(secret or self.webhook_secret, body, zulu(when))}
        return headers, body

    def event_payload(self, event_type: str, ticket_id: int, *, actor_id: int | None = None,
                      event: dict[str, Any] | None = None,
                      event_id: str | None = None) -> dict[str, Any]:
        """An event-subscription payload for the ticket as it is now."""
        t = self.tickets[ticket_id]
        self._next_id += 1
        detail = {
            "actor_id": str(actor_id if actor_id is not None else t["requester_id"]),
            "assignee_id": str_id(t.get("assignee_id")), "brand_id": str_id(t["brand_id"]),
            "created_at": t["created_at"], "custom_status": None,
            "description": t["description"], "external_id": None,
            "form_id": str_id(t.get("ticket_form_id")), "group_id": str_id(t["group_id"]),
            "id": str(ticket_id), "is_public": True, "organization_id": None,
            "priority": t["priority"].upper() if t["priority"] else None,
            "requester_id": str(t["requester_id"]), "status": t["status"].upper(),
            "subject": t["subject"], "submitter_id": str(t["submitter_id"]),
            "tags": list(t["tags"]), "type": t["type"].upper() if t["type"] else None,
            "updated_at": t["updated_at"], "via": {"channel": t["via"]["channel"]}}
        name = event_type if event_type.startswith("zen:") else EVENT + event_type
        return {"account_id": self.account_id, "detail": detail, "event": event or {},
                # Zendesk's event ids are UUIDs, unique across every stand-in of a test run.
                "id": event_id or str(uuid.uuid4()),
                "subject": f"zen:ticket:{ticket_id}", "time": zulu(),
                "type": name, "zendesk_event_version": "2022-11-06"}

    def webhook(self, event_type: str, ticket_id: int, *, actor_id: int | None = None,
                event: dict[str, Any] | None = None, event_id: str | None = None,
                when: datetime | None = None) -> Delivery:
        """A signed event delivery: ``event_type`` is ``created``, ``status_changed``, … or a
        full ``zen:event-type:…`` name; ``event`` is the payload's ``event`` object."""
        payload = self.event_payload(event_type, ticket_id, actor_id=actor_id, event=event,
                                     event_id=event_id)
        return self.deliver(payload, when=when)

    def agent_update(self, ticket_id: int, actor_id: int, **fields: Any) -> list[Delivery]:
        """Someone (an agent, or the integration user when ``actor_id`` is its id) changes
        group_id / priority / tags: applied to the state, one delivery per changed field, as
        Zendesk emits one event per field."""
        ticket, out = self.tickets[ticket_id], []
        for field, value in fields.items():
            previous = ticket[field]
            ticket[field] = list(value) if field == "tags" else value
            if field == "tags":
                event = {"tags_added": [t for t in value if t not in previous],
                         "tags_removed": [t for t in previous if t not in value]}
            elif field == "priority":
                event = {"current": value.upper() if value else None,
                         "previous": previous.upper() if previous else None}
            else:
                event = {"current": str_id(value), "previous": str_id(previous)}
            event["meta"] = {"sequence": {"id": f"seq-{ticket_id}", "position": len(out) + 1}}
            out.append(self.webhook(FIELD_EVENTS[field], ticket_id, actor_id=actor_id,
                                    event=event))
        return out

    def trigger(self, kind: str, ticket_id: int, *, actor_id: int | None = None,
                when: datetime | None = None) -> Delivery:
        """A trigger delivery (``kind`` created or updated) for the ticket as it is now."""
        t = self.tickets[ticket_id]
        payload = {"cca_trigger": kind, "ticket_id": str(ticket_id), "subject": t["subject"],
                   "description": t["description"],
                   "priority": (t["priority"] or "").capitalize(),
                   "group_id": str_id(t["group_id"]) or "", "tags": " ".join(t["tags"]),
                   "requester_id": str(t["requester_id"]),
                   "updated_by": str(actor_id if actor_id is not None else t["requester_id"]),
                   "updated_at": t["updated_at"]}
        return self.deliver(payload, when=when)
