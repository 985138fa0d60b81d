"""Zendesk Support on loopback: the pull export, the write-back endpoints and signed webhooks.

State is a small account: tickets (seeded with the recorded export's tickets), their comments,
the groups that exist and the integration user. Every route checks what Zendesk checks and
answers Zendesk's documented errors ({"error": ..., "description": ...}); every refusal and
every request that breaks the contract the product relies on is also in ``violations``.

Pages the routes follow (developer.zendesk.com):
- /api-reference/introduction/security-and-auth/ : basic auth ``{email}/token:{token}``, 401
- /api-reference/ticketing/ticket-management/incremental_exports/ : cursor ticket export
- /api-reference/ticketing/tickets/tickets/#update-ticket : PUT, additional_tags, 404, 422
- /api-reference/ticketing/tickets/ticket_comments/#list-comments : cursor pagination
- /api-reference/ticketing/users/users/#show-the-currently-authenticated-user : users/me
Webhook deliveries (``webhook``, ``agent_update``, ``trigger``) come from zendesk_webhooks.
"""

from __future__ import annotations

import base64
import copy
import json
import re
from typing import Any

from tests.conftest import FIXTURES, ROOT
from tests.standins.base import Reply, Request, StandIn
from tests.standins.zendesk_webhooks import WebhookDeliveries, zulu

EXPORT_PAGES = [FIXTURES / "connectors" / f"zendesk_tickets_cursor_page{n}.json" for n in (1, 2)]
UNAUTHORIZED = FIXTURES / "connectors" / "zendesk_401.json"
PRIORITIES = ("urgent", "high", "normal", "low")


def _recorded(path: Any) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _error(status: int, error: str, description: str, **extra: Any) -> Reply:
    return Reply(status, {"error": error, "description": description, **extra})


def default_groups() -> set[int]:
    """The recorded tickets' group and every Zendesk group the shipped routing map names."""
    import yaml

    raw = yaml.safe_load((ROOT / "rules" / "routing.yaml").read_text(encoding="utf-8"))
    zd = raw.get("zendesk") or {}
    ids = [*(zd.get("departments") or {}).values(), *(zd.get("labels") or {}).values(),
           zd.get("review_group")]
    return {98738, *(int(i) for i in ids if i is not None)}


class ZendeskStandIn(WebhookDeliveries, StandIn):
    """``user`` is the agent's email, ``secret`` its API token; ``webhook_secret`` signs
    deliveries built by ``webhook``/``trigger``/``agent_update``."""

    def __init__(self, user: str = "ops@acme.example", secret: str = "tok123", *,
                 webhook_secret: str = "zendesk-signing-secret",
                 groups: set[int] | None = None, me_id: int = 900001,
                 account_id: int = 12514403) -> None:
        super().__init__("zendesk")
        self.user, self.secret, self.webhook_secret = user, secret, webhook_secret
        self.groups = default_groups() if groups is None else set(groups)
        self.me_id, self.account_id = me_id, account_id
        self.tickets: dict[int, dict[str, Any]] = {}
        self.comments: dict[int, list[dict[str, Any]]] = {}
        self._pages = [_recorded(p)["body"] for p in EXPORT_PAGES]
        self._next_id = 1
        for page in self._pages:
            for raw in page["tickets"]:
                self.tickets[raw["id"]] = copy.deepcopy(raw)
                self.comments[raw["id"]] = []
        self.route("GET", r"/api/v2/incremental/tickets/cursor\.json", self._export)
        self.route("PUT", r"/api/v2/tickets/(\d+)(?:\.json)?", self._update)
        self.route("GET", r"/api/v2/tickets/(\d+)/comments(?:\.json)?", self._list_comments)
        self.route("GET", r"/api/v2/users/me(?:\.json)?", self._me)

    # -- state helpers -------------------------------------------------------------------
    def add_ticket(self, ticket_id: int, subject: str, description: str, *,
                   priority: str | None = None, group_id: int | None = None,
                   tags: tuple[str, ...] = (), requester_id: int = 20978392) -> dict[str, Any]:
        now = zulu()
        self.tickets[ticket_id] = {
            "id": ticket_id, "subject": subject, "raw_subject": subject,
            "description": description, "priority": priority, "status": "new",
            "type": None, "group_id": group_id, "tags": list(tags),
            "requester_id": requester_id, "submitter_id": requester_id,
            "assignee_id": None, "organization_id": None, "brand_id": 1,
            "ticket_form_id": None, "via": {"channel": "web"},
            "created_at": now, "updated_at": now}
        self.comments[ticket_id] = [self._comment(requester_id, description, public=True)]
        return self.tickets[ticket_id]

    def _comment(self, author_id: int, body: str, *, public: bool) -> dict[str, Any]:
        self._next_id += 1
        return {"id": 10_000 + self._next_id, "type": "Comment", "author_id": author_id,
                "body": body, "plain_body": body, "html_body": f"<div><p>{body}</p></div>",
                "public": public, "attachments": [], "created_at": zulu()}

    def notes(self, ticket_id: int) -> list[str]:
        """Bodies of the ticket's private comments (internal notes)."""
        return [c["body"] for c in self.comments.get(ticket_id, []) if not c["public"]]

    # -- auth ----------------------------------------------------------------------------
    def _refused(self, req: Request) -> Reply | None:
        expected = "Basic " + base64.b64encode(
            f"{self.user}/token:{self.secret}".encode()).decode()
        if req.header("authorization") == expected:
            return None
        self.violation(f"{req.method} {req.path}: bad or missing API-token basic auth")
        rec = _recorded(UNAUTHORIZED)
        return Reply(rec["status"], rec["body"])

    def _ticket(self, req: Request, match: re.Match[str]) -> tuple[int, Reply | None]:
        ticket_id = int(match.group(1))
        if ticket_id not in self.tickets:
            self.violation(f"{req.method} {req.path}: no ticket {ticket_id}")
            return ticket_id, _error(404, "RecordNotFound", "Not found")
        return ticket_id, None

    # -- incremental export (pull connector) ---------------------------------------------
    def _export(self, req: Request, match: re.Match[str]) -> Reply:
        refused = self._refused(req)
        if refused:
            return refused
        if req.query.get("exclude_deleted") != "true":
            self.violation("export without exclude_deleted=true: deleted tickets would be "
                           "ingested")
        start, cursor = req.query.get("start_time"), req.query.get("cursor")
        if (start is None) == (cursor is None):
            self.violation(f"export needs exactly one of start_time or cursor: {req.query}")
            return _error(400, "InvalidPaginationParameter",
                          "Provide start_time on the first request, then cursor")
        if start is not None:
            if not start.isdigit():
                self.violation(f"export start_time is not Unix seconds: {start!r}")
                return _error(400, "InvalidValue", "start_time must be an integer")
            return Reply(200, self._page(0))
        cursors = [p["after_cursor"] for p in self._pages]
        if cursor == cursors[0]:
            return Reply(200, self._page(1))
        if cursor == cursors[-1]:
            return Reply(200, {"tickets": [], "after_url": None, "after_cursor": None,
                               "before_url": None, "before_cursor": None,
                               "end_of_stream": True})
        self.violation(f"export cursor {cursor!r} was never issued")
        return _error(400, "InvalidPaginationParameter", "Invalid cursor")

    def _page(self, n: int) -> dict[str, Any]:
        page = copy.deepcopy(self._pages[n])
        for key in ("after_url", "before_url"):
            if page.get(key):
                page[key] = re.sub(r"^https://[^/]+", self.url, page[key])
        return page

    # -- update ticket (write-back) ------------------------------------------------------
    def _update(self, req: Request, match: re.Match[str]) -> Reply:
        refused = self._refused(req)
        if refused:
            return refused
        ticket_id, missing = self._ticket(req, match)
        if missing:
            return missing
        body = req.json() if req.body else None
        update = body.get("ticket") if isinstance(body, dict) else None
        if not isinstance(update, dict):
            self.violation(f"PUT {req.path}: body must be {{\"ticket\": {{...}}}}")
            return _error(400, "InvalidEndpoint", "Missing ticket object in request body")
        details = self._invalid(req.path, update)
        if details:
            return Reply(422, {"error": "RecordInvalid",
                               "description": "Record validation errors",
                               "details": details})
        audit = self._apply(ticket_id, update)
        self.paused()
        return Reply(200, {"ticket": self.tickets[ticket_id], "audit": audit})

    def _invalid(self, path: str, update: dict[str, Any]) -> dict[str, list[dict[str, str]]]:
        details: dict[str, list[dict[str, str]]] = {}
        if "tags" in update:
            self.violation(f"PUT {path}: 'tags' replaces the agent's tags; use additional_tags")
        group = update.get("group_id")
        if "group_id" in update and (not isinstance(group, int) or isinstance(group, bool)
                                     or group not in self.groups):
            details["group_id"] = [{"description": f"Group: {group!r} is invalid",
                                    "error": "InvalidValue"}]
        if "priority" in update and update["priority"] not in PRIORITIES:
            details["priority"] = [{"description": "Priority: is not included in the list",
                                    "error": "InvalidValue"}]
        tags = update.get("additional_tags", [])
        if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
            details["additional_tags"] = [{"description": "Tags: must be a list of names",
                                           "error": "InvalidValue"}]
        comment = update.get("comment")
        if comment is not None and not (isinstance(comment, dict)
                                        and isinstance(comment.get("body"), str)
                                        and comment["body"].strip()):
            details["comment"] = [{"description": "Comment: body can't be blank",
                                   "error": "BlankValue"}]
        elif isinstance(comment, dict) and comment.get("public") is not False:
            self.violation(f"PUT {path}: comment without public=false is a reply the "
                           "customer is emailed, not an internal note")
        for field, errors in details.items():
            self.violation(f"PUT {path}: 422 {field}: {errors[0]['description']}")
        return details

    def _apply(self, ticket_id: int, update: dict[str, Any]) -> dict[str, Any]:
        ticket, events = self.tickets[ticket_id], []
        for field in ("group_id", "priority"):
            if field in update and ticket.get(field) != update[field]:
                events.append({"type": "Change", "field_name": field,
                               "value": update[field], "previous_value": ticket.get(field)})
                ticket[field] = update[field]
        if "tags" in update:
            ticket["tags"] = list(update["tags"])
        added = [t for t in update.get("additional_tags", []) if t not in ticket["tags"]]
        ticket["tags"] = [*ticket["tags"], *added]
        comment = update.get("comment")
        if isinstance(comment, dict):
            note = self._comment(self.me_id, comment["body"],
                                 public=comment.get("public", True) is not False)
            self.comments[ticket_id].append(note)
            events.append({"type": "Comment", "id": note["id"], "public": note["public"]})
        ticket["updated_at"] = zulu()
        self._next_id += 1
        return {"id": 50_000 + self._next_id, "ticket_id": ticket_id, "author_id": self.me_id,
                "created_at": ticket["updated_at"], "events": events}

    # -- comments and current user -------------------------------------------------------
    def _list_comments(self, req: Request, match: re.Match[str]) -> Reply:
        refused = self._refused(req)
        if refused:
            return refused
        ticket_id, missing = self._ticket(req, match)
        if missing:
            return missing
        comments = self.comments[ticket_id]
        size = req.query.get("page[size]")
        if size is None:
            self.violation(f"GET {req.path} without page[size]: offset pagination, not cursor")
            return Reply(200, {"comments": comments, "next_page": None,
                               "previous_page": None, "count": len(comments)})
        if not size.isdigit() or not 1 <= int(size) <= 100:
            self.violation(f"GET {req.path}: page[size]={size!r} (1..100)")
            return _error(400, "InvalidPaginationParameter", "page[size] must be 1..100")
        start = _cursor_index(req.query.get("page[after]"))
        if start is None:
            self.violation(f"GET {req.path}: page[after] was never issued")
            return _error(400, "InvalidPaginationParameter", "Invalid cursor")
        end = start + int(size)
        has_more = end < len(comments)
        after = base64.b64encode(str(end).encode()).decode() if has_more else None
        query = f"page%5Bafter%5D={after}&page%5Bsize%5D={size}"
        return Reply(200, {
            "comments": comments[start:end],
            "meta": {"has_more": has_more, "after_cursor": after, "before_cursor": None},
            "links": {"next": f"{self.url}{req.path}?{query}" if has_more else None,
                      "prev": None}})

    def _me(self, req: Request, match: re.Match[str]) -> Reply:
        refused = self._refused(req)
        if refused:
            return refused
        return Reply(200, {"user": {"id": self.me_id, "name": "Call Centre Agent",
                                    "email": self.user, "role": "agent", "active": True}})


def _cursor_index(cursor: str | None) -> int | None:
    """Where a page[after] cursor this stand-in issued points; None for any other text."""
    if not cursor:
        return 0
    try:
        return int(base64.b64decode(cursor, validate=True).decode())
    except ValueError:
        return None
