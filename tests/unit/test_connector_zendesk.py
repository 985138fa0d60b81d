"""The Zendesk pull connector against the Zendesk stand-in on a real socket.

The stand-in serves the recorded Incremental Ticket Export pages
(tests/fixtures/connectors/zendesk_tickets_cursor_page*.json) and refuses, as Zendesk does, an
export request without start_time or cursor; each refusal is also a recorded violation."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest

from cca.errors import StateError
from cca.tickets import Ticket
from pipelines.connectors import ConnectorBatch, ZendeskConnector
from tests.standins.base import Reply, Sleeps
from tests.standins.zendesk import ZendeskStandIn

ZD_AFTER_1 = "MTc5NTY1NjQwMC4wfHwzNTQzN3w="
ZD_AFTER_2 = "MTc5NTY2MzYwMC4wfHwzNTQ0MHw="
EXPORT = "/api/v2/incremental/tickets/cursor.json"


@pytest.fixture
def zd() -> Iterator[ZendeskStandIn]:
    with ZendeskStandIn() as standin:
        yield standin


def connector(zd: ZendeskStandIn, sleeps: Sleeps, token: str | None = None, *,
              start_time: int = 0, max_wait: float = 60.0) -> ZendeskConnector:
    return ZendeskConnector(zd.url, zd.user, token or zd.secret, start_time=start_time,
                            max_wait=max_wait, sleep=sleeps)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def assert_valid_tickets(batch: ConnectorBatch) -> None:
    for rec in batch.records:
        assert set(rec) == set(Ticket.model_fields) | {"label"}
        Ticket.model_validate({k: v for k, v in rec.items() if k != "label"})


def test_zendesk_two_recorded_export_pages_become_records_and_cursor(zd) -> None:
    batch = connector(zd, Sleeps()).fetch(None)

    assert [r["id"] for r in batch.records] == ["zendesk-35436", "zendesk-35437", "zendesk-35440"]
    assert [r["priority"] for r in batch.records] == ["high", "normal", "critical"]
    first = batch.records[0]
    assert (first["body"], first["customer_ref"]) == (
        "I see two identical payments for one purchase.", "20978392")
    assert first["created_at"] == datetime(2026, 11, 20, 8, 0, 2, tzinfo=UTC)
    assert first["metadata"]["url"] == f"{zd.url}/agent/tickets/35436"
    assert first["metadata"]["status"] == "open" and first["metadata"]["type"] == "incident"
    assert [(loc, reason) for loc, reason, _ in batch.rejects] == [
        ("zendesk:35439", "no text: subject and description are both empty")]
    assert batch.next_cursor == ZD_AFTER_2
    assert_valid_tickets(batch)

    first_q, second_q = (r.query for r in zd.requests)
    assert [r.path for r in zd.requests] == [EXPORT, EXPORT]
    assert first_q == {"start_time": "0", "exclude_deleted": "true"}
    assert second_q == {"cursor": ZD_AFTER_1, "exclude_deleted": "true"}
    assert all(r.header("authorization") == basic("ops@acme.example/token", "tok123")
               for r in zd.requests)
    assert zd.violations == []


def test_zendesk_resumes_from_stored_cursor_and_keeps_it_when_nothing_changed(zd) -> None:
    batch = connector(zd, Sleeps()).fetch(ZD_AFTER_1)
    assert len(zd.requests) == 1 and zd.requests[0].query["cursor"] == ZD_AFTER_1
    assert "start_time" not in zd.requests[0].query
    assert [r["id"] for r in batch.records] == ["zendesk-35440"]
    assert batch.next_cursor == ZD_AFTER_2

    assert connector(zd, Sleeps()).fetch(ZD_AFTER_2) == ConnectorBatch([], [], ZD_AFTER_2)
    assert zd.requests[-1].query["cursor"] == ZD_AFTER_2 and zd.violations == []


def test_start_time_is_the_configured_first_export_point(zd) -> None:
    connector(zd, Sleeps(), start_time=1795650000).fetch(None)
    assert zd.requests[0].query["start_time"] == "1795650000"


def test_export_without_start_time_or_cursor_is_refused_like_zendesk(zd) -> None:
    """A connector that dropped the required parameter would fail here and in the tests above
    (the stand-in answers 400 and records a violation)."""
    with httpx.Client() as client:
        resp = client.get(f"{zd.url}{EXPORT}", params={"exclude_deleted": "true"},
                          auth=(f"{zd.user}/token", zd.secret))
    assert resp.status_code == 400 and resp.json()["error"] == "InvalidPaginationParameter"
    assert len(zd.violations) == 1 and "start_time or cursor" in zd.violations[0]


def test_recorded_429_then_200_is_retried_after_capped_retry_after(zd) -> None:
    zd.fail_next(1, Reply(429, {"error": "busy"}, {"Retry-After": "3600"}), EXPORT)
    sleeps = Sleeps()
    batch = connector(zd, sleeps, max_wait=30.0).fetch(ZD_AFTER_1)
    assert sleeps == [30.0]  # capped
    assert [r["id"] for r in batch.records] == ["zendesk-35440"]
    assert [r.query["cursor"] for r in zd.requests] == [ZD_AFTER_1, ZD_AFTER_1]


def test_recorded_401_is_one_line_state_error_without_retry(zd) -> None:
    sleeps = Sleeps()
    with pytest.raises(StateError) as err:
        connector(zd, sleeps, token="wrong-token").fetch(None)
    msg = str(err.value)
    assert msg.startswith(f"zendesk: authentication refused (HTTP 401) by {zd.url}")
    assert "CCA_ZENDESK_TOKEN" in msg and "\n" not in msg and "wrong-token" not in msg
    assert sleeps == [] and len(zd.requests) == 1  # bad credentials are not retried
    assert zd.violations and "auth" in zd.violations[0]
