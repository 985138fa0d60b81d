"""Signed Jira webhook deliveries for tests, built from the Jira stand-in's state.

Shaped as Atlassian's "Webhooks" page documents them (developer.atlassian.com/cloud/jira/
platform/webhooks/): the body has ``timestamp`` (Unix ms), ``webhookEvent``,
``issue_event_type_name``, ``user``, ``issue`` (``id``, ``key``, ``fields``) and, for an update,
``changelog.items`` (``field``, ``fieldtype``, ``fieldId``, ``from``, ``fromString``, ``to``,
``toString``); the headers carry ``X-Hub-Signature: sha256=<hex HMAC-SHA256 of the body>``
("Secure admin webhooks") and ``X-Atlassian-Webhook-Identifier`` (the same on every retry).
A JSM request type change is listed under its portal key and name, as Jira lists it.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Sequence
from typing import Any

AGENT_ID = "557058:f58131cb-b67d-43c7-b30d-6b58d40bd077"
CUSTOMER_ID = "5b10ac8d82e05b22cc7d4ef5"


def adf(text: str) -> dict[str, Any]:
    """Plain text as the Atlassian Document Format Jira's v3 API and webhooks carry."""
    return {"type": "doc", "version": 1, "content": [
        {"type": "paragraph", "content": [{"type": "text", "text": line}]}
        for line in text.splitlines() if line]}


class JiraWebhooks:
    """Mixed into ``JiraStandIn``: uses its ``issues``, ``ids``, ``group_field`` and helpers."""

    issues: dict[str, dict[str, Any]]
    ids: dict[str, str]
    url: str
    group_field: str
    request_type_field: str
    webhook_secret: str

    def _add(self, key: str, fields: dict[str, Any], issue_id: str | None = None) -> None:
        raise NotImplementedError

    def group_of(self, key: str) -> str | None:
        raise NotImplementedError

    def _group_value(self, group: str) -> Any:
        raise NotImplementedError

    def webhook(self, event: str, key: str, *, actor: str | None = None,
                group: str | None = None, priority: str | None = None,
                labels: Sequence[str] | None = None, status: str | None = None,
                summary: str = "", description: str = "", identifier: str | None = None,
                timestamp_ms: int | None = None, secret: str | None = None,
                ) -> tuple[dict[str, str], bytes]:
        """A signed delivery as Jira sends it: ``(headers, raw body)``, headers spelt as Jira
        spells them. ``event`` "created" (a new issue, added to the state), "updated" (the
        given group/priority/labels/status changed by ``actor``, applied to the state and
        listed in the changelog) or any other ``webhookEvent`` (e.g. "comment_created")."""
        payload: dict[str, Any] = {
            "timestamp": timestamp_ms if timestamp_ms is not None else int(time.time() * 1000),
            "webhookEvent": {"created": "jira:issue_created",
                             "updated": "jira:issue_updated"}.get(event, event)}
        if event == "created":
            fields = {"summary": summary, "description": adf(description) if description
                      else None, "priority": {"name": priority or "Medium"},
                      "reporter": {"accountId": CUSTOMER_ID, "accountType": "customer"},
                      "status": {"name": "Waiting for support"}, "labels": list(labels or [])}
            self._add(key, fields)
            if group is not None:
                fields[self.group_field] = self._group_value(group)
            payload["issue_event_type_name"] = "issue_created"
            payload["user"] = _user(actor or CUSTOMER_ID)
        elif event == "updated":
            payload["issue_event_type_name"] = "issue_generic" if status else "issue_updated"
            payload["user"] = _user(actor or AGENT_ID)
            payload["changelog"] = {"id": str(uuid.uuid4().int % 10**6),
                                    "items": self._changes(key, group, priority, labels, status)}
        else:
            payload["user"] = _user(actor or AGENT_ID)
            if event.startswith("comment_"):
                payload["comment"] = {"id": "10100", "body": "Any news?",
                                      "author": _user(actor or CUSTOMER_ID)}
        if key in self.issues:
            payload["issue"] = {"id": self.ids[key], "key": key,
                                "self": f"{self.url}/rest/api/3/issue/{self.ids[key]}",
                                "fields": copy.deepcopy(self.issues[key])}
        raw = json.dumps(payload, separators=(",", ":")).encode("utf-8")
        digest = hmac.new((secret or self.webhook_secret).encode(), raw, hashlib.sha256)
        return {"Content-Type": "application/json; charset=UTF-8",
                "X-Atlassian-Webhook-Identifier": identifier or str(uuid.uuid4()),
                "X-Atlassian-Webhook-Flow": "Primary",
                "X-Hub-Signature": f"sha256={digest.hexdigest()}"}, raw

    def _changes(self, key: str, group: str | None, priority: str | None,
                 labels: Sequence[str] | None, status: str | None) -> list[dict[str, Any]]:
        """Apply an agent's edit to the state; the changelog items Jira would list for it."""
        fields, items = self.issues[key], []
        if group is not None:
            old = self.group_of(key)
            rt = self.group_field == self.request_type_field
            items.append({"field": "Customer Request Type" if rt else "Group",
                          "fieldtype": "custom", "fieldId": self.group_field,
                          "from": (f"help/rt{old}" if rt else old) if old else None,
                          "fromString": f"Request type {old}" if old else None,
                          "to": f"help/rt{group}" if rt else group,
                          "toString": f"Request type {group}" if rt else f"Group {group}"})
            fields[self.group_field] = self._group_value(group)
        if priority is not None:
            old = (fields.get("priority") or {}).get("name")
            items.append({"field": "priority", "fieldtype": "jira", "fieldId": "priority",
                          "from": None, "fromString": old, "to": None, "toString": priority})
            fields["priority"] = {"name": priority}
        if labels is not None:
            items.append({"field": "labels", "fieldtype": "jira", "fieldId": "labels",
                          "from": None, "fromString": " ".join(fields["labels"]),
                          "to": None, "toString": " ".join(labels)})
            fields["labels"] = list(labels)
        if status is not None:
            items.append({"field": "status", "fieldtype": "jira", "fieldId": "status",
                          "from": "10001", "fromString": (fields.get("status") or {}).get("name"),
                          "to": "10002", "toString": status})
            fields["status"] = {"name": status}
        return items




def _user(account_id: str) -> dict[str, Any]:
    return {"accountId": account_id, "active": True,
            "accountType": "customer" if account_id == CUSTOMER_ID else "atlassian"}
