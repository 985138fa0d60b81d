"""Tickets the hourly ingest pulls, routed like webhooks when ``CCA_WRITEBACK=true``.

A pulled ticket new to the store becomes a "created" event in the same intake queue, so the
same workers classify it and write the routing back, once: the event key is the ticket id,
and a ticket a webhook already routed is found in ``writebacks``. The very first pull of a
system (no cursor yet) is a backfill of its history and is not written back.
"""

from __future__ import annotations

from cca.tickets import Ticket
from pipelines.integrations.events import WebhookEvent


def ticket_ref(ticket: Ticket) -> str | None:
    """What the vendor's REST API names a pulled ticket by; None when it cannot be told."""
    if ticket.source == "servicenow":
        return str(ticket.metadata.get("sys_id") or "") or None
    prefix = f"{ticket.source}-"
    if ticket.source in ("zendesk", "jira") and ticket.id.startswith(prefix):
        return ticket.id[len(prefix):]
    return None


def pulled_event(ticket: Ticket) -> WebhookEvent | None:
    ref = ticket_ref(ticket)
    if ref is None:
        return None
    return WebhookEvent(
        source=ticket.source, event_key=f"pull:{ticket.id}", kind="created",  # type: ignore[arg-type]
        event_type="pull", ticket_ref=ref, ticket_id=ticket.id, subject=ticket.subject,
        body=ticket.body, priority=ticket.priority, customer_ref=ticket.customer_ref,
        occurred_at=ticket.created_at)
