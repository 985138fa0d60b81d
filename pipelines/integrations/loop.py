"""One intake event, handled: route a new ticket and write it back, or learn from an agent.

Plain functions over injected parts (the classifier, the vendor writers, the feedback loop),
so the service's workers, ``cca worker`` and the tests run the same code. The order of a
write-back is what makes it exactly-once across crashes: the intended write is committed
first ('sending', with its marker), then sent, then marked 'sent'; a row found 'sending'
later is first looked for at the vendor (``Writer.already_written``).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from cca.store import Database
from cca.store.intake_repo import (
    Claimed,
    WritebackRow,
    mark_sent,
    record_correction,
    start_writeback,
    ticket_lock,
    update_unsent,
    writeback_for,
)
from cca.store.tickets_repo import upsert_tickets
from cca.tickets import Decision, Ticket
from pipelines.integrations.events import WebhookEvent
from pipelines.integrations.mapping import RoutingMap
from pipelines.integrations.note import marker_for, routing_note
from pipelines.integrations.writeback import Routing, WriteFailed, Writer

log = logging.getLogger("cca.intake")

# How soon an event that found its ticket busy (another event writing it) is tried again.
_BUSY_RETRY_S = 2.0

Classify = Callable[[Ticket], Decision]
Learn = Callable[[str, str, str], None]  # ticket id, label, actor


@dataclass
class LoopParts:
    """What handling an event needs; the hooks feed the service's metrics."""

    db: Database
    routing: RoutingMap
    writers: dict[str, Writer]
    classify: Classify
    learn: Learn | None = None
    on_write: Callable[[str, str], None] = lambda source, outcome: None
    on_reroute: Callable[[str, str], None] = lambda source, stage: None
    _actors: dict[str, str | None] = field(default_factory=dict)

    def own_actor(self, source: str) -> str | None:
        if source not in self._actors and source in self.writers:
            self._actors[source] = self.writers[source].own_actor()
        return self._actors.get(source)


def handle(parts: LoopParts, claimed: Claimed) -> str:
    """The outcome of one claimed event (stored with it); raises ``WriteFailed`` to retry."""
    event = WebhookEvent.from_dict(claimed.payload)
    if event.kind == "created":
        return _route(parts, event, claimed)
    return _learn(parts, event, claimed.id)


def event_ticket(event: WebhookEvent) -> Ticket:
    return Ticket(id=event.ticket_id, source=event.source, subject=event.subject,
                  body=event.body, customer_ref=event.customer_ref,
                  created_at=event.occurred_at or datetime.now(UTC),
                  priority=event.priority,  # type: ignore[arg-type]
                  metadata={"ticket_ref": event.ticket_ref, "via": "webhook"})


def _route(parts: LoopParts, event: WebhookEvent, claimed: Claimed) -> str:
    """Classify and write back, holding the ticket's write lock throughout: another event
    for the same ticket (the pull and a webhook, two subscriptions) waits its turn."""
    with ticket_lock(parts.db, event.source, event.ticket_ref) as mine:
        if not mine:
            raise WriteFailed("another worker is writing this ticket now", retryable=True,
                              retry_after=_BUSY_RETRY_S)
        return _route_locked(parts, event, claimed)


def _route_locked(parts: LoopParts, event: WebhookEvent, claimed: Claimed) -> str:
    ticket = event_ticket(event)
    with parts.db.begin() as conn:  # one round trip: the record, and the ticket if new
        existing = writeback_for(conn, event.source, event.ticket_ref)
        if existing is None:
            upsert_tickets(conn, [ticket], origin=event.source)
    if existing is not None and existing.status == "sent":
        return "already-routed"
    writer = parts.writers.get(event.source)
    if existing is None:
        decision = parts.classify(ticket)
        if writer is None:
            log.warning("%s: no write-back credentials; %s classified, not written back",
                        event.source, event.ticket_id)
            return "classified-not-written"
        with parts.db.begin() as conn:
            row = start_writeback(conn, _writeback_row(parts.routing, event, decision,
                                                       claimed.id))
        fresh = True  # recorded just now, under the lock: it cannot have been sent
    elif writer is None:
        return "classified-not-written"
    else:
        row, fresh = existing, False
    if not fresh and writer.already_written(row.ticket_ref, row.marker):
        outcome = "found-written"
    else:
        if not fresh:
            row = _as_mapped_now(parts, row)
        writer.write(_routing_of(row))
        outcome = "review" if row.review else "routed"
    with parts.db.begin() as conn:
        mark_sent(conn, row.id)
    parts.on_write(event.source, outcome)
    return outcome


def _targets(routing: RoutingMap, source: str, label: str | None, department: str | None,
             urgency: str, review: bool) -> tuple[str | None, str | None, list[str]]:
    """Group, vendor priority and tags for a decision, from the routing map."""
    vendor = routing.vendor(source)
    group = vendor.review_group if review else vendor.group_for(label, department)
    tags = [routing.routed_tag] + ([routing.review_tag] if review else [])
    return group, vendor.urgency.get(urgency), tags


def _as_mapped_now(parts: LoopParts, row: WritebackRow) -> WritebackRow:
    """A write not sent yet goes where the routing map says now: a dead letter replayed
    after an analyst fixed the map must not fail on the old group again."""
    group, priority, tags = _targets(parts.routing, row.source, row.label, row.department,
                                     row.urgency, row.review)
    if (group, priority, tags) == (row.group_value, row.priority_value, row.tags):
        return row
    with parts.db.begin() as conn:
        update_unsent(conn, row.id, group, priority, tags)
    return replace(row, group_value=group, priority_value=priority, tags=tags)


def _writeback_row(routing: RoutingMap, event: WebhookEvent, decision: Decision,
                   event_id: int) -> dict[str, Any]:
    review = decision.stage == "review"
    marker = marker_for(f"{event.source}-{uuid.uuid4().hex[:16]}")
    group, priority, tags = _targets(routing, event.source, decision.label,
                                     decision.department, decision.urgency, review)
    return {"event_id": event_id, "source": event.source, "ticket_id": event.ticket_id,
            "ticket_ref": event.ticket_ref, "marker": marker, "stage": decision.stage,
            "label": decision.label, "department": decision.department,
            "confidence": float(decision.confidence), "model_version": decision.model_version,
            "review": review, "urgency": decision.urgency, "group_value": group,
            "priority_value": priority, "tags": tags,
            "note": routing_note(decision, marker, review=review)}


def _routing_of(row: WritebackRow) -> Routing:
    return Routing(ticket_ref=row.ticket_ref, group=row.group_value,
                   priority=row.priority_value, tags=tuple(row.tags), note=row.note,
                   marker=row.marker, review=row.review)


def _learn(parts: LoopParts, event: WebhookEvent, event_id: int) -> str:
    """An update: a person's change of the routed group or priority is a correction; the
    product's own write coming back is not. While our write is still on its way, the
    update waits (it would otherwise be compared with nothing and lost)."""
    if "group" not in event.changes and "priority" not in event.changes:
        return "no-routed-change"
    with parts.db.begin() as conn:
        row = writeback_for(conn, event.source, event.ticket_ref)
    if row is None:
        return "not-routed"
    if row.status != "sent":
        raise WriteFailed("the routing of this ticket is not written back yet",
                          retryable=True, retry_after=_BUSY_RETRY_S)
    outcomes = []
    if "group" in event.changes:
        outcomes.append(_group_change(parts, event, event_id, row))
    if "priority" in event.changes:
        outcomes.append(_priority_change(parts, event, event_id, row))
    return "+".join(dict.fromkeys(outcomes))


def _by_us(parts: LoopParts, event: WebhookEvent) -> bool:
    return event.actor is not None and event.actor == parts.own_actor(event.source)


def _group_change(parts: LoopParts, event: WebhookEvent, event_id: int,
                  row: WritebackRow) -> str:
    new = event.changes.get("group")
    new = str(new) if new not in (None, "") else None
    if new == row.group_value or _by_us(parts, event):
        return "own-write"
    label, department = (parts.routing.vendor(event.source).back(new) if new
                         else (None, None))
    if not _record(parts, event, event_id, row, "group", row.group_value, new, label,
                   department):
        return "correction-seen"
    if not row.review:
        parts.on_reroute(event.source, row.stage)
    if label is not None and parts.learn is not None:
        parts.learn(row.ticket_id, label, f"{event.source}:{event.actor or 'agent'}")
    return "correction-label" if label else "correction"


def _priority_change(parts: LoopParts, event: WebhookEvent, event_id: int,
                     row: WritebackRow) -> str:
    """An urgency correction: recorded, not a reroute (the route was not changed)."""
    ours = str(event.changes.get("priority") or "")
    as_written = parts.routing.vendor(event.source).urgency.get(ours, ours)
    if row.priority_value is None or as_written == row.priority_value or _by_us(parts, event):
        return "own-write"
    seen = _record(parts, event, event_id, row, "priority", row.priority_value, ours, None,
                   None)
    return "correction-priority" if seen else "correction-seen"


def _record(parts: LoopParts, event: WebhookEvent, event_id: int, row: WritebackRow,
            field: str, written: str | None, corrected: str | None, label: str | None,
            department: str | None) -> bool:
    with parts.db.begin() as conn:
        return record_correction(conn, {
            "event_id": event_id, "writeback_id": row.id, "source": event.source,
            "ticket_id": row.ticket_id, "field": field, "written": written,
            "corrected": corrected, "actor": event.actor, "stage": row.stage,
            "label": row.label, "department": row.department, "corrected_label": label,
            "corrected_department": department})
