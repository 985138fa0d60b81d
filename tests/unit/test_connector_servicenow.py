"""The ServiceNow pull connector against the loopback ServiceNow stand-in (real sockets).

The stand-in serves the recorded pages (tests/fixtures/connectors/servicenow_incident_page*)
from its state and refuses, as a violation, a request without the parameters the connector
relies on, so dropping one fails these tests."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest

from cca.errors import StateError
from cca.tickets import Ticket
from pipelines.connectors import ConnectorBatch, ServiceNowConnector
from pipelines.connectors.servicenow import FIELDS
from tests.conftest import FIXTURES
from tests.standins.base import Reply
from tests.standins.servicenow import ServiceNowStandIn

RECORDED = FIXTURES / "connectors"
SN_MARK = "2026-11-20 08:00:00"
ORDER = "ORDERBYsys_updated_on^ORDERBYsys_id"
REQUIRED = ("sysparm_query", "sysparm_fields", "sysparm_exclude_reference_link",
            "sysparm_limit", "sysparm_offset")


def recorded_rows() -> dict[str, dict]:
    rows = {}
    for page in ("servicenow_incident_page1.json", "servicenow_incident_page2.json"):
        for row in json.loads((RECORDED / page).read_text("utf-8"))["body"]["result"]:
            rows[row["sys_id"]] = row
    return rows


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def assert_valid_tickets(batch: ConnectorBatch) -> None:
    for rec in batch.records:
        assert set(rec) == set(Ticket.model_fields) | {"label"}
        Ticket.model_validate({k: v for k, v in rec.items() if k != "label"})


@pytest.fixture
def sn() -> Iterator[ServiceNowStandIn]:
    with ServiceNowStandIn(user="cca", password="s3cret") as standin:
        yield standin


def connector(sn: ServiceNowStandIn, sleeps: list[float], *, password: str = "s3cret",
              client: httpx.Client | None = None, **kw) -> ServiceNowConnector:
    return ServiceNowConnector(sn.url, "cca", password, client, page_size=2,
                               sleep=sleeps.append, **kw)


def test_servicenow_two_recorded_pages_follow_link_header_to_records_and_mark(sn) -> None:
    sleeps: list[float] = []
    batch = connector(sn, sleeps).fetch(SN_MARK)

    assert [r["id"] for r in batch.records] == [
        "servicenow-INC0010001", "servicenow-INC0010002", "servicenow-INC0010004"]
    assert [r["priority"] for r in batch.records] == ["high", "low", "critical"]
    first = batch.records[0]
    assert (first["source"], first["subject"], first["customer_ref"], first["label"]) == (
        "servicenow", "Card payment declined at checkout", "5137153cc611227c000bbd1bd8cd2007", None)
    assert first["created_at"] == datetime(2026, 11, 20, 8, 14, 3, tzinfo=UTC)
    assert first["metadata"]["category"] == "inquiry"
    assert first["metadata"]["url"] == (
        f"{sn.url}/nav_to.do?uri=incident.do?sys_id=9d385017c611228701d22104cc95c371")
    assert batch.records[1]["customer_ref"] is None and batch.records[1]["body"] == ""
    assert [(loc, reason) for loc, reason, _ in batch.rejects] == [
        ("servicenow:INC0010003", "no text: subject and description are both empty")]
    # The rejected row is the recorded one, field for field: the pages served are the recording.
    assert batch.rejects[0][2] == recorded_rows()["46f09e75a9fe198100f4ffd8d366d17b"]
    assert batch.next_cursor == "2026-11-20 10:03:45"
    assert_valid_tickets(batch)

    first_req, second_req = sn.requests
    assert (first_req.method, first_req.path) == ("GET", "/api/now/table/incident")
    assert first_req.query == {
        "sysparm_query": f"sys_updated_on>={SN_MARK}^{ORDER}", "sysparm_fields": FIELDS,
        "sysparm_exclude_reference_link": "true", "sysparm_display_value": "false",
        "sysparm_limit": "2", "sysparm_offset": "0"}
    assert first_req.header("authorization") == basic("cca", "s3cret")
    # The second page is the Link header's rel="next", which carries every parameter.
    assert second_req.query == {**first_req.query, "sysparm_offset": "2"}
    assert second_req.header("authorization") == basic("cca", "s3cret")
    assert sleeps == [] and sn.violations == []


def test_servicenow_pages_by_offset_when_no_link_header() -> None:
    with ServiceNowStandIn(user="cca", password="s3cret", link_header=False) as sn:
        batch = connector(sn, []).fetch(None)

    assert [r.query["sysparm_offset"] for r in sn.requests] == ["0", "2", "4"]
    assert {r.query["sysparm_query"] for r in sn.requests} == {ORDER}
    assert len(batch.records) == 3 and batch.next_cursor == "2026-11-20 10:03:45"
    assert sn.violations == []


def test_servicenow_mark_filters_what_the_instance_returns(sn) -> None:
    batch = connector(sn, []).fetch("2026-11-20 09:41:26")
    assert [r["id"] for r in batch.records] == ["servicenow-INC0010004"]
    assert [loc for loc, _, _ in batch.rejects] == ["servicenow:INC0010003"]
    assert len(sn.requests) == 1 and sn.violations == []


def test_servicenow_unreachable_host_is_state_error_after_backoff(sn) -> None:
    sleeps: list[float] = []
    sn.stop()  # connection refused on the same port
    with pytest.raises(StateError, match=r"^servicenow: cannot reach .* after 5 attempts$"):
        connector(sn, sleeps).fetch(None)
    assert sleeps == [1.0, 2.0, 4.0, 8.0]
    sn.start()
    with pytest.raises(StateError, match="not a 'YYYY-MM-DD HH:MM:SS'"):  # never sent
        connector(sn, sleeps).fetch("2026-11-20^active=false")
    assert sn.requests == []


def test_servicenow_429_then_200_is_retried_after_retry_after(sn) -> None:
    sleeps: list[float] = []
    sn.fail_next(1, Reply(429, {"error": {"message": "Too many requests"}, "status": "failure"},
                          {"Retry-After": "7"}), "/api/now/table/incident")
    batch = connector(sn, sleeps, max_wait=30.0).fetch(None)
    assert sleeps == [7.0]
    assert [r["id"] for r in batch.records] == [
        "servicenow-INC0010001", "servicenow-INC0010002", "servicenow-INC0010004"]
    assert [r.query["sysparm_offset"] for r in sn.requests] == ["0", "0", "2"]


def test_servicenow_retry_after_is_capped(sn) -> None:
    sleeps: list[float] = []
    sn.fail_next(1, Reply(429, {"error": {"message": "Too many requests"}}, {"Retry-After":
                                                                              "3600"}))
    connector(sn, sleeps, max_wait=30.0).fetch(None)
    assert sleeps == [30.0]


def test_servicenow_401_is_one_line_state_error_without_retry(sn) -> None:
    sleeps: list[float] = []
    with pytest.raises(StateError) as err:
        connector(sn, sleeps, password="wrong").fetch(None)
    msg = str(err.value)
    assert msg.startswith("servicenow: authentication refused (HTTP 401) by http://127.0.0.1:")
    assert "CCA_SERVICENOW_PASSWORD" in msg and "\n" not in msg and "wrong" not in msg
    assert sleeps == [] and len(sn.requests) == 1
    assert sn.violations == ["GET /api/now/table/incident: 401 missing or wrong Basic auth"]


def test_servicenow_401_body_is_the_recorded_one(sn) -> None:
    recorded = json.loads((RECORDED / "servicenow_401.json").read_text("utf-8"))
    resp = httpx.get(f"{sn.url}/api/now/table/incident", auth=("cca", "wrong"))
    assert (resp.status_code, resp.json()) == (recorded["status"], recorded["body"])


@pytest.mark.parametrize("dropped", REQUIRED)
def test_a_connector_that_drops_a_required_parameter_fails(sn, dropped: str) -> None:
    def drop(request: httpx.Request) -> None:
        request.url = request.url.copy_remove_param(dropped)

    client = httpx.Client(event_hooks={"request": [drop]})
    with pytest.raises(StateError, match="HTTP 400"):
        connector(sn, [], client=client).fetch(SN_MARK)
    assert len(sn.violations) == 1 and dropped in sn.violations[0]
