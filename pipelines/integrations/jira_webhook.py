"""Jira Cloud / Jira Service Management admin webhooks -> ``WebhookEvent``.

An admin webhook registered with a secret is signed ``X-Hub-Signature: sha256=<hex>`` (the
HMAC-SHA256 of the raw body; Atlassian "Webhooks" page, "Secure admin webhooks"). Jira
signs no timestamp, and its retry policy redelivers a failed webhook for up to about
30 minutes, longer than the replay window, so there is no freshness check here: a
redelivery carries the same ``X-Atlassian-Webhook-Identifier`` (the id "Get failed
webhooks" reports), which is the event key, so the queue's dedup absorbs it.

``jira:issue_created`` is a ticket to route. ``jira:issue_updated`` matters only when its
changelog touches a routed field: the configured group field, ``priority`` or ``labels``;
every other event (comments, status changes, deletions, projects...) is acknowledged as one
``ignored`` event. The group's value is read from the issue as it is after the change, the
same way for created and updated events (``group_value``), because the changelog names a
request type by its portal key and display name, not by the id the REST API writes.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pipelines.connectors.jira_sm import PRIORITY, adf_to_text
from pipelines.integrations.events import WebhookEvent, WebhookRejected, parse_body
from pipelines.integrations.signatures import body_key, check_hex

SOURCE = "jira"
SIGNATURE_HEADER = "x-hub-signature"
IDENTIFIER_HEADER = "x-atlassian-webhook-identifier"
CREATED, UPDATED = "jira:issue_created", "jira:issue_updated"


def parse_webhook(headers: Mapping[str, str], body: bytes, secret: str, *,
                  max_skew_s: float = 300, now: float | None = None,
                  group_field: str | None = None) -> list[WebhookEvent]:
    """One verified Jira delivery as events (always exactly one), or ``WebhookRejected``.

    ``max_skew_s`` and ``now`` are accepted for the common vendor signature but unused:
    Jira signs no timestamp and redelivers later than any sane skew (see the module doc).
    ``group_field`` is the field id routing writes (``jira.group_field`` in the routing map).
    """
    del max_skew_s, now
    lower = {k.lower(): v for k, v in headers.items()}
    check_hex(secret, body, lower.get(SIGNATURE_HEADER), prefix="sha256=")
    data = parse_body(body)
    event_type = data.get("webhookEvent")
    if not isinstance(event_type, str) or not event_type:
        raise WebhookRejected(422, "webhookEvent missing or not a string")
    key = (lower.get(IDENTIFIER_HEADER) or "").strip() or body_key(SOURCE, body)
    common = {"source": SOURCE, "event_key": key, "event_type": event_type,
              "occurred_at": _when(data.get("timestamp")), "actor": _account(data.get("user"))}
    if event_type == CREATED:
        return [_created(data, common, group_field)]
    if event_type == UPDATED:
        return [_updated(data, common, group_field)]
    return [_ignored(data, common)]


def _issue(data: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The issue object and its key as text; 422 naming the field when either is unusable."""
    issue = data.get("issue")
    if not isinstance(issue, dict):
        raise WebhookRejected(422, "issue missing or not an object")
    key = _ident(issue.get("key"), "issue.key", required=True)
    _ident(issue.get("id"), "issue.id", required=False)
    return issue, key


def _ident(value: Any, name: str, *, required: bool) -> str:
    """An id as text: Jira sends strings, a number is read as the same id."""
    if isinstance(value, bool) or (not isinstance(value, (str, int)) and value is not None):
        raise WebhookRejected(422, f"{name} must be a string or an integer, "
                                   f"not {type(value).__name__}")
    text = str(value).strip() if value is not None else ""
    if required and not text:
        raise WebhookRejected(422, f"{name} missing")
    return text


def _fields(issue: dict[str, Any]) -> dict[str, Any]:
    fields = issue.get("fields")
    if fields is None:
        return {}
    if not isinstance(fields, dict):
        raise WebhookRejected(422, "issue.fields must be an object")
    return fields


def _created(data: dict[str, Any], common: dict[str, Any],
             group_field: str | None) -> WebhookEvent:
    issue, key = _issue(data)
    fields = _fields(issue)
    subject = _text(fields.get("summary"))
    text = adf_to_text(fields.get("description"))
    if not (subject or text):
        raise WebhookRejected(422, f"issue {key}: no text to classify "
                                   "(summary and description are both empty)")
    return WebhookEvent(
        **common, kind="created", ticket_ref=key, ticket_id=f"jira-{key}", subject=subject,
        body=text, priority=PRIORITY.get(_name(fields.get("priority")).lower(), "normal"),
        group=group_value(fields.get(group_field)) if group_field else None,
        customer_ref=_account(fields.get("reporter")))


def _updated(data: dict[str, Any], common: dict[str, Any],
             group_field: str | None) -> WebhookEvent:
    issue, key = _issue(data)
    changes: dict[str, Any] = {}
    for item in _items(data):
        field = {item.get("fieldId"), item.get("field")}
        if group_field and group_field in field:
            new = group_value(_fields(issue).get(group_field))
            changes["group"] = new if new is not None else _changed_to(item)
        elif "priority" in field:
            changes["priority"] = PRIORITY.get(_text(item.get("toString")).lower(), "normal")
        elif "labels" in field:
            changes["labels"] = _text(item.get("toString")).split()
    if not changes:
        return WebhookEvent(**common, kind="ignored", ticket_ref=key, ticket_id=f"jira-{key}")
    return WebhookEvent(**common, kind="updated", ticket_ref=key, ticket_id=f"jira-{key}",
                        changes=changes)


def _ignored(data: dict[str, Any], common: dict[str, Any]) -> WebhookEvent:
    """Acknowledged and counted; the issue key when the event carries a usable one."""
    issue = data.get("issue")
    raw = issue.get("key") if isinstance(issue, dict) else None
    key = str(raw).strip() if isinstance(raw, (str, int)) and not isinstance(raw, bool) else ""
    return WebhookEvent(**common, kind="ignored", ticket_ref=key,
                        ticket_id=f"jira-{key}" if key else "")


def _items(data: dict[str, Any]) -> list[dict[str, Any]]:
    changelog = data.get("changelog")
    items = changelog.get("items") if isinstance(changelog, dict) else None
    return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []


def group_value(value: Any) -> str | None:
    """The group a field holds, as the text the routing map and ``JiraWriter`` use.

    A JSM request type field holds ``{"requestType": {"id": "11", ...}, ...}`` -> ``"11"``
    (the id its REST edit takes); a select list or team field ``{"id": ..., "value"/"name"}``
    -> its id; a plain text or number field -> itself; empty -> None.
    """
    if isinstance(value, list):
        value = value[0] if value else None
    if isinstance(value, dict):
        inner = value.get("requestType")
        if isinstance(inner, dict):
            value = inner
        for name in ("id", "value", "name"):
            found = value.get(name)
            if isinstance(found, (str, int)) and not isinstance(found, bool) and str(found):
                return str(found).strip()
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    return str(value).strip() or None


def _changed_to(item: dict[str, Any]) -> str | None:
    """The new value as the changelog gives it: the id (``to``), else its display text."""
    return _text(item.get("to")) or _text(item.get("toString")) or None


def _account(user: Any) -> str | None:
    if not isinstance(user, dict):
        return None
    return _text(user.get("accountId")) or None


def _name(value: Any) -> str:
    return _text(value.get("name")) if isinstance(value, dict) else ""


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _when(millis: Any) -> datetime | None:
    """The body's ``timestamp`` (Unix milliseconds) as UTC; None when absent or odd."""
    if isinstance(millis, bool) or not isinstance(millis, (int, float)):
        return None
    try:
        return datetime.fromtimestamp(millis / 1000, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None
