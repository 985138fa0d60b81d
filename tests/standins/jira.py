"""A Jira Cloud + Jira Service Management stand-in: pull endpoints, write-back, webhooks.

Serves what the hourly pull connector reads (the recorded pages in tests/fixtures/connectors)
and what ``JiraWriter`` writes, holding the issues and their comments as state, and builds
signed webhook deliveries the way Jira sends them. Contract sources, by route:

- ``GET /rest/servicedeskapi/servicedesk/{id}``: JSM REST "Get service desk by id"
- ``GET /rest/api/3/myself``: Jira platform REST v3 "Get current user"
- ``GET /rest/api/3/search/jql``: REST v3 "Search for issues using JQL enhanced search (GET)";
  ``jql`` required; without ``fields`` Jira answers ids only; paged by ``nextPageToken``
- ``PUT /rest/api/3/issue/{key}``: REST v3 "Edit issue" (204; 400 ``errorMessages``/``errors``;
  404 "Issue does not exist or you do not have permission to see it.")
- ``POST``/``GET /rest/servicedeskapi/request/{key}/comment``: JSM REST "Create request
  comment" (201) and "Get request comments" (``public``, ``internal``, ``start``, ``limit``;
  a page of ``values`` with ``isLastPage``)
- 401 for bad basic auth: "Basic auth for REST APIs" (the recorded jira_401.json)
- webhooks: Jira platform "Webhooks" (payload shape, ``X-Hub-Signature``,
  ``X-Atlassian-Webhook-Identifier``)

Every refusal is also a ``violation``: a correct client never causes one.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import re
import time
import uuid
from collections.abc import Sequence
from typing import Any

from tests.conftest import FIXTURES
from tests.standins.base import Reply, Request, StandIn

RECORDED = FIXTURES / "connectors"
ACCOUNT_ID = "5b10a2844c20165700ede21g"       # the integration user (jira_myself.json)
AGENT_ID = "557058:f58131cb-b67d-43c7-b30d-6b58d40bd077"
CUSTOMER_ID = "5b10ac8d82e05b22cc7d4ef5"
PAGE_TOKEN = "CAEaAggD"                        # page 1's nextPageToken
PRIORITIES = ("Highest", "High", "Medium", "Low", "Lowest")
EDITABLE = {"summary", "description", "priority", "labels"}
ISSUE_404 = {"errorMessages": ["Issue does not exist or you do not have permission to see it."],
             "errors": {}}


def recorded(name: str) -> Reply:
    rec = json.loads((RECORDED / name).read_text(encoding="utf-8"))
    body = rec["body"].encode("utf-8") if isinstance(rec["body"], str) else rec["body"]
    return Reply(rec["status"], body, dict(rec["headers"]))


def adf(text: str) -> dict[str, Any]:
    """Plain text as the Atlassian Document Format Jira's v3 API and webhooks carry."""
    return {"type": "doc", "version": 1, "content": [
        {"type": "paragraph", "content": [{"type": "text", "text": line}]}
        for line in text.splitlines() if line]}


class JiraStandIn(StandIn):
    """Jira with one service desk (id 10, project HELP) and the recorded issues HELP-1..4."""

    def __init__(self, user: str = "bot@acme.example", secret: str = "atl-token", *,
                 service_desk_id: str = "10", group_field: str = "customfield_10010",
                 request_type_field: str = "customfield_10010",
                 groups: Sequence[str] = tuple(str(n) for n in range(10, 20)),
                 webhook_secret: str = "jira-webhook-secret", comment_page: int = 50) -> None:
        super().__init__("jira")
        self.auth = "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()
        self.service_desk_id = service_desk_id
        self.group_field, self.request_type_field = group_field, request_type_field
        self.groups = set(groups)
        self.webhook_secret = webhook_secret
        self.comment_page = comment_page
        self.issues: dict[str, dict[str, Any]] = {}
        self.ids: dict[str, str] = {}
        self.comments: dict[str, list[dict[str, Any]]] = {}
        for page in ("jira_search_page1.json", "jira_search_page2.json"):
            for issue in recorded(page).body["issues"]:
                self._add(issue["key"], copy.deepcopy(issue["fields"]), issue["id"])
        self.route("GET", r"/rest/servicedeskapi/servicedesk/(?P<id>[^/]+)", self._desk)
        self.route("GET", r"/rest/api/3/myself", self._myself)
        self.route("GET", r"/rest/api/3/search/jql", self._search)
        self.route("PUT", r"/rest/api/3/issue/(?P<key>[^/]+)", self._edit)
        self.route("POST", r"/rest/servicedeskapi/request/(?P<key>[^/]+)/comment", self._comment)
        self.route("GET", r"/rest/servicedeskapi/request/(?P<key>[^/]+)/comment", self._comments)

    # -- state ---------------------------------------------------------------------------
    def _add(self, key: str, fields: dict[str, Any], issue_id: str | None = None) -> None:
        fields.setdefault("labels", [])
        fields.setdefault(self.group_field, None)
        self.issues[key] = fields
        self.ids[key] = issue_id or str(10000 + len(self.ids) + 1)
        self.comments.setdefault(key, [])

    def group_of(self, key: str) -> str | None:
        """The group id the issue's group field holds now."""
        value = self.issues[key].get(self.group_field)
        if isinstance(value, dict):
            return (value.get("requestType") or value).get("id")
        return value

    def _group_value(self, group: str) -> Any:
        if self.group_field == self.request_type_field:
            return {"requestType": {"id": group, "name": f"Request type {group}",
                                    "serviceDeskId": self.service_desk_id},
                    "currentStatus": {"status": "Waiting for support"}}
        return {"self": f"{self.url}/rest/api/3/customFieldOption/{group}",
                "value": f"Group {group}", "id": group}

    # -- checks --------------------------------------------------------------------------
    def refuse(self, req: Request, status: int, body: Any, why: str) -> Reply:
        self.violation(f"{req.method} {req.path}: {why}")
        return Reply(status, body)

    def _denied(self, req: Request) -> Reply | None:
        if req.header("authorization") == self.auth:
            return None
        self.violation(f"{req.method} {req.path}: bad or missing basic auth")
        return recorded("jira_401.json")

    def _body(self, req: Request) -> Any:
        try:
            return json.loads(req.body) if req.body else None
        except ValueError:
            return None

    # -- pull endpoints ------------------------------------------------------------------
    def _desk(self, req: Request, m: re.Match[str]) -> Reply:
        if (denied := self._denied(req)) is not None:
            return denied
        if m["id"] not in (self.service_desk_id, "HELP"):
            return self.refuse(req, 404, {"errorMessage": "Service desk does not exist"},
                               f"unknown service desk {m['id']}")
        return recorded("jira_servicedesk.json")

    def _myself(self, req: Request, m: re.Match[str]) -> Reply:
        return self._denied(req) or recorded("jira_myself.json")

    def _search(self, req: Request, m: re.Match[str]) -> Reply:
        if (denied := self._denied(req)) is not None:
            return denied
        q = req.query
        if not q.get("jql"):
            return self.refuse(req, 400, {"errorMessages": ["jql is required"], "errors": {}},
                               "search without jql")
        if "maxResults" in q and not q["maxResults"].isdigit():
            return self.refuse(req, 400, {"errorMessages": ["maxResults must be a number"],
                                          "errors": {}}, "maxResults not a number")
        token = q.get("nextPageToken")
        if token not in (None, PAGE_TOKEN):
            return self.refuse(req, 400, {"errorMessages": ["Invalid nextPageToken"],
                                          "errors": {}}, f"unknown nextPageToken {token!r}")
        reply = recorded(f"jira_search_page{1 if token is None else 2}.json")
        if not q.get("fields"):
            # Jira returns only the ids when fields is not given.
            self.violation("GET /rest/api/3/search/jql: no fields (ids only)")
            reply.body = {**reply.body, "issues": [{"id": i["id"]} for i in reply.body["issues"]]}
        return reply

    # -- write-back ----------------------------------------------------------------------
    def _edit(self, req: Request, m: re.Match[str]) -> Reply:
        if (denied := self._denied(req)) is not None:
            return denied
        key = m["key"]
        if key not in self.issues:
            return self.refuse(req, 404, ISSUE_404, f"unknown issue {key}")
        body = self._body(req)
        if not isinstance(body, dict) or not set(body) <= {"fields", "update"} or not body:
            return self.refuse(req, 400, {"errorMessages": ["Can not deserialize the body"],
                                          "errors": {}}, "edit body is not fields/update")
        fields, update = body.get("fields") or {}, body.get("update") or {}
        errors = self._field_errors(fields) | self._update_errors(update, fields)
        if errors:
            return self.refuse(req, 400, {"errorMessages": [], "errors": errors},
                               f"edit refused: {errors}")
        issue = self.issues[key]
        for name, value in fields.items():
            issue[name] = self._group_value(value if isinstance(value, str) else value["id"]) \
                if name == self.group_field else value
        for op in update.get("labels", []):
            verb, value = next(iter(op.items()))
            labels = issue["labels"]
            if verb == "add" and value not in labels:
                labels.append(value)
            elif verb == "remove" and value in labels:
                labels.remove(value)
            elif verb == "set":
                issue["labels"] = list(value)
        self.paused()
        return Reply(204)

    def _field_errors(self, fields: Any) -> dict[str, str]:
        if not isinstance(fields, dict):
            return {"fields": "fields must be an object"}
        errors: dict[str, str] = {}
        for name, value in fields.items():
            if name == self.group_field:
                given = value if self.group_field == self.request_type_field else (
                    value.get("id") if isinstance(value, dict) else None)
                if not isinstance(given, str) or given not in self.groups:
                    errors[name] = f"Option value {value!r} is not valid for field {name}"
            elif name == "priority":
                if not isinstance(value, dict) or value.get("name") not in PRIORITIES:
                    errors[name] = f"Specify a valid priority; got {value!r}"
            elif name not in EDITABLE:
                errors[name] = (f"Field '{name}' cannot be set. It is not on the appropriate "
                                "screen, or unknown.")
        return errors

    def _update_errors(self, update: Any, fields: dict[str, Any]) -> dict[str, str]:
        if not isinstance(update, dict):
            return {"update": "update must be an object"}
        errors = {n: f"Field '{n}' cannot be set in both fields and update"
                  for n in set(update) & set(fields)}
        for name, ops in update.items():
            if name != "labels":
                errors[name] = f"Field '{name}' cannot be set. It is not on the appropriate " \
                               "screen, or unknown."
                continue
            for op in ops if isinstance(ops, list) else [None]:
                if not isinstance(op, dict) or len(op) != 1 or \
                        next(iter(op)) not in ("add", "remove", "set"):
                    errors["labels"] = f"unsupported update operation {op!r}"
                elif next(iter(op)) != "set" and (not isinstance(op[next(iter(op))], str)
                                                  or " " in op[next(iter(op))]):
                    errors["labels"] = f"The label {op!r} is not valid (no spaces)."
        return errors

    def _comment(self, req: Request, m: re.Match[str]) -> Reply:
        if (denied := self._denied(req)) is not None:
            return denied
        key = m["key"]
        if key not in self.issues:
            return self.refuse(req, 404, {"errorMessage": "Request does not exist or you do "
                                          "not have permission to see it."}, f"unknown {key}")
        body = self._body(req)
        if not isinstance(body, dict) or not isinstance(body.get("body"), str) \
                or not body["body"].strip() or not isinstance(body.get("public", True), bool):
            return self.refuse(req, 400, {"errorMessage": "The comment body is required."},
                               "comment without a body text or with a non-boolean public")
        now = int(time.time() * 1000)
        comment = {"id": str(len(self.comments[key]) + 1), "body": body["body"],
                   "public": body.get("public", True),
                   "author": {"accountId": ACCOUNT_ID, "displayName": "CCA ingest"},
                   "created": {"epochMillis": now}}
        self.comments[key].append(comment)
        self.paused()
        return Reply(201, comment)

    def _comments(self, req: Request, m: re.Match[str]) -> Reply:
        if (denied := self._denied(req)) is not None:
            return denied
        key, q = m["key"], req.query
        if key not in self.issues:
            return self.refuse(req, 404, {"errorMessage": "Request does not exist or you do "
                                          "not have permission to see it."}, f"unknown {key}")
        if not all(q.get(n, "0").isdigit() for n in ("start", "limit")):
            return self.refuse(req, 400, {"errorMessage": "start and limit must be numbers"},
                               "start/limit not numbers")
        public, internal = q.get("public", "true") == "true", q.get("internal", "true") == "true"
        chosen = [c for c in self.comments[key] if (public if c["public"] else internal)]
        start = int(q.get("start", "0"))
        limit = min(int(q.get("limit", str(self.comment_page))) or 1, self.comment_page)
        values = chosen[start:start + limit]
        return Reply(200, {"_expands": [], "size": len(values), "start": start, "limit": limit,
                           "isLastPage": start + len(values) >= len(chosen), "values": values,
                           "_links": {"base": self.url, "context": ""}})

    # -- webhooks ------------------------------------------------------------------------
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
