"""Routing written back to Zendesk Support through its REST API.

One ``PUT /api/v2/tickets/{id}`` (Zendesk "Tickets" API, Update Ticket) carries everything:
the group, the priority, ``additional_tags`` (added to the agent's tags, never replacing
them) and the routing note as a private comment (``public: false``: an internal note the
customer never sees). One request means the ticket is never left half-routed; an update
that may have been applied is never resent in the call (``writeback.VendorHttp``).

``already_written`` reads the ticket's comments (Zendesk "Ticket Comments", List Comments,
cursor pagination) for the note's marker: after a crash between Zendesk's answer and our
record, the worker asks before writing the same decision twice. ``own_actor`` is the
integration user's id (``GET /api/v2/users/me``): the ``actor_id`` Zendesk puts on the
events our own writes cause, so they are not taken for agents' corrections.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from pipelines.integrations.writeback import Routing, VendorHttp, WriteFailed

PRIORITIES = frozenset({"urgent", "high", "normal", "low"})
COMMENTS_PAGE_SIZE = 100  # Zendesk's cursor-pagination maximum
MAX_COMMENT_PAGES = 1000  # a ticket with more notes than this is not one we routed


class ZendeskWriter:
    """Zendesk write-back as the API-token user ``{email}/token``."""

    source = "zendesk"

    def __init__(self, url: str, email: str, token: str, client: httpx.Client | None = None,
                 *, timeout_s: float = 10.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.http = VendorHttp(self.source, url, httpx.BasicAuth(f"{email}/token", token),
                                client, timeout_s=timeout_s, sleep=sleep)
        self._own_actor: str | None = None

    def write(self, routing: Routing) -> None:
        """Group, priority, tags and the internal note in one ticket update."""
        ticket_id = _ticket_number(routing.ticket_ref)
        self.http.request("PUT", f"/api/v2/tickets/{ticket_id}",
                          json={"ticket": update_body(routing)})

    def already_written(self, ticket_ref: str, marker: str) -> bool:
        """Whether a private comment on the ticket contains ``marker``."""
        ticket_id = _ticket_number(ticket_ref)
        path = f"/api/v2/tickets/{ticket_id}/comments"
        params: dict[str, Any] = {"page[size]": COMMENTS_PAGE_SIZE}
        for _ in range(MAX_COMMENT_PAGES):
            page = self.http.json("GET", path, params=params) or {}
            if any(_private_note_with(c, marker) for c in page.get("comments") or []):
                return True
            meta = page.get("meta") if isinstance(page.get("meta"), dict) else {}
            links = page.get("links") if isinstance(page.get("links"), dict) else {}
            if not meta.get("has_more") or not links.get("next"):
                return False
            path, params = self._same_host(str(links["next"]))
        raise WriteFailed(f"zendesk: ticket {ticket_id} has more than {MAX_COMMENT_PAGES} "
                          "pages of comments; not searched further", retryable=False)

    def own_actor(self) -> str | None:
        """The integration user's Zendesk id, asked once."""
        if self._own_actor is None:
            user = (self.http.json("GET", "/api/v2/users/me") or {}).get("user") or {}
            user_id = user.get("id") if isinstance(user, dict) else None
            if not isinstance(user_id, int) or isinstance(user_id, bool):
                raise WriteFailed("zendesk GET /api/v2/users/me: no user id in the answer "
                                  "(anonymous?); check CCA_ZENDESK_EMAIL and "
                                  "CCA_ZENDESK_TOKEN", retryable=False)
            self._own_actor = str(user_id)
        return self._own_actor

    def _same_host(self, link: str) -> tuple[str, dict[str, Any]]:
        """A paging link as (path, params); our credentials never go to another host."""
        url, base = httpx.URL(link), httpx.URL(self.http.base_url)
        if (url.scheme, url.host, url.port) != (base.scheme, base.host, base.port):
            raise WriteFailed(f"zendesk: refusing to follow a paging link off "
                              f"{self.http.base_url}: {link}", retryable=False)
        prefix = base.path.rstrip("/")
        path = url.path[len(prefix):] if prefix and url.path.startswith(prefix) else url.path
        return path, dict(url.params.multi_items())

    def close(self) -> None:
        self.http.close()


def update_body(routing: Routing) -> dict[str, Any]:
    """The ``ticket`` object of the update: fields left alone are omitted, not nulled."""
    ticket: dict[str, Any] = {"comment": {"body": routing.note, "public": False}}
    if routing.group is not None:
        ticket["group_id"] = _group_number(routing.group)
    if routing.priority is not None:
        priority = routing.priority.strip().lower()
        if priority not in PRIORITIES:
            raise WriteFailed(f"zendesk: priority {routing.priority!r} is not one of "
                              f"{', '.join(sorted(PRIORITIES))}; fix the zendesk urgency map "
                              "in rules/routing.yaml", retryable=False)
        ticket["priority"] = priority
    if routing.tags:
        ticket["additional_tags"] = list(dict.fromkeys(routing.tags))
    return ticket


def _group_number(group: str) -> int:
    """Zendesk group ids are integers; the routing map keeps every id as text."""
    text = group.strip()
    if not (text.isdigit() and text.isascii()):
        raise WriteFailed(f"zendesk: group id {group!r} is not a number (Zendesk group ids "
                          "are integers; see GET /api/v2/groups); fix the zendesk section "
                          "of rules/routing.yaml", retryable=False)
    return int(text)


def _ticket_number(ticket_ref: str) -> int:
    text = ticket_ref.strip()
    if not (text.isdigit() and text.isascii()):
        raise WriteFailed(f"zendesk: ticket ref {ticket_ref!r} is not a Zendesk ticket id",
                          retryable=False)
    return int(text)


def _private_note_with(comment: Any, marker: str) -> bool:
    if not isinstance(comment, dict) or comment.get("public") is not False:
        return False
    return any(isinstance(comment.get(k), str) and marker in comment[k]
               for k in ("body", "plain_body", "html_body"))
