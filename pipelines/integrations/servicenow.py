"""ServiceNow: incident webhooks in, routing written back through the Table API.

ServiceNow has no signed outbound webhook of its own, so the project defines one and ships
the Business Rule that sends it (docs/integrations/servicenow.md): ``X-CCA-Timestamp`` (Unix
seconds) and ``X-CCA-Signature: sha256=<hex HMAC-SHA256 of timestamp "." raw body>``. The
signature covers the timestamp so a captured delivery cannot be replayed with a new one.
The body carries no event id, so a delivery is keyed by its body: a redelivery of the same
change is the same event, whatever its timestamp header says.

Write-back is one ``PATCH /api/now/table/incident/{sys_id}`` setting ``assignment_group``,
``urgency`` and an internal ``work_notes`` entry. Incidents have no tag field in the Table
API, so the routed/review tags are written as the note's first line, where agents and
reports can search them. ServiceNow silently skips a field the integration user may not
write (a field ACL) and still answers 200, so the answer is compared with what was sent.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from pipelines.connectors.base import parse_time
from pipelines.integrations.events import WebhookEvent, WebhookRejected, parse_body
from pipelines.integrations.signatures import body_key, check_fresh, check_hex, unix_seconds
from pipelines.integrations.writeback import Routing, VendorHttp, WriteFailed

SOURCE = "servicenow"
TIMESTAMP_HEADER = "x-cca-timestamp"
SIGNATURE_HEADER = "x-cca-signature"
# Incident urgency: 1 High, 2 Medium, 3 Low (ours has no "critical" to come back as).
URGENCY = {"1": "high", "2": "normal", "3": "low"}
# The incident fields the product routes, by the name WebhookEvent.changes uses.
ROUTED = {"assignment_group": "group", "urgency": "priority"}
TABLE = "/api/now/table/incident"
JOURNAL = "/api/now/table/sys_journal_field"
WRITE_FIELDS = "sys_id,number,assignment_group,urgency"
_SAFE_REF = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

# --- webhook --------------------------------------------------------------------------------

def parse_webhook(headers: Mapping[str, str], body: bytes, secret: str, *,
                  max_skew_s: float = 300, now: float | None = None,
                  **vendor_kw: Any) -> list[WebhookEvent]:
    """One verified Business Rule delivery as events (always exactly one).

    The signature is checked before anything else is read, so an unsigned body is never
    parsed; then the timestamp's freshness, then the JSON, then its fields.
    """
    low = {k.lower(): v for k, v in headers.items()}
    stamp = low.get(TIMESTAMP_HEADER) or ""
    check_hex(secret, stamp.encode("utf-8") + b"." + body, low.get(SIGNATURE_HEADER))
    check_fresh(unix_seconds(stamp) if stamp.strip().isdigit() else None, max_skew_s, now)
    data = parse_body(body)
    return [_event(data, body_key(SOURCE, body))]


def _event(data: dict[str, Any], key: str) -> WebhookEvent:
    sys_id = _ident(data, "sys_id")
    number = _ident(data, "number")
    operation = data.get("operation")
    if not isinstance(operation, str) or not operation:
        raise WebhookRejected(422, "operation must be 'insert' or 'update'")
    subject, text = _text(data, "short_description"), _text(data, "description")
    urgency = _text(data, "urgency")
    common: dict[str, Any] = {
        "source": SOURCE, "event_key": key, "event_type": f"incident.{operation}",
        "ticket_ref": sys_id, "ticket_id": f"servicenow-{number}",
        "subject": subject, "body": text, "priority": URGENCY.get(urgency, "normal"),
        "group": _text(data, "assignment_group") or None,
        "customer_ref": _text(data, "caller_id") or None,
        "actor": _text(data, "sys_updated_by") or None,
    }
    if operation == "insert":
        if not (subject or text):
            raise WebhookRejected(422, "no text to classify: short_description and "
                                       "description are both empty")
        when = parse_time(data.get("sys_created_on")) or parse_time(data.get("sys_updated_on"))
        return WebhookEvent(kind="created", occurred_at=when, **common)
    when = parse_time(data.get("sys_updated_on"))
    if operation != "update":
        return WebhookEvent(kind="ignored", occurred_at=when, **common)
    changed = data.get("changed")
    if not isinstance(changed, list) or not all(isinstance(f, str) for f in changed):
        raise WebhookRejected(422, "changed must be a list of incident field names")
    changes: dict[str, Any] = {}
    if "assignment_group" in changed:
        changes["group"] = _text(data, "assignment_group")
    if "urgency" in changed:
        if urgency not in URGENCY:
            raise WebhookRejected(422, f"urgency must be one of 1, 2, 3 (got {urgency!r})")
        changes["priority"] = URGENCY[urgency]
    return WebhookEvent(kind="updated" if changes else "ignored", occurred_at=when,
                        changes=changes, **common)


def _ident(data: dict[str, Any], name: str) -> str:
    """An id field as text: the Business Rule sends strings, a hand-built sender may send
    a number, and both must name the same ticket."""
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        what = "missing" if value is None else f"a {type(value).__name__}"
        raise WebhookRejected(422, f"{name} must be a string or integer id, not {what}")
    text = str(value).strip()
    if not text:
        raise WebhookRejected(422, f"{name} is empty")
    return text


def _text(data: dict[str, Any], name: str) -> str:
    """A string field (reference fields may come as ``{"value": sys_id}``); null is ""."""
    value = data.get(name)
    if isinstance(value, dict):
        value = value.get("value")
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise WebhookRejected(422, f"{name} must be a string, not a {type(value).__name__}")
    return str(value).strip()


# --- write-back -----------------------------------------------------------------------------

class ServiceNowWriter:
    """Routing written to an incident with one Table API PATCH (Basic auth)."""

    source = SOURCE

    def __init__(self, url: str, user: str, password: str,
                 client: httpx.Client | None = None, *, timeout_s: float = 10.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._user = user
        self.http = VendorHttp(SOURCE, url, httpx.BasicAuth(user, password), client,
                               timeout_s=timeout_s, sleep=sleep)

    def write(self, routing: Routing) -> None:
        """PATCH the incident; a field the answer does not echo back was not applied."""
        ref = _checked_ref(routing.ticket_ref)
        fields: dict[str, str] = {}
        if routing.group is not None:
            fields["assignment_group"] = routing.group
        if routing.priority is not None:
            if routing.priority not in URGENCY:
                raise WriteFailed(f"servicenow: urgency must be 1, 2 or 3, not "
                                  f"{routing.priority!r} (check rules/routing.yaml)",
                                  retryable=False)
            fields["urgency"] = routing.priority
        answer = self.http.json(
            "PATCH", f"{TABLE}/{ref}",
            params={"sysparm_fields": WRITE_FIELDS, "sysparm_exclude_reference_link": "true"},
            json={**fields, "work_notes": note_text(routing)})
        result = answer.get("result") if isinstance(answer, dict) else None
        if not isinstance(result, dict):
            raise WriteFailed(f"servicenow PATCH {TABLE}/{ref}: answer has no result object",
                              status=200, retryable=False)
        skipped = [f"{k}={v!r}" for k, v in fields.items() if _value(result.get(k)) != v]
        if skipped:
            raise WriteFailed(f"servicenow PATCH {TABLE}/{ref}: answered 200 but did not "
                              f"apply {', '.join(skipped)} (a field ACL or business rule "
                              "blocks the integration user?)", status=200, retryable=False)

    def already_written(self, ticket_ref: str, marker: str) -> bool:
        """Whether a work note on the incident contains ``marker`` (one row is enough)."""
        ref = _checked_ref(ticket_ref)
        if "^" in marker or not marker:
            raise WriteFailed(f"servicenow: marker {marker!r} cannot be searched in an "
                              "encoded query", retryable=False)
        answer = self.http.json("GET", JOURNAL, params={
            "sysparm_query": f"element_id={ref}^element=work_notes^valueLIKE{marker}",
            "sysparm_fields": "sys_id", "sysparm_limit": "1"})
        rows = answer.get("result") if isinstance(answer, dict) else None
        if not isinstance(rows, list):
            raise WriteFailed(f"servicenow GET {JOURNAL}: answer has no result list",
                              status=200, retryable=False)
        return bool(rows)

    def own_actor(self) -> str | None:
        """The integration user name: what ``sys_updated_by`` holds for our own writes."""
        return self._user

    def close(self) -> None:
        self.http.close()


def note_text(routing: Routing) -> str:
    """The work note: the tags line first (incidents have no tag field), then the note."""
    if not routing.tags:
        return routing.note
    return f"Tags: {' '.join(routing.tags)}\n{routing.note}"


def _checked_ref(ticket_ref: str) -> str:
    """A sys_id safe to put in a URL path; anything else is a broken event, not a retry."""
    if not _SAFE_REF.match(ticket_ref):
        raise WriteFailed(f"servicenow: {ticket_ref!r} is not an incident sys_id",
                          retryable=False)
    return ticket_ref


def _value(field: Any) -> str:
    return str(field.get("value", "")) if isinstance(field, dict) else str(field or "")
