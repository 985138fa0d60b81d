"""What a verified webhook becomes: one vendor-neutral event the intake queue stores.

A webhook body is parsed once, at the door, so a malformed one is refused there (4xx) and the
queue only ever holds events the worker can act on. The event carries the ticket's text
because the worker classifies it later; the queue row is deleted by retention like raw text.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal

from cca import strict_json

Source = Literal["zendesk", "jira", "servicenow"]
# created: route it. updated: compare the routed field with what we wrote (a correction?).
# ignored: acknowledged and counted, nothing to do (an event type we do not act on).
Kind = Literal["created", "updated", "ignored"]


def parse_body(body: bytes) -> dict[str, Any]:
    """A webhook body as a JSON object; anything else (NaN included) is a 400."""
    try:
        data = strict_json.loads(body)
    except strict_json.NotJSON as exc:
        raise WebhookRejected(400, str(exc)) from None
    if not isinstance(data, dict):
        raise WebhookRejected(400, "webhook body must be a JSON object")
    return data


class WebhookRejected(Exception):
    """A webhook the service refuses: ``status`` is the HTTP answer, ``message`` says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class WebhookEvent:
    """One vendor event, normalised.

    ``event_key`` is unique per vendor event and identical across the vendor's redeliveries
    (the vendor's event or delivery id, else a hash of the raw body): the queue stores an
    event once per (source, event_key). ``ticket_ref`` is what the vendor's REST API names
    the ticket by (Zendesk ticket id, Jira issue key, ServiceNow incident sys_id);
    ``ticket_id`` is our id, the same one the pull connectors give
    (``zendesk-123``, ``jira-KEY-1``, ``servicenow-INC0010001``).

    ``changes`` holds only routed fields that changed, by our names: ``group`` (Zendesk
    group_id, Jira's configured group field, ServiceNow assignment_group), ``priority``,
    ``tags`` / ``labels`` (the full new list). ``actor`` is who made the change, as the
    vendor names users (Zendesk user id, Jira accountId, ServiceNow user name), when known.
    """

    source: Source
    event_key: str
    kind: Kind
    event_type: str
    ticket_ref: str
    ticket_id: str
    subject: str = ""
    body: str = ""
    priority: str = "normal"
    group: str | None = None
    customer_ref: str | None = None
    actor: str | None = None
    occurred_at: datetime | None = None
    changes: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["occurred_at"] = self.occurred_at.isoformat() if self.occurred_at else None
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WebhookEvent:
        data = dict(data)
        when = data.get("occurred_at")
        data["occurred_at"] = datetime.fromisoformat(when) if when else None
        return cls(**data)
