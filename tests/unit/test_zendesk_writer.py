"""ZendeskWriter against the Zendesk stand-in on a real socket: the requests it sends, what
they do to the ticket, and how each documented failure comes back."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest

from pipelines.integrations.writeback import Routing, WriteFailed
from pipelines.integrations.zendesk_writer import ZendeskWriter
from tests.standins.base import Reply, Sleeps
from tests.standins.zendesk import ZendeskStandIn

TICKET = 35436  # recorded: group 98738, priority high, tags ["card"]
MARKER = "[cca:d-1]"
NOTE = f"Routed by Call Centre Agent to Cards.\nModel m1. {MARKER}"


@pytest.fixture
def zd() -> Iterator[ZendeskStandIn]:
    with ZendeskStandIn() as standin:
        yield standin


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


def writer(zd: ZendeskStandIn, sleeps: Sleeps, token: str | None = None) -> ZendeskWriter:
    return ZendeskWriter(zd.url, zd.user, token or zd.secret, sleep=sleeps)


def routing(**kw: object) -> Routing:
    base: dict[str, object] = {"ticket_ref": str(TICKET), "group": "360000100001",
                               "priority": "urgent", "tags": ("cca_routed",), "note": NOTE,
                               "marker": "[cca:d-1]"}
    return Routing(**{**base, **kw})  # type: ignore[arg-type]


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_write_is_one_ticket_update_with_private_note_and_added_tags(zd, sleeps) -> None:
    writer(zd, sleeps).write(routing())

    (req,) = zd.requests
    assert (req.method, req.path) == ("PUT", f"/api/v2/tickets/{TICKET}")
    assert req.header("authorization") == basic("ops@acme.example/token", "tok123")
    assert req.json() == {"ticket": {"group_id": 360000100001, "priority": "urgent",
                                     "additional_tags": ["cca_routed"],
                                     "comment": {"body": NOTE, "public": False}}}
    ticket = zd.tickets[TICKET]
    assert (ticket["group_id"], ticket["priority"]) == (360000100001, "urgent")
    assert ticket["tags"] == ["card", "cca_routed"]  # the agent's tag stays
    assert zd.notes(TICKET) == [NOTE]
    assert zd.violations == [] and sleeps == []


def test_fields_left_alone_are_omitted_not_nulled(zd, sleeps) -> None:
    writer(zd, sleeps).write(routing(group=None, priority=None, tags=()))
    assert zd.requests[0].json() == {"ticket": {"comment": {"body": NOTE, "public": False}}}
    assert (zd.tickets[TICKET]["group_id"], zd.tickets[TICKET]["priority"]) == (98738, "high")
    assert zd.tickets[TICKET]["tags"] == ["card"] and zd.notes(TICKET) == [NOTE]


def test_review_routing_goes_to_the_triage_group_with_the_review_tag(zd, sleeps) -> None:
    writer(zd, sleeps).write(routing(group="360000100000", priority=None,
                                     tags=("cca_needs_review",), review=True))
    body = zd.requests[0].json()["ticket"]
    assert body["group_id"] == 360000100000 and "priority" not in body
    assert zd.tickets[TICKET]["tags"] == ["card", "cca_needs_review"]
    assert zd.notes(TICKET) == [NOTE] and zd.violations == []


def test_429_waits_for_retry_after_then_applies_once(zd, sleeps) -> None:
    zd.fail_next(1, Reply(429, {"error": "TooManyRequests"}, {"Retry-After": "2"}),
                 r"/api/v2/tickets/")
    writer(zd, sleeps).write(routing())
    assert sleeps == [2.0]
    assert [r.method for r in zd.requests] == ["PUT", "PUT"]
    assert zd.notes(TICKET) == [NOTE]


def test_conflict_then_success_is_retried_in_the_call(zd, sleeps) -> None:
    zd.fail_next(1, Reply(409, {"error": "busy"}), r"/api/v2/tickets/")
    writer(zd, sleeps).write(routing())
    assert sleeps == [0.5] and len(zd.requests) == 2
    assert zd.tickets[TICKET]["group_id"] == 360000100001


def test_5xx_is_not_resent_in_the_call(zd, sleeps) -> None:
    """A 503 may have been applied: the worker retries later, asking for the note first."""
    zd.fail_next(1, Reply(503, {"error": "busy"}), r"/api/v2/tickets/")
    w = writer(zd, sleeps)
    with pytest.raises(WriteFailed) as err:
        w.write(routing())
    assert (err.value.status, err.value.retryable) == (503, True)
    assert sleeps == [] and len(zd.requests) == 1
    assert not w.already_written(str(TICKET), MARKER)
    w.write(routing())
    assert zd.notes(TICKET) == [NOTE]


def test_vendor_outage_is_retryable_after_the_in_call_attempts(zd, sleeps) -> None:
    w = writer(zd, sleeps)
    zd.stop()
    with pytest.raises(WriteFailed) as err:
        w.write(routing())
    assert err.value.retryable and "cannot reach" in err.value.reason
    assert sleeps == [0.5, 1.0]


def test_unanswered_update_is_not_resent_and_its_note_is_found(zd, sleeps) -> None:
    zd.delay_after_apply = 0.6  # applied, then the answer comes after the client gave up
    w = ZendeskWriter(zd.url, zd.user, zd.secret, timeout_s=0.2, sleep=sleeps)
    with pytest.raises(WriteFailed) as err:
        w.write(routing())
    assert err.value.retryable and "may have been applied" in err.value.reason
    assert [r.method for r in zd.requests] == ["PUT"] and sleeps == []
    zd.delay_after_apply = 0.0
    assert w.already_written(str(TICKET), MARKER)
    assert zd.notes(TICKET) == [NOTE]


def test_bad_credentials_are_401_not_retried(zd, sleeps) -> None:
    with pytest.raises(WriteFailed) as err:
        writer(zd, sleeps, token="wrong-token").write(routing())
    failed = err.value
    assert (failed.status, failed.retryable) == (401, False)
    assert "check the credentials" in failed.reason and "Couldn't authenticate" in failed.reason
    assert "wrong-token" not in failed.reason
    assert len(zd.requests) == 1 and sleeps == [] and zd.notes(TICKET) == []


def test_deleted_ticket_is_404_not_retried(zd, sleeps) -> None:
    with pytest.raises(WriteFailed) as err:
        writer(zd, sleeps).write(routing(ticket_ref="99999"))
    assert (err.value.status, err.value.retryable) == (404, False)
    assert "no longer exists" in err.value.reason and len(zd.requests) == 1


def test_group_zendesk_does_not_have_is_422_record_invalid(zd, sleeps) -> None:
    with pytest.raises(WriteFailed) as err:
        writer(zd, sleeps).write(routing(group="424242"))
    assert (err.value.status, err.value.retryable) == (422, False)
    assert "RecordInvalid" in err.value.reason and "group_id" in err.value.reason
    assert len(zd.requests) == 1 and zd.notes(TICKET) == []


@pytest.mark.parametrize(("kw", "says"), [({"group": "Cards team"}, "not a number"),
                                          ({"priority": "p1"}, "not one of"),
                                          ({"ticket_ref": "HELP-1"}, "not a Zendesk ticket")])
def test_values_zendesk_cannot_take_fail_before_any_request(zd, sleeps, kw, says) -> None:
    with pytest.raises(WriteFailed) as err:
        writer(zd, sleeps).write(routing(**kw))
    assert not err.value.retryable and says in err.value.reason
    assert zd.requests == []


def test_already_written_finds_the_private_note_across_comment_pages(zd, sleeps) -> None:
    w = writer(zd, sleeps)
    zd.comments[TICKET] = [zd._comment(20978392, f"reply {i}", public=True)
                           for i in range(150)]
    assert w.already_written(str(TICKET), "[cca:d-1]") is False
    w.write(routing())
    assert w.already_written(str(TICKET), "[cca:d-1]") is True
    assert w.already_written(str(TICKET), "[cca:d-2]") is False

    reads = [r for r in zd.requests if r.method == "GET"]
    assert all(r.path == f"/api/v2/tickets/{TICKET}/comments" for r in reads)
    assert all(r.query["page[size]"] == "100" for r in reads)
    assert ["page[after]" in r.query for r in reads[:2]] == [False, True]
    assert zd.violations == []


def test_marker_in_a_public_comment_does_not_count(zd, sleeps) -> None:
    zd.comments[TICKET].append(zd._comment(20978392, "quoting [cca:d-1]", public=True))
    assert writer(zd, sleeps).already_written(str(TICKET), "[cca:d-1]") is False


def test_own_actor_is_the_integration_user_id_asked_once(zd, sleeps) -> None:
    w = writer(zd, sleeps)
    assert w.own_actor() == w.own_actor() == str(zd.me_id)
    assert [(r.method, r.path) for r in zd.requests] == [("GET", "/api/v2/users/me")]
    assert zd.requests[0].header("authorization") == basic("ops@acme.example/token", "tok123")
