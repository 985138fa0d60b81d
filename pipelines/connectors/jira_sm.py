"""Jira Service Management requests through Jira Cloud's enhanced JQL search.

``GET /rest/api/3/search/jql`` with ``project = KEY AND updated >= "yyyy-MM-dd HH:mm" ORDER BY
updated ASC, key ASC``, paged by ``nextPageToken`` until ``isLast``. The servicedeskapi's own
``/rest/servicedeskapi/request`` list cannot filter by update time, so it would re-read every
request every hour; JQL can. The service desk id is resolved to its project key once
(``GET /rest/servicedeskapi/servicedesk/{id}``, which also accepts a project key).

The cursor is the newest ``updated`` seen, stored as ISO-8601 UTC. JQL dates have minute
resolution and are read in the API user's time zone, so the mark is converted to that zone
(``GET /rest/api/3/myself`` -> ``timeZone``) and floored to the minute; the few tickets of
that minute are read again, which the ingest upsert absorbs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx

from cca.errors import StateError
from pipelines.connectors.base import BatchBuilder, ConnectorBatch, HttpSource, parse_time, text_of

SEARCH_PATH = "/rest/api/3/search/jql"
FIELDS = "summary,description,priority,status,issuetype,reporter,created,updated"
PRIORITY = {"highest": "critical", "blocker": "critical", "critical": "critical",
            "high": "high", "major": "high", "medium": "normal",
            "low": "low", "minor": "low", "lowest": "low", "trivial": "low"}
# ADF nodes that end a line of text when flattened.
_BLOCKS = {"paragraph", "heading", "blockquote", "codeBlock", "listItem", "tableRow",
           "tableCell", "tableHeader", "panel", "rule", "taskItem", "decisionItem",
           "expand", "nestedExpand", "mediaSingle"}


def _walk(node: Any, parts: list[str]) -> None:
    if isinstance(node, list):
        for child in node:
            _walk(child, parts)
        return
    if not isinstance(node, dict):
        return
    kind, attrs = node.get("type"), node.get("attrs") or {}
    if kind == "text":
        parts.append(str(node.get("text") or ""))
    elif kind == "hardBreak":
        parts.append("\n")
    elif kind in ("mention", "emoji", "status", "date"):
        parts.append(str(attrs.get("text") or attrs.get("shortName") or ""))
    elif kind in ("inlineCard", "blockCard", "embedCard"):
        parts.append(str(attrs.get("url") or ""))
    else:
        _walk(node.get("content"), parts)
        if kind in _BLOCKS:
            parts.append("\n")


def adf_to_text(doc: Any) -> str:
    """Plain text of an Atlassian Document Format value: one line per block, no markup.

    The cascade reads words, not layout, so marks, media and tables' structure are dropped;
    a plain string (Jira Data Center, or API v2) is passed through.
    """
    if isinstance(doc, str):
        return doc.strip()
    parts: list[str] = []
    _walk(doc, parts)
    lines = (" ".join(line.split()) for line in "".join(parts).splitlines())
    return "\n".join(line for line in lines if line)


class JiraServiceManagementConnector:
    """Requests of one service desk updated since the stored mark, oldest first."""

    name = "jira"

    def __init__(
        self,
        url: str,
        email: str,
        token: str,
        service_desk_id: str,
        client: httpx.Client | None = None,
        *,
        page_size: int = 100,
        max_wait: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.http = HttpSource(
            self.name, url, httpx.BasicAuth(email, token), client, max_wait=max_wait,
            sleep=sleep, credentials_hint="CCA_JIRA_EMAIL and CCA_JIRA_TOKEN",
        )
        self.service_desk_id = service_desk_id
        self.page_size = page_size
        self._project: str | None = None
        self._zone: ZoneInfo | None = None

    def _project_key(self) -> str:
        if self._project is None:
            desk = self.http.get_json(f"/rest/servicedeskapi/servicedesk/{self.service_desk_id}")
            key = text_of(desk.get("projectKey"))
            if not key:
                raise StateError(f"jira: service desk {self.service_desk_id} has no projectKey")
            self._project = key
        return self._project

    def _user_zone(self) -> ZoneInfo:
        if self._zone is None:
            name = text_of(self.http.get_json("/rest/api/3/myself").get("timeZone")) or "UTC"
            try:
                self._zone = ZoneInfo(name)
            except (ZoneInfoNotFoundError, ValueError):
                self._zone = ZoneInfo("UTC")
        return self._zone

    def jql(self, cursor: str | None) -> str:
        scope = f'project = "{self._project_key()}"'
        order = "ORDER BY updated ASC, key ASC"
        if cursor is None:
            return f"{scope} {order}"
        mark = parse_time(cursor)
        if mark is None:
            raise StateError(f"jira: stored cursor {cursor!r} is not an ISO-8601 timestamp")
        local = mark.astimezone(self._user_zone())
        return f'{scope} AND updated >= "{local:%Y-%m-%d %H:%M}" {order}'

    def fetch(self, cursor: str | None) -> ConnectorBatch:
        params: dict[str, Any] = {"jql": self.jql(cursor), "fields": FIELDS,
                                  "maxResults": self.page_size}
        out = BatchBuilder()
        newest: datetime | None = parse_time(cursor)
        while True:
            page = self.http.get_json(SEARCH_PATH, params)
            for raw in page.get("issues") or []:
                self._map(raw, out)
                updated = parse_time((raw.get("fields") or {}).get("updated"))
                if updated and (newest is None or updated > newest):
                    newest = updated
            token = page.get("nextPageToken")
            if page.get("isLast") or not token or token == params.get("nextPageToken"):
                break
            params = {**params, "nextPageToken": token}
        return out.batch(newest.astimezone(UTC).isoformat() if newest else cursor)

    def _map(self, raw: dict, out: BatchBuilder) -> None:
        key = text_of(raw.get("key"))
        fields = raw.get("fields") or {}
        location = f"jira:{key or 'id=' + str(raw.get('id'))}"
        if not key:
            out.reject(location, "no issue key", raw)
            return
        created = parse_time(fields.get("created"))
        if created is None:
            out.reject(location, "created missing or not a timestamp", raw)
            return

        def name(field: str) -> str:
            value = fields.get(field)
            return text_of(value.get("name")) if isinstance(value, dict) else ""

        reporter = fields.get("reporter") if isinstance(fields.get("reporter"), dict) else {}
        metadata = {
            "status": name("status"),
            "url": f"{self.http.base_url}/browse/{key}",
            "issue_type": name("issuetype") or None,
            "vendor_priority": name("priority") or None,
            "updated_at": text_of(fields.get("updated")),
        }
        out.add(location, raw, {
            "id": f"jira-{key}",
            "source": self.name,
            "subject": text_of(fields.get("summary")),
            "body": adf_to_text(fields.get("description")),
            "customer_ref": text_of(reporter.get("accountId")) or None,
            "created_at": created,
            "priority": PRIORITY.get(name("priority").lower(), "normal"),
            "metadata": metadata,
            # Request types live in a per-site custom field; issue type is not an intent.
            "label": None,
        })
