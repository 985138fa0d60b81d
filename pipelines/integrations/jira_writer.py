"""Routing written back to Jira Service Management through its documented REST APIs.

One decision is two requests: ``PUT /rest/api/3/issue/{key}`` (Jira Cloud platform REST v3,
"Edit issue"; 204 No Content) sets the group field and priority and *adds* labels with the
``update`` verb, so an agent's own labels stay; then ``POST
/rest/servicedeskapi/request/{key}/comment`` (JSM REST, "Create request comment") adds the
note with ``"public": false``, an internal comment customers never see. Basic auth with the
integration user's email and API token.

The group field's value shape depends on the field: JSM's request type field (the
"Customer Request Type", ``customfield_10010`` on Cloud sites) takes the request type id as a
bare string; any other field (select list, team) takes ``{"id": value}``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx

from pipelines.integrations.writeback import Routing, VendorHttp, WriteFailed

REQUEST_TYPE_FIELD = "customfield_10010"
COMMENT_PAGE = 50


class JiraWriter:
    """Jira's ``Writer``: edit the issue, then add the internal note."""

    source = "jira"

    def __init__(self, url: str, email: str, token: str, group_field: str | None,
                 client: httpx.Client | None = None, *, timeout_s: float = 10.0,
                 sleep: Callable[[float], None] = time.sleep,
                 request_type_field: str = REQUEST_TYPE_FIELD) -> None:
        self.http = VendorHttp(self.source, url, httpx.BasicAuth(email, token), client,
                               timeout_s=timeout_s, sleep=sleep)
        self.group_field = group_field
        self.request_type_field = request_type_field
        self._me: str | None = None

    def edit_body(self, routing: Routing) -> dict[str, Any]:
        """The "Edit issue" body; what ``routing`` leaves as None is not sent at all."""
        fields: dict[str, Any] = {}
        if routing.group is not None:
            if not self.group_field:
                raise WriteFailed("jira: a group to write but no group_field configured "
                                  "(jira.group_field in the routing map)", retryable=False)
            fields[self.group_field] = (routing.group
                                        if self.group_field == self.request_type_field
                                        else {"id": routing.group})
        if routing.priority is not None:
            fields["priority"] = {"name": routing.priority}
        body: dict[str, Any] = {}
        if fields:
            body["fields"] = fields
        if routing.tags:
            body["update"] = {"labels": [{"add": tag} for tag in routing.tags]}
        return body

    def write(self, routing: Routing) -> None:
        key = _key(routing.ticket_ref)
        body = self.edit_body(routing)
        if body:
            self.http.request("PUT", f"/rest/api/3/issue/{key}", json=body)
        self.http.request("POST", f"/rest/servicedeskapi/request/{key}/comment",
                          json={"body": routing.note, "public": False})

    def already_written(self, ticket_ref: str, marker: str) -> bool:
        """Whether an internal comment on the request holds ``marker`` (every page read)."""
        path = f"/rest/servicedeskapi/request/{_key(ticket_ref)}/comment"
        start = 0
        while True:
            page = self.http.json("GET", path, params={
                "public": "false", "internal": "true", "start": start, "limit": COMMENT_PAGE})
            if not isinstance(page, dict):
                raise WriteFailed(f"jira GET {path}: answer is not a page object",
                                  retryable=False)
            values = page.get("values") or []
            if any(marker in str(c.get("body") or "") for c in values if isinstance(c, dict)):
                return True
            if page.get("isLastPage", True) or not values:
                return False
            start = int(page.get("start") or start) + len(values)

    def own_actor(self) -> str | None:
        """The integration user's accountId (``GET /rest/api/3/myself``), asked once."""
        if self._me is None:
            me = self.http.json("GET", "/rest/api/3/myself")
            account = me.get("accountId") if isinstance(me, dict) else None
            self._me = str(account) if account else None
        return self._me

    def close(self) -> None:
        self.http.close()


def _key(ticket_ref: str) -> str:
    """An issue key for a URL path; an empty one is a routing bug, not worth retrying."""
    key = ticket_ref.strip()
    if not key:
        raise WriteFailed("jira: empty issue key", retryable=False)
    return quote(key, safe="")
