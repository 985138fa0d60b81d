"""The Jira Service Management pull connector against the Jira stand-in (real sockets).

Moved from test_connectors.py (which served the same recorded pages through
httpx.MockTransport); the stand-in also checks the search's required parameters, so a
connector that dropped ``jql`` or ``fields`` fails here."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest

from cca.errors import StateError
from cca.tickets import Ticket
from pipelines.connectors import ConnectorBatch, JiraServiceManagementConnector, adf_to_text
from pipelines.connectors.jira_sm import FIELDS, SEARCH_PATH
from tests.standins.base import Reply
from tests.standins.jira import PAGE_TOKEN, JiraStandIn

AUTH = "Basic " + base64.b64encode(b"bot@acme.example:atl-token").decode()


@pytest.fixture
def jira() -> Iterator[JiraStandIn]:
    with JiraStandIn() as standin:
        yield standin


def connector(standin: JiraStandIn, sleeps: list[float], token: str = "atl-token",
              **kw) -> JiraServiceManagementConnector:
    return JiraServiceManagementConnector(standin.url, "bot@acme.example", token, "10",
                                          sleep=sleeps.append, **kw)


def searches(standin: JiraStandIn) -> list:
    return [r for r in standin.requests if r.path == SEARCH_PATH]


def assert_valid_tickets(batch: ConnectorBatch) -> None:
    for rec in batch.records:
        assert set(rec) == set(Ticket.model_fields) | {"label"}
        Ticket.model_validate({k: v for k, v in rec.items() if k != "label"})


def test_jira_two_recorded_search_pages_become_records_and_mark(jira: JiraStandIn) -> None:
    batch = connector(jira, []).fetch("2026-11-20T08:00:00+00:00")

    assert [r["id"] for r in batch.records] == ["jira-HELP-1", "jira-HELP-2", "jira-HELP-4"]
    assert [r["priority"] for r in batch.records] == ["high", "normal", "critical"]
    first = batch.records[0]
    assert first["body"] == ("I sent £200 to my sister on Monday.\nIt still has not arrived.\n"
                             "Reference: TX-991")
    assert batch.records[1]["body"] == "Which rate applies to card payments abroad? cc @Ana"
    assert first["customer_ref"] == "5b10ac8d82e05b22cc7d4ef5"
    assert first["created_at"] == datetime(2026, 11, 20, 8, 1, 12, 345000, tzinfo=UTC)
    assert (first["metadata"]["url"], first["metadata"]["status"]) == (
        f"{jira.url}/browse/HELP-1", "Waiting for support")
    assert [(loc, reason) for loc, reason, _ in batch.rejects] == [
        ("jira:HELP-3", "no text: subject and description are both empty")]
    assert batch.next_cursor == "2026-11-20T09:15:30+00:00"
    assert_valid_tickets(batch)

    first_q, second_q = (r.query for r in searches(jira))
    # 08:00 UTC is 19:00 in the API user's zone (Australia/Sydney, AEDT) on that day.
    assert first_q["jql"] == (
        'project = "HELP" AND updated >= "2026-11-20 19:00" ORDER BY updated ASC, key ASC')
    assert first_q["fields"] == second_q["fields"] == FIELDS
    assert first_q["maxResults"] == second_q["maxResults"] == "100"
    assert "nextPageToken" not in first_q and second_q["nextPageToken"] == PAGE_TOKEN
    assert second_q["jql"] == first_q["jql"]
    assert all(r.header("authorization") == AUTH for r in jira.requests)
    assert jira.violations == []


def test_jira_resolves_project_and_zone_once_per_connector(jira: JiraStandIn) -> None:
    conn = connector(jira, [])
    conn.fetch(None)
    conn.fetch("2026-11-20T09:15:30+00:00")
    paths = [r.path for r in jira.requests]
    assert paths.count("/rest/servicedeskapi/servicedesk/10") == 1
    assert paths.count("/rest/api/3/myself") == 1
    assert searches(jira)[0].query["jql"] == 'project = "HELP" ORDER BY updated ASC, key ASC'
    assert jira.violations == []


@pytest.mark.parametrize("dropped", ["jql", "fields"])
def test_a_search_without_a_required_parameter_is_a_violation(jira: JiraStandIn,
                                                              dropped: str) -> None:
    params = {"jql": 'project = "HELP"', "fields": FIELDS, "maxResults": 100}
    del params[dropped]
    resp = httpx.get(f"{jira.url}{SEARCH_PATH}", params=params, headers={"Authorization": AUTH})
    assert len(jira.violations) == 1 and dropped in jira.violations[0]
    if dropped == "jql":
        assert resp.status_code == 400
    else:       # Jira answers ids only: the connector would reject every issue
        assert all(set(i) == {"id"} for i in resp.json()["issues"])


def test_adf_flattening_keeps_words_and_line_breaks_only() -> None:
    doc = {"type": "doc", "version": 1, "content": [
        {"type": "heading", "attrs": {"level": 2}, "content": [{"type": "text", "text": "Hi"}]},
        {"type": "paragraph", "content": [
            {"type": "text", "text": "see  "},
            {"type": "inlineCard", "attrs": {"url": "https://x.example/1"}}]},
        {"type": "mediaSingle", "content": [{"type": "media", "attrs": {"id": "m1"}}]}]}
    assert adf_to_text(doc) == "Hi\nsee https://x.example/1"
    assert (adf_to_text(None), adf_to_text("  plain v2 text ")) == ("", "plain v2 text")


def test_recorded_429_then_200_is_retried_after_capped_retry_after(jira: JiraStandIn) -> None:
    jira.fail_next(1, Reply(429, {"errorMessages": ["Rate limit exceeded"]},
                            {"Retry-After": "2"}), SEARCH_PATH)
    sleeps: list[float] = []
    batch = connector(jira, sleeps, max_wait=30.0).fetch(None)
    assert sleeps == [2.0]
    assert [r["id"] for r in batch.records] == ["jira-HELP-1", "jira-HELP-2", "jira-HELP-4"]
    assert len(searches(jira)) == 3
    sleeps.clear()
    jira.fail_next(1, Reply(429, None, {"Retry-After": "3600"}), SEARCH_PATH)
    connector(jira, sleeps, max_wait=30.0).fetch(None)
    assert sleeps == [30.0]                                                    # capped


def test_recorded_401_is_one_line_state_error_without_retry(jira: JiraStandIn) -> None:
    sleeps: list[float] = []
    with pytest.raises(StateError) as err:
        connector(jira, sleeps, token="wrong-token").fetch(None)
    msg = str(err.value)
    assert msg.startswith(f"jira: authentication refused (HTTP 401) by {jira.url}")
    assert "CCA_JIRA_TOKEN" in msg and "\n" not in msg and "wrong-token" not in msg
    assert sleeps == [] and len(jira.requests) == 1  # bad credentials are not retried
    assert jira.violations == ["GET /rest/servicedeskapi/servicedesk/10: bad or missing "
                               "basic auth"]
