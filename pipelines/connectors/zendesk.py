"""Zendesk Support tickets through the cursor-based Incremental Ticket Export.

``GET /api/v2/incremental/tickets/cursor.json?start_time=T`` on the first run, then
``?cursor=AFTER_CURSOR`` until ``end_of_stream`` is true. The last ``after_cursor`` is the next
run's cursor: Zendesk designed this export for exactly this poll-and-resume loop, returns
tickets in update order, and (unlike the Search API) has no result-count ceiling. Deleted
tickets are excluded (``exclude_deleted=true``): there is nothing in them to classify.
Authentication is an API token: basic auth as ``{email}/token`` with the token as password.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from pipelines.connectors.base import BatchBuilder, ConnectorBatch, HttpSource, parse_time, text_of

EXPORT_PATH = "/api/v2/incremental/tickets/cursor.json"
PRIORITY = {"urgent": "critical", "high": "high", "normal": "normal", "low": "low"}


class ZendeskConnector:
    """Tickets changed since the stored export cursor, oldest change first."""

    name = "zendesk"

    def __init__(
        self,
        url: str,
        email: str,
        token: str,
        client: httpx.Client | None = None,
        *,
        start_time: int = 0,
        max_wait: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.http = HttpSource(
            self.name, url, httpx.BasicAuth(f"{email}/token", token), client,
            max_wait=max_wait, sleep=sleep,
            credentials_hint="CCA_ZENDESK_EMAIL and CCA_ZENDESK_TOKEN",
        )
        self.start_time = start_time  # unix seconds the very first run exports from

    def fetch(self, cursor: str | None) -> ConnectorBatch:
        params: dict[str, Any] = {"exclude_deleted": "true"}
        if cursor:
            params["cursor"] = cursor
        else:
            params["start_time"] = self.start_time
        out = BatchBuilder()
        next_cursor = cursor
        while True:
            page = self.http.get_json(EXPORT_PATH, params)
            for raw in page.get("tickets") or []:
                self._map(raw, out)
            after = page.get("after_cursor")
            if after:
                next_cursor = after
            # An empty export answers without a cursor: keep the old one rather than loop.
            if page.get("end_of_stream", True) or not after or after == params.get("cursor"):
                break
            params = {"exclude_deleted": "true", "cursor": after}
        return out.batch(next_cursor)

    def _map(self, raw: dict, out: BatchBuilder) -> None:
        ticket_id = raw.get("id")
        location = f"zendesk:{ticket_id}"
        if not isinstance(ticket_id, int):
            out.reject(location, "no ticket id", raw)
            return
        created = parse_time(raw.get("created_at"))
        if created is None:
            out.reject(location, "created_at missing or not a timestamp", raw)
            return
        requester = raw.get("requester_id")
        via = raw.get("via") if isinstance(raw.get("via"), dict) else {}
        metadata = {
            "status": text_of(raw.get("status")),
            "url": f"{self.http.base_url}/agent/tickets/{ticket_id}",
            "api_url": text_of(raw.get("url")) or None,
            "type": text_of(raw.get("type")) or None,
            "tags": [t for t in raw.get("tags") or [] if isinstance(t, str)],
            "ticket_form_id": raw.get("ticket_form_id"),
            "group_id": raw.get("group_id"),
            "channel": via.get("channel"),
            "updated_at": text_of(raw.get("updated_at")),
        }
        out.add(location, raw, {
            "id": f"zendesk-{ticket_id}",
            "source": self.name,
            "subject": text_of(raw.get("subject")),
            "body": text_of(raw.get("description")),
            "customer_ref": str(requester) if requester is not None else None,
            "created_at": created,
            "priority": PRIORITY.get(text_of(raw.get("priority")), "normal"),
            "metadata": metadata,
            # Ticket forms and custom fields are per-account ids, not our intent labels.
            "label": None,
        })
