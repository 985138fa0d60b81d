"""A ServiceNow instance on loopback: the Table API for incidents and their work notes, and
the project's signed Business Rule deliveries (docs/integrations/servicenow.md).

State: ``tickets`` (incident sys_id -> field values, all text as the Table API returns them
with ``sysparm_exclude_reference_link=true``), ``journal`` (sys_journal_field rows) and
``groups`` (the sys_user_group sys_ids a reference may name). It starts with the incidents of
the recorded pages in tests/fixtures/connectors/servicenow_incident_page*.json, so a pull
with ``sysparm_limit=2`` gets exactly those pages back, Link header included.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from pipelines.integrations.mapping import load_routing_map
from tests.conftest import FIXTURES, ROOT
from tests.standins.base import Reply, Request, StandIn

RECORDED = FIXTURES / "connectors"
PAGES = ("servicenow_incident_page1.json", "servicenow_incident_page2.json")
# Incident fields this stand-in knows; a PATCH naming another is refused.
FIELDS = ("sys_id", "number", "short_description", "description", "priority", "state",
          "category", "subcategory", "caller_id", "contact_type", "sys_created_on",
          "sys_updated_on", "sys_updated_by", "assignment_group", "urgency", "impact")
WRITABLE = {"assignment_group", "urgency", "impact", "state", "work_notes", "comments",
            "short_description", "description", "category", "subcategory"}
_TERM = re.compile(r"^(?P<field>[a-z_]+)(?P<op>>=|=|LIKE)(?P<value>.*)$")


def failure(status: int, message: str, detail: str) -> Reply:
    """The Table API's error body (REST API HTTP status codes page)."""
    return Reply(status, {"error": {"message": message, "detail": detail},
                          "status": "failure"})


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """``X-CCA-Signature`` as the Business Rule computes it (hex of the HMAC-SHA256)."""
    mac = hmac.new(secret.encode("utf-8"), timestamp.encode("utf-8") + b"." + body,
                   hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")


class ServiceNowStandIn(StandIn):
    """``ServiceNowStandIn(user=..., password=..., secret=...)``; see the module docstring.

    ``link_header=False`` pages by offset only (instances behind some proxies drop Link);
    ``field_acl`` names fields a PATCH silently leaves alone, as a field write ACL does.
    """

    def __init__(self, user: str = "cca.integration", password: str = "s3cret", *,
                 secret: str = "whsec-servicenow", groups: Iterable[str] | None = None,
                 recorded: bool = True, link_header: bool = True,
                 field_acl: Iterable[str] = ()) -> None:
        super().__init__("servicenow")
        self.user, self.password, self.secret = user, password, secret
        if groups is None:
            vendor = load_routing_map(ROOT / "rules" / "routing.yaml").vendor("servicenow")
            groups = [*vendor.groups.values(), *vendor.label_groups.values(),
                      *([vendor.review_group] if vendor.review_group else [])]
        self.groups = set(groups)
        self.link_header = link_header
        self.field_acl = set(field_acl)
        self.tickets: dict[str, dict[str, str]] = {}
        self.journal: list[dict[str, str]] = []
        self.last_changed: dict[str, list[str]] = {}
        self._next_number = 10001
        if recorded:
            for name in PAGES:
                for row in json.loads((RECORDED / name).read_text("utf-8"))["body"]["result"]:
                    self.tickets[row["sys_id"]] = {
                        **dict.fromkeys(FIELDS, ""), "urgency": "3", "impact": "3",
                        "sys_updated_by": "admin", **row}
                    self._next_number = max(self._next_number, int(row["number"][3:]) + 1)
        # Table API: https://www.servicenow.com/docs/r/api-reference/rest-apis/c_TableAPI.html
        # (Table - GET /now/table/{tableName}; Table - PATCH /now/table/{tableName}/{sys_id})
        self.route("GET", r"/api/now/table/incident", self._list_incidents)
        self.route("PATCH", r"/api/now/table/incident/(?P<sys_id>[^/]+)", self._patch)
        # Journal entries (work notes) are rows of sys_journal_field, read with the same GET.
        self.route("GET", r"/api/now/table/sys_journal_field", self._list_journal)

    # -- state helpers for tests ---------------------------------------------------------
    def create(self, short_description: str, description: str = "", *, urgency: str = "3",
               caller_id: str = "", assignment_group: str = "", actor: str = "guest") -> str:
        """A new incident as a caller would raise it; returns its sys_id."""
        sys_id = uuid.uuid4().hex
        number = f"INC{self._next_number:07d}"
        self._next_number += 1
        stamp = now_text()
        self.tickets[sys_id] = {
            **dict.fromkeys(FIELDS, ""), "sys_id": sys_id, "number": number,
            "short_description": short_description, "description": description,
            "urgency": urgency, "impact": "3", "priority": "5", "state": "1",
            "caller_id": caller_id, "assignment_group": assignment_group,
            "contact_type": "self-service", "sys_created_on": stamp, "sys_updated_on": stamp,
            "sys_updated_by": actor}
        return sys_id

    def notes(self, sys_id: str) -> list[str]:
        return [r["value"] for r in self.journal
                if r["element_id"] == sys_id and r["element"] == "work_notes"]

    # -- webhook deliveries --------------------------------------------------------------
    def webhook(self, sys_id: str, *, operation: str = "insert", changed: Iterable[str] = (),
                timestamp: float | None = None, secret: str | None = None,
                **overrides: Any) -> tuple[dict[str, str], bytes]:
        """(headers, body) exactly as the Business Rule sends them for this incident."""
        t = self.tickets[sys_id]
        payload: dict[str, Any] = {
            **{k: t[k] for k in ("sys_id", "number", "short_description", "description",
                                 "assignment_group", "urgency", "sys_updated_by",
                                 "sys_updated_on", "sys_created_on", "caller_id")},
            "operation": operation, "changed": list(changed), **overrides}
        # JSON.stringify, compact, then non-ASCII escaped as \uXXXX by the Business Rule so
        # the signed text and the sent bytes cannot differ in encoding.
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=True).encode("ascii")
        stamp = str(int(time.time() if timestamp is None else timestamp))
        return ({"Content-Type": "application/json", "X-CCA-Timestamp": stamp,
                 "X-CCA-Signature": sign(self.secret if secret is None else secret, stamp,
                                         body)}, body)

    def agent_change(self, sys_id: str, actor: str, **fields: str) -> tuple[dict[str, str],
                                                                            bytes]:
        """An agent edits the incident in the UI; the Business Rule's delivery for it."""
        self.tickets[sys_id].update(fields, sys_updated_by=actor, sys_updated_on=now_text())
        return self.webhook(sys_id, operation="update", changed=[*fields, "sys_updated_by"])

    def webhook_for_last_write(self, sys_id: str) -> tuple[dict[str, str], bytes]:
        """The delivery the Business Rule sends after the integration's own PATCH."""
        return self.webhook(sys_id, operation="update", changed=self.last_changed[sys_id])

    # -- serving -------------------------------------------------------------------------
    def _auth(self, req: Request) -> Reply | None:
        expected = "Basic " + base64.b64encode(
            f"{self.user}:{self.password}".encode()).decode()
        if req.header("authorization") != expected:
            self.violation(f"{req.method} {req.path}: 401 missing or wrong Basic auth")
            return failure(401, "User Not Authenticated", "Required to provide Auth information")
        return None

    def _refuse(self, req: Request, status: int, message: str, detail: str) -> Reply:
        self.violation(f"{req.method} {req.path}: {status} {message}: {detail}")
        return failure(status, message, detail)

    def _required(self, req: Request, names: Iterable[str]) -> Reply | None:
        missing = [n for n in names if not req.query.get(n)]
        if missing:
            return self._refuse(req, 400, "Missing query parameter", ", ".join(missing))
        if "sysparm_exclude_reference_link" in names and \
                req.query["sysparm_exclude_reference_link"] != "true":
            return self._refuse(req, 400, "Invalid query parameter",
                                "sysparm_exclude_reference_link must be true")
        return None

    def _list_incidents(self, req: Request, match: re.Match[str]) -> Reply:
        refused = self._auth(req) or self._required(req, (
            "sysparm_query", "sysparm_fields", "sysparm_exclude_reference_link",
            "sysparm_limit", "sysparm_offset"))
        if refused:
            return refused
        fields = req.query["sysparm_fields"].split(",")
        unknown = [f for f in fields if f not in FIELDS]
        if unknown:
            return self._refuse(req, 400, "Invalid field", ", ".join(unknown))
        rows = self._query(req, list(self.tickets.values()))
        if isinstance(rows, Reply):
            return rows
        return self._page(req, [{f: r[f] for f in fields} for r in rows])

    def _list_journal(self, req: Request, match: re.Match[str]) -> Reply:
        refused = self._auth(req) or self._required(req, ("sysparm_query", "sysparm_fields"))
        if refused:
            return refused
        rows = self._query(req, self.journal)
        if isinstance(rows, Reply):
            return rows
        fields = req.query["sysparm_fields"].split(",")
        return self._page(req, [{f: r.get(f, "") for f in fields} for r in rows])

    def _query(self, req: Request, rows: list[dict[str, str]]) -> list[dict[str, str]] | Reply:
        """The encoded-query subset clients here use: ``a>=b``, ``a=b``, ``aLIKEb``,
        ``ORDERBYa`` joined by ``^``."""
        order: list[str] = []
        for term in req.query["sysparm_query"].split("^"):
            if term.startswith("ORDERBY"):
                order.append(term[len("ORDERBY"):])
                continue
            m = _TERM.match(term)
            if not m:
                return self._refuse(req, 400, "Invalid query", term)
            field, op, value = m["field"], m["op"], m["value"]
            rows = [r for r in rows if (op == ">=" and r.get(field, "") >= value)
                    or (op == "=" and r.get(field, "") == value)
                    or (op == "LIKE" and value in r.get(field, ""))]
        return sorted(rows, key=lambda r: tuple(r.get(f, "") for f in order))

    def _page(self, req: Request, rows: list[dict[str, str]]) -> Reply:
        """Offset paging with X-Total-Count and the Link header (first/prev/next/last)."""
        try:
            limit = int(req.query.get("sysparm_limit") or 10000)
            offset = int(req.query.get("sysparm_offset") or 0)
        except ValueError:
            return self._refuse(req, 400, "Invalid query parameter",
                                "sysparm_limit and sysparm_offset must be integers")
        headers = {"X-Total-Count": str(len(rows))}
        if self.link_header:
            def link(at: int, rel: str) -> str:
                query = urlencode({**req.query, "sysparm_offset": str(at)})
                return f'<{self.url}{req.path}?{query}>;rel="{rel}"'
            last = max(0, (len(rows) - 1) // limit * limit)
            rels = [link(0, "first")]
            if offset > 0:
                rels.append(link(max(0, offset - limit), "prev"))
            if offset + limit < len(rows):
                rels.append(link(offset + limit, "next"))
            headers["Link"] = ",".join([*rels, link(last, "last")])
        return Reply(200, {"result": rows[offset:offset + limit]}, headers)

    def _patch(self, req: Request, match: re.Match[str]) -> Reply:
        refused = self._auth(req) or self._required(req, ("sysparm_fields",
                                                          "sysparm_exclude_reference_link"))
        if refused:
            return refused
        if "application/json" not in (req.header("content-type") or ""):
            return self._refuse(req, 400, "Invalid content type", "send application/json")
        body = req.json()
        if not isinstance(body, dict) or not body:
            return self._refuse(req, 400, "Invalid request body", "expected a JSON object")
        ticket = self.tickets.get(match["sys_id"])
        if ticket is None:
            return self._refuse(req, 404, "No Record found",
                                "Record doesn't exist or ACL restricts the record retrieval")
        problem = self._check_fields(body)
        if problem:
            return self._refuse(req, 400, *problem)
        if "comments" in body:  # customer-visible: the product only writes internal notes
            self.violation(f"PATCH {req.path}: wrote customer-visible comments")
        self._apply(ticket, body)
        self.paused()
        fields = req.query["sysparm_fields"].split(",")
        return Reply(200, {"result": {f: ticket.get(f, "") for f in fields}})

    def _check_fields(self, body: dict[str, Any]) -> tuple[str, str] | None:
        unknown = sorted(set(body) - WRITABLE)
        if unknown:
            return "Invalid field", ", ".join(unknown)
        if not all(isinstance(v, str) for v in body.values()):
            return "Invalid value", "every field value must be a string"
        group = body.get("assignment_group")
        if group and group not in self.groups:
            return "Invalid reference", f"assignment_group: no sys_user_group {group}"
        if "urgency" in body and body["urgency"] not in ("1", "2", "3"):
            return "Invalid value", f"urgency: {body['urgency']!r} is not 1, 2 or 3"
        return None

    def _apply(self, ticket: dict[str, str], body: dict[str, str]) -> None:
        stamp = now_text()
        changed = []
        for name, value in body.items():
            if name in ("work_notes", "comments"):
                if value.strip():
                    self.journal.append({
                        "sys_id": uuid.uuid4().hex, "element_id": ticket["sys_id"],
                        "element": name, "name": "incident", "value": value,
                        "sys_created_by": self.user, "sys_created_on": stamp})
                    changed.append(name)
            elif name not in self.field_acl and ticket.get(name) != value:
                ticket[name] = value
                changed.append(name)
        ticket.update(sys_updated_by=self.user, sys_updated_on=stamp)
        self.last_changed[ticket["sys_id"]] = [*changed, "sys_updated_by", "sys_updated_on"]
