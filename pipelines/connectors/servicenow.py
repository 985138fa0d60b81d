"""ServiceNow incidents through the Table API (``GET /api/now/table/incident``).

Incremental by a ``sys_updated_on`` high-water mark: ``sysparm_query=sys_updated_on>=MARK^
ORDERBYsys_updated_on^ORDERBYsys_id``, paged with ``sysparm_limit``/``sysparm_offset`` (the
``Link: rel="next"`` header is followed when the instance sends it). ``>=`` rather than ``>``
because the mark has one-second resolution: a ticket updated in the same second as the last
one seen would otherwise be missed; the ingest upsert makes the re-read harmless.

The Table API returns ``sys_*`` date-times in UTC and compares a plain encoded-query date in
the integration user's time zone, so that user should be set to UTC (as ServiceNow advises
for integration accounts).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import httpx

from cca.errors import StateError
from pipelines.connectors.base import BatchBuilder, ConnectorBatch, HttpSource, parse_time, text_of

TABLE_PATH = "/api/now/table/incident"
FIELDS = ("sys_id,number,short_description,description,priority,state,category,subcategory,"
          "caller_id,contact_type,sys_created_on,sys_updated_on")
# Incident priority is 1 Critical .. 5 Planning (derived from impact x urgency).
PRIORITY = {"1": "critical", "2": "high", "3": "normal", "4": "low", "5": "low"}
_MARK = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")


def _ref(value: Any) -> str | None:
    """A reference field's sys_id, whether or not the instance sent the ``link`` form."""
    if isinstance(value, dict):
        value = value.get("value")
    return text_of(value) or None


class ServiceNowConnector:
    """Incidents updated since the last ``sys_updated_on`` seen, oldest first."""

    name = "servicenow"

    def __init__(
        self,
        url: str,
        user: str,
        password: str,
        client: httpx.Client | None = None,
        *,
        page_size: int = 100,
        max_wait: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.http = HttpSource(
            self.name, url, httpx.BasicAuth(user, password), client, max_wait=max_wait,
            sleep=sleep, credentials_hint="CCA_SERVICENOW_USER and CCA_SERVICENOW_PASSWORD",
        )
        self.page_size = page_size

    def fetch(self, cursor: str | None) -> ConnectorBatch:
        if cursor is not None and not _MARK.match(cursor):
            raise StateError(f"servicenow: stored cursor {cursor!r} is not a "
                             "'YYYY-MM-DD HH:MM:SS' sys_updated_on mark")
        order = "ORDERBYsys_updated_on^ORDERBYsys_id"
        params: dict[str, Any] | None = {
            "sysparm_query": f"sys_updated_on>={cursor}^{order}" if cursor else order,
            "sysparm_fields": FIELDS,
            "sysparm_exclude_reference_link": "true",
            "sysparm_display_value": "false",
            "sysparm_limit": self.page_size,
            "sysparm_offset": 0,
        }
        path: str = TABLE_PATH
        out = BatchBuilder()
        mark = cursor
        while True:
            resp = self.http.get(path, params)
            rows = self.http.json_of(resp).get("result") or []
            for raw in rows:
                self._map(raw, out)
                updated = text_of(raw.get("sys_updated_on"))
                if _MARK.match(updated) and (mark is None or updated > mark):
                    mark = updated
            if resp.links:  # the instance pages for us; rows may be fewer than asked (ACLs)
                nxt = resp.links.get("next", {}).get("url")
                if not nxt or nxt == str(resp.url):
                    break
                path, params = nxt, None  # the Link URL already carries every parameter
            elif len(rows) == self.page_size and params is not None:
                params = {**params, "sysparm_offset": params["sysparm_offset"] + len(rows)}
            else:
                break
        return out.batch(mark)

    def _map(self, raw: dict, out: BatchBuilder) -> None:
        number = text_of(raw.get("number"))
        location = f"servicenow:{number or 'sys_id=' + text_of(raw.get('sys_id'))}"
        if not number:
            out.reject(location, "no incident number", raw)
            return
        created = parse_time(raw.get("sys_created_on"))
        if created is None:
            out.reject(location, "sys_created_on missing or not a timestamp", raw)
            return
        sys_id = text_of(raw.get("sys_id"))
        metadata = {
            "status": text_of(raw.get("state")),
            "url": f"{self.http.base_url}/nav_to.do?uri=incident.do?sys_id={sys_id}",
            "category": text_of(raw.get("category")) or None,
            "subcategory": text_of(raw.get("subcategory")) or None,
            "contact_type": text_of(raw.get("contact_type")) or None,
            "sys_id": sys_id,
            "updated_at": text_of(raw.get("sys_updated_on")),
        }
        out.add(location, raw, {
            "id": f"servicenow-{number}",
            "source": self.name,
            "subject": text_of(raw.get("short_description")),
            "body": text_of(raw.get("description")),
            "customer_ref": _ref(raw.get("caller_id")),
            "created_at": created,
            "priority": PRIORITY.get(text_of(raw.get("priority")), "normal"),
            "metadata": metadata,
            # The incident category is the instance's own taxonomy (hardware, network, ...),
            # not one of our intents, so it is context, never a training label.
            "label": None,
        })
