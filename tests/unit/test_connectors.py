"""Ticketing-system connectors against recorded responses served by httpx.MockTransport.

Each tests/fixtures/connectors file is one recorded response ({status, headers, body}) shaped
like the vendor's public API documentation page named in its ``_recorded_from`` key."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime

import httpx
import pytest

from cca.errors import ConfigError, StateError
from cca.settings import Settings
from cca.tickets import Ticket
from pipelines.connectors import (
    ConnectorBatch,
    JiraServiceManagementConnector,
    ServiceNowConnector,
    TicketConnector,
    ZendeskConnector,
    adf_to_text,
    connectors_from_settings,
)
from tests.conftest import FIXTURES

RECORDED = FIXTURES / "connectors"
Handler = Callable[[httpx.Request], httpx.Response]


def recorded(name: str, drop_headers: tuple[str, ...] = ()) -> httpx.Response:
    rec = json.loads((RECORDED / name).read_text(encoding="utf-8"))
    headers = {k: v for k, v in rec["headers"].items() if k not in drop_headers}
    body = {"text" if isinstance(rec["body"], str) else "json": rec["body"]}
    return httpx.Response(rec["status"], headers=headers, **body)


class Recorder:
    """A MockTransport client that remembers requests and the waits the connector asked for."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[httpx.Request] = []
        self.sleeps: list[float] = []
        self.client = httpx.Client(transport=httpx.MockTransport(self.serve))

    def serve(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.handler(request)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def assert_valid_tickets(batch: ConnectorBatch) -> None:
    for rec in batch.records:
        assert set(rec) == set(Ticket.model_fields) | {"label"}
        Ticket.model_validate({k: v for k, v in rec.items() if k != "label"})


# --- ServiceNow -------------------------------------------------------------------------

SN_MARK = "2026-11-20 08:00:00"
SN_PAGES = {"0": "servicenow_incident_page1.json", "2": "servicenow_incident_page2.json"}


def servicenow(rec: Recorder, **kw) -> ServiceNowConnector:
    return ServiceNowConnector("https://acme.service-now.com", "cca", "s3cret", rec.client,
                               page_size=2, sleep=rec.sleeps.append, **kw)


def test_servicenow_two_recorded_pages_follow_link_header_to_records_and_mark() -> None:
    rec = Recorder(lambda req: recorded(SN_PAGES[req.url.params["sysparm_offset"]]))
    batch = servicenow(rec).fetch(SN_MARK)

    assert [r["id"] for r in batch.records] == [
        "servicenow-INC0010001", "servicenow-INC0010002", "servicenow-INC0010004"]
    assert [r["priority"] for r in batch.records] == ["high", "low", "critical"]
    first = batch.records[0]
    assert (first["source"], first["subject"], first["customer_ref"], first["label"]) == (
        "servicenow", "Card payment declined at checkout", "5137153cc611227c000bbd1bd8cd2007", None)
    assert first["created_at"] == datetime(2026, 11, 20, 8, 14, 3, tzinfo=UTC)
    assert first["metadata"]["category"] == "inquiry"
    assert first["metadata"]["url"].endswith("incident.do?sys_id=9d385017c611228701d22104cc95c371")
    assert batch.records[1]["customer_ref"] is None and batch.records[1]["body"] == ""
    assert [(loc, reason) for loc, reason, _ in batch.rejects] == [
        ("servicenow:INC0010003", "no text: subject and description are both empty")]
    assert batch.rejects[0][2]["sys_id"] == "46f09e75a9fe198100f4ffd8d366d17b"
    assert batch.next_cursor == "2026-11-20 10:03:45"
    assert_valid_tickets(batch)

    q = rec.requests[0].url.params
    assert q["sysparm_query"] == f"sys_updated_on>={SN_MARK}^ORDERBYsys_updated_on^ORDERBYsys_id"
    assert rec.requests[0].headers["Authorization"] == basic("cca", "s3cret")
    assert len(rec.requests) == 2 and rec.requests[1].url.params["sysparm_offset"] == "2"


def test_servicenow_pages_by_offset_when_no_link_header() -> None:
    rec = Recorder(lambda req: recorded(SN_PAGES[req.url.params["sysparm_offset"]], ("Link",))
                   if req.url.params["sysparm_offset"] in SN_PAGES
                   else httpx.Response(200, json={"result": []}))
    batch = servicenow(rec).fetch(None)

    assert [r.url.params["sysparm_offset"] for r in rec.requests] == ["0", "2", "4"]
    assert rec.requests[0].url.params["sysparm_query"] == "ORDERBYsys_updated_on^ORDERBYsys_id"
    assert len(batch.records) == 3 and batch.next_cursor == "2026-11-20 10:03:45"


def test_servicenow_unreachable_host_is_state_error_after_backoff() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("Name or service not known", request=req)

    rec = Recorder(handler)
    with pytest.raises(StateError, match=r"^servicenow: cannot reach .* after 5 attempts$"):
        servicenow(rec).fetch(None)
    assert rec.sleeps == [1.0, 2.0, 4.0, 8.0]
    with pytest.raises(StateError, match="not a 'YYYY-MM-DD HH:MM:SS'"):  # never sent
        servicenow(rec).fetch("2026-11-20^active=false")
    assert len(rec.requests) == 5


# --- Zendesk ----------------------------------------------------------------------------

ZD_AFTER_1 = "MTc5NTY1NjQwMC4wfHwzNTQzN3w="
ZD_AFTER_2 = "MTc5NTY2MzYwMC4wfHwzNTQ0MHw="


def zendesk(rec: Recorder, **kw) -> ZendeskConnector:
    return ZendeskConnector("https://acme.zendesk.com", "ops@acme.example", "tok123",
                            rec.client, sleep=rec.sleeps.append, **kw)


def zendesk_pages(req: httpx.Request) -> httpx.Response:
    page = 2 if req.url.params.get("cursor") == ZD_AFTER_1 else 1
    return recorded(f"zendesk_tickets_cursor_page{page}.json")


def test_zendesk_two_recorded_export_pages_become_records_and_cursor() -> None:
    rec = Recorder(zendesk_pages)
    batch = zendesk(rec).fetch(None)

    assert [r["id"] for r in batch.records] == ["zendesk-35436", "zendesk-35437", "zendesk-35440"]
    assert [r["priority"] for r in batch.records] == ["high", "normal", "critical"]
    first = batch.records[0]
    assert (first["body"], first["customer_ref"]) == (
        "I see two identical payments for one purchase.", "20978392")
    assert first["created_at"] == datetime(2026, 11, 20, 8, 0, 2, tzinfo=UTC)
    assert first["metadata"]["url"] == "https://acme.zendesk.com/agent/tickets/35436"
    assert first["metadata"]["status"] == "open" and first["metadata"]["type"] == "incident"
    assert [(loc, reason) for loc, reason, _ in batch.rejects] == [
        ("zendesk:35439", "no text: subject and description are both empty")]
    assert batch.next_cursor == ZD_AFTER_2
    assert_valid_tickets(batch)

    first_q, second_q = (r.url.params for r in rec.requests)
    assert rec.requests[0].url.path == "/api/v2/incremental/tickets/cursor.json"
    assert first_q["start_time"] == "0" and "cursor" not in first_q
    assert second_q["cursor"] == ZD_AFTER_1 and "start_time" not in second_q
    assert rec.requests[0].headers["Authorization"] == basic("ops@acme.example/token", "tok123")


def test_zendesk_resumes_from_stored_cursor_and_keeps_it_when_nothing_changed() -> None:
    rec = Recorder(zendesk_pages)
    batch = zendesk(rec).fetch(ZD_AFTER_1)
    assert len(rec.requests) == 1 and rec.requests[0].url.params["cursor"] == ZD_AFTER_1
    assert [r["id"] for r in batch.records] == ["zendesk-35440"]
    assert batch.next_cursor == ZD_AFTER_2
    empty = {"tickets": [], "after_cursor": None, "after_url": None, "end_of_stream": True}
    rec = Recorder(lambda req: httpx.Response(200, json=empty))
    assert zendesk(rec).fetch(ZD_AFTER_2) == ConnectorBatch([], [], ZD_AFTER_2)


# --- Jira Service Management ------------------------------------------------------------

def jira_routes(search: Handler) -> Handler:
    """Recorded service desk and current-user answers; everything else goes to ``search``."""
    meta = {"/rest/servicedeskapi/servicedesk/10": "jira_servicedesk.json",
            "/rest/api/3/myself": "jira_myself.json"}
    return lambda req: recorded(meta[req.url.path]) if req.url.path in meta else search(req)


def jira_pages(req: httpx.Request) -> httpx.Response:
    page = 2 if req.url.params.get("nextPageToken") == "CAEaAggD" else 1
    return recorded(f"jira_search_page{page}.json")


def jira(rec: Recorder, **kw) -> JiraServiceManagementConnector:
    return JiraServiceManagementConnector("https://acme.atlassian.net", "bot@acme.example",
                                          "atl-token", "10", rec.client, sleep=rec.sleeps.append,
                                          **kw)


def test_jira_two_recorded_search_pages_become_records_and_mark() -> None:
    rec = Recorder(jira_routes(jira_pages))
    batch = jira(rec).fetch("2026-11-20T08:00:00+00:00")

    assert [r["id"] for r in batch.records] == ["jira-HELP-1", "jira-HELP-2", "jira-HELP-4"]
    assert [r["priority"] for r in batch.records] == ["high", "normal", "critical"]
    first = batch.records[0]
    assert first["body"] == ("I sent £200 to my sister on Monday.\nIt still has not arrived.\n"
                             "Reference: TX-991")
    assert batch.records[1]["body"] == "Which rate applies to card payments abroad? cc @Ana"
    assert first["customer_ref"] == "5b10ac8d82e05b22cc7d4ef5"
    assert first["created_at"] == datetime(2026, 11, 20, 8, 1, 12, 345000, tzinfo=UTC)
    assert (first["metadata"]["url"], first["metadata"]["status"]) == (
        "https://acme.atlassian.net/browse/HELP-1", "Waiting for support")
    assert [(loc, reason) for loc, reason, _ in batch.rejects] == [
        ("jira:HELP-3", "no text: subject and description are both empty")]
    assert batch.next_cursor == "2026-11-20T09:15:30+00:00"
    assert_valid_tickets(batch)

    searches = [r for r in rec.requests if r.url.path == "/rest/api/3/search/jql"]
    # 08:00 UTC is 19:00 in the API user's zone (Australia/Sydney, AEDT) on that day.
    assert searches[0].url.params["jql"] == (
        'project = "HELP" AND updated >= "2026-11-20 19:00" ORDER BY updated ASC, key ASC')
    assert "nextPageToken" not in searches[0].url.params
    assert searches[1].url.params["nextPageToken"] == "CAEaAggD"
    assert rec.requests[0].headers["Authorization"] == basic("bot@acme.example", "atl-token")


def test_jira_resolves_project_and_zone_once_per_connector() -> None:
    rec = Recorder(jira_routes(jira_pages))
    conn = jira(rec)
    conn.fetch(None)
    conn.fetch("2026-11-20T09:15:30+00:00")
    paths = [r.url.path for r in rec.requests]
    assert paths.count("/rest/servicedeskapi/servicedesk/10") == 1
    assert paths.count("/rest/api/3/myself") == 1
    first_search = next(r for r in rec.requests if r.url.path.endswith("/search/jql"))
    assert first_search.url.params["jql"] == 'project = "HELP" ORDER BY updated ASC, key ASC'


def test_adf_flattening_keeps_words_and_line_breaks_only() -> None:
    doc = {"type": "doc", "version": 1, "content": [
        {"type": "heading", "attrs": {"level": 2}, "content": [{"type": "text", "text": "Hi"}]},
        {"type": "paragraph", "content": [
            {"type": "text", "text": "see  "},
            {"type": "inlineCard", "attrs": {"url": "https://x.example/1"}}]},
        {"type": "mediaSingle", "content": [{"type": "media", "attrs": {"id": "m1"}}]}]}
    assert adf_to_text(doc) == "Hi\nsee https://x.example/1"
    assert (adf_to_text(None), adf_to_text("  plain v2 text ")) == ("", "plain v2 text")


@pytest.mark.parametrize(("make", "page", "retry_after", "slept", "ids"), [
    (servicenow, "servicenow_incident_page2.json", "7", 7.0, ["servicenow-INC0010004"]),
    (zendesk, "zendesk_tickets_cursor_page2.json", "3600", 30.0, ["zendesk-35440"]),  # capped
    (jira, "jira_search_page2.json", "2", 2.0, ["jira-HELP-4"]),
])
def test_recorded_429_then_200_is_retried_after_capped_retry_after(
    make, page, retry_after, slept, ids
) -> None:
    throttled = httpx.Response(429, headers={"Retry-After": retry_after}, json={"error": "busy"})
    answers = iter([throttled, recorded(page)])
    rec = Recorder(jira_routes(lambda req: next(answers)))
    batch = make(rec, max_wait=30.0).fetch(None)
    assert rec.sleeps == [slept]
    assert [r["id"] for r in batch.records] == ids


@pytest.mark.parametrize(("make", "fixture", "secret", "hint"), [
    (servicenow, "servicenow_401.json", "s3cret", "CCA_SERVICENOW_PASSWORD"),
    (zendesk, "zendesk_401.json", "tok123", "CCA_ZENDESK_TOKEN"),
    (jira, "jira_401.json", "atl-token", "CCA_JIRA_TOKEN"),
])
def test_recorded_401_is_one_line_state_error_without_retry(make, fixture, secret, hint) -> None:
    rec = Recorder(lambda req: recorded(fixture))
    with pytest.raises(StateError) as err:
        make(rec).fetch(None)
    msg = str(err.value)
    assert msg.startswith(f"{make(rec).name}: authentication refused (HTTP 401) by https://")
    assert hint in msg and "\n" not in msg and secret not in msg
    assert rec.sleeps == [] and len(rec.requests) == 1  # bad credentials are not retried


# --- settings ---------------------------------------------------------------------------

@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.model_fields:
        if name.startswith(("servicenow_", "zendesk_", "jira_")):
            monkeypatch.delenv(f"CCA_{name.upper()}", raising=False)


def test_connectors_from_settings_returns_only_configured(clean_env: None) -> None:
    assert connectors_from_settings(Settings()) == []
    settings = Settings(servicenow_url="https://acme.service-now.com", servicenow_user="u",
                        servicenow_password="p", jira_url="https://acme.atlassian.net",
                        jira_email="e@x", jira_token="t", jira_service_desk_id="10")
    connectors = connectors_from_settings(settings)
    assert [c.name for c in connectors if isinstance(c, TicketConnector)] == ["servicenow", "jira"]


def test_half_configured_connector_is_a_config_error(clean_env: None) -> None:
    with pytest.raises(ConfigError, match="CCA_ZENDESK_TOKEN"):
        connectors_from_settings(Settings(zendesk_url="https://acme.zendesk.com",
                                          zendesk_email="ops@acme.example"))
