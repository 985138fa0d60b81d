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
- webhooks (``webhook()``, from tests/standins/jira_webhooks.py): Jira platform "Webhooks"

Every refusal is also a ``violation``: a correct client never causes one.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import time
from collections.abc import Sequence
from typing import Any

from tests.conftest import FIXTURES
from tests.standins.base import Reply, Request, StandIn
from tests.standins.jira_webhooks import AGENT_ID, CUSTOMER_ID, JiraWebhooks, adf

__all__ = ["ACCOUNT_ID", "AGENT_ID", "CUSTOMER_ID", "JiraStandIn", "adf", "recorded"]

RECORDED = FIXTURES / "connectors"
ACCOUNT_ID = "5b10a2844c20165700ede21g"       # the integration user (jira_myself.json)
PAGE_TOKEN = "CAEaAggD"                        # page 1's nextPageToken
PRIORITIES = ("Highest", "High", "Medium", "Low", "Lowest")
EDITABLE = {"summary", "description", "priority", "labels"}
REQUEST_404 = {"errorMessage": "Request does not exist or you do not have permission to see it."}
ISSUE_404 = {"errorMessages": ["Issue does not exist or you do not have permission to see it."],
             "errors": {}}


def recorded(name: str) -> Reply:
    rec = json.loads((RECORDED / name).read_text(encoding="utf-8"))
    body = rec["body"].encode("utf-8") if isinstance(rec["body"], str) else rec["body"]
    return Reply(rec["status"], body, dict(rec["headers"]))


class JiraStandIn(JiraWebhooks, StandIn):
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
            if verb == "set":
                issue["labels"] = list(value)
            elif verb == "remove":
                issue["labels"] = [lb for lb in issue["labels"] if lb != value]
            elif value not in issue["labels"]:
                issue["labels"].append(value)
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
        """``update`` verbs Jira takes for labels: add/remove a label (no spaces) or set all."""
        if not isinstance(update, dict):
            return {"update": "update must be an object"}
        errors = {n: f"Field '{n}' cannot be set in both fields and update"
                  for n in set(update) & set(fields)}
        for name, ops in update.items():
            good = name == "labels" and isinstance(ops, list) and all(
                isinstance(op, dict) and len(op) == 1 and _label_op(*next(iter(op.items())))
                for op in ops)
            if not good:
                errors[name] = f"Field '{name}': invalid update {ops!r} (labels have no spaces)"
        return errors

    def _comment(self, req: Request, m: re.Match[str]) -> Reply:
        if (denied := self._denied(req)) is not None:
            return denied
        key = m["key"]
        if key not in self.issues:
            return self.refuse(req, 404, REQUEST_404, f"unknown request {key}")
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
            return self.refuse(req, 404, REQUEST_404, f"unknown request {key}")
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


def _label_op(verb: str, value: Any) -> bool:
    def label(v: Any) -> bool:
        return isinstance(v, str) and bool(v) and " " not in v
    return (verb in ("add", "remove") and label(value)) or (
        verb == "set" and isinstance(value, list) and all(label(v) for v in value))
