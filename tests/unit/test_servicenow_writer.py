"""ServiceNowWriter against the loopback ServiceNow stand-in (real sockets)."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest

from pipelines.integrations.servicenow import WRITE_FIELDS, ServiceNowWriter
from pipelines.integrations.writeback import Routing, WriteFailed
from tests.standins.base import Reply
from tests.standins.servicenow import ServiceNowStandIn, failure

INC1 = "9d385017c611228701d22104cc95c371"   # INC0010001 in the recorded pages
INC2 = "e8caedcbc0a80164017df472f39eaed1"   # INC0010002
CARD_PAYMENTS = "6b2f1a0f1b6a2010c0a8f3a2604bcb12"  # rules/routing.yaml
REVIEW = "6b2f1a0f1b6a2010c0a8f3a2604bcb10"
PATCH_PATH = f"/api/now/table/incident/{INC1}"


@pytest.fixture
def sn() -> Iterator[ServiceNowStandIn]:
    with ServiceNowStandIn() as standin:
        yield standin


def writer(sn: ServiceNowStandIn, sleeps: list[float] | None = None, *,
           password: str | None = None, timeout_s: float = 5.0) -> ServiceNowWriter:
    return ServiceNowWriter(sn.url, sn.user, sn.password if password is None else password,
                            timeout_s=timeout_s,
                            sleep=(sleeps if sleeps is not None else []).append)


def routing(ref: str = INC1, *, group: str | None = CARD_PAYMENTS, priority: str | None = "2",
            key: str = "k1", review: bool = False) -> Routing:
    marker = f"[cca:{key}]"
    tags = ("cca_needs_review",) if review else ("cca_routed",)
    return Routing(ticket_ref=ref, group=group, priority=priority, tags=tags,
                   note=f"Routed by Call Centre Agent to Card Payments. {marker}",
                   marker=marker, review=review)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_write_is_one_patch_with_group_urgency_and_an_internal_work_note(sn) -> None:
    writer(sn).write(routing())

    [req] = sn.requests
    assert (req.method, req.path) == ("PATCH", PATCH_PATH)
    assert req.query == {"sysparm_fields": WRITE_FIELDS,
                         "sysparm_exclude_reference_link": "true"}
    assert req.header("authorization") == basic(sn.user, sn.password)
    assert req.header("content-type") == "application/json"
    assert req.json() == {
        "assignment_group": CARD_PAYMENTS, "urgency": "2",
        "work_notes": "Tags: cca_routed\nRouted by Call Centre Agent to Card Payments. [cca:k1]"}
    ticket = sn.tickets[INC1]
    assert (ticket["assignment_group"], ticket["urgency"]) == (CARD_PAYMENTS, "2")
    assert ticket["sys_updated_by"] == sn.user == writer(sn).own_actor()
    assert sn.notes(INC1) == [req.json()["work_notes"]]
    assert [r["element"] for r in sn.journal] == ["work_notes"]  # never public comments
    assert sn.violations == []


def test_tags_and_notes_are_added_and_unrouted_fields_left_alone(sn) -> None:
    sn.tickets[INC1]["assignment_group"] = "6b2f1a0f1b6a2010c0a8f3a2604bcb19"
    w = writer(sn)
    w.write(routing(group=None, priority=None, key="a"))
    w.write(routing(group=None, priority=None, key="b"))

    assert [r.json() for r in sn.requests] == [
        {"work_notes": "Tags: cca_routed\nRouted by Call Centre Agent to Card Payments. "
                       f"[cca:{k}]"} for k in ("a", "b")]
    assert len(sn.notes(INC1)) == 2  # the earlier note is still there
    assert sn.tickets[INC1]["assignment_group"] == "6b2f1a0f1b6a2010c0a8f3a2604bcb19"
    assert sn.violations == []


def test_review_routing_goes_to_the_triage_group_with_the_review_tag(sn) -> None:
    writer(sn).write(routing(group=REVIEW, priority=None, review=True))

    body = sn.requests[0].json()
    assert body["assignment_group"] == REVIEW and "urgency" not in body
    assert body["work_notes"].splitlines()[0] == "Tags: cca_needs_review"
    assert sn.tickets[INC1]["assignment_group"] == REVIEW


def test_429_is_retried_after_retry_after(sn) -> None:
    sleeps: list[float] = []
    sn.fail_next(1, Reply(429, {"error": {"message": "Too many requests"}, "status": "failure"},
                          {"Retry-After": "2"}), PATCH_PATH)
    writer(sn, sleeps).write(routing())
    assert sleeps == [2.0]
    assert [r.method for r in sn.requests] == ["PATCH", "PATCH"]
    assert len(sn.notes(INC1)) == 1


def test_503_is_retryable_but_not_resent_in_the_call(sn) -> None:
    """A 503 may have been applied: the worker retries later, asking for the note first."""
    sleeps: list[float] = []
    sn.fail_next(1, failure(503, "Service Unavailable", "instance is busy"), PATCH_PATH)
    w = writer(sn, sleeps)
    with pytest.raises(WriteFailed) as err:
        w.write(routing())
    assert (err.value.status, err.value.retryable) == (503, True)
    assert sleeps == [] and len(sn.requests) == 1 and sn.notes(INC1) == []
    w.write(routing())
    assert sn.tickets[INC1]["urgency"] == "2" and len(sn.notes(INC1)) == 1


def test_outage_is_retryable_and_the_write_lands_once_the_instance_is_back(sn) -> None:
    sleeps: list[float] = []
    sn.stop()
    with pytest.raises(WriteFailed) as err:
        writer(sn, sleeps).write(routing())
    assert err.value.retryable and "cannot reach" in err.value.reason
    assert sleeps == [0.5, 1.0]
    sn.start()
    writer(sn).write(routing())
    assert len(sn.notes(INC1)) == 1


def test_unanswered_patch_is_not_resent_and_already_written_finds_it(sn) -> None:
    sleeps: list[float] = []
    sn.delay_after_apply = 0.6
    with pytest.raises(WriteFailed) as err:
        writer(sn, sleeps, timeout_s=0.2).write(routing())
    assert err.value.retryable and "may have been applied" in err.value.reason
    assert sleeps == [] and len(sn.requests) == 1
    sn.delay_after_apply = 0.0
    assert writer(sn).already_written(INC1, "[cca:k1]") is True
    assert len(sn.notes(INC1)) == 1


@pytest.mark.parametrize(("ref", "password", "group", "status", "words"), [
    (INC1, "wrong", CARD_PAYMENTS, 401, ["check the credentials", "User Not Authenticated"]),
    ("0" * 32, None, CARD_PAYMENTS, 404, ["no longer exists", "No Record found"]),
    (INC1, None, "0" * 32, 400, ["Invalid reference", "assignment_group"]),
])
def test_refusals_are_not_retried(sn, ref, password, group, status, words) -> None:
    sleeps: list[float] = []
    with pytest.raises(WriteFailed) as err:
        writer(sn, sleeps, password=password).write(routing(ref, group=group))
    assert (err.value.status, err.value.retryable) == (status, False)
    assert all(w in err.value.reason for w in words) and sn.password not in err.value.reason
    assert sleeps == [] and len(sn.requests) == 1
    assert len(sn.violations) == 1 and str(status) in sn.violations[0]
    assert sn.journal == []


@pytest.mark.parametrize(("ref", "priority", "words"), [
    (INC1, "High", "urgency must be 1, 2 or 3"),
    ("../sys_user/1", "2", "is not an incident sys_id"),
])
def test_values_servicenow_cannot_take_fail_before_any_request(sn, ref, priority,
                                                                words) -> None:
    with pytest.raises(WriteFailed) as err:
        writer(sn).write(routing(ref, priority=priority))
    assert not err.value.retryable and words in err.value.reason
    assert sn.requests == []


def test_a_field_the_acl_silently_skips_is_a_failure_not_success() -> None:
    with ServiceNowStandIn(field_acl={"assignment_group"}) as sn, \
            pytest.raises(WriteFailed) as err:
        writer(sn).write(routing())
    assert (err.value.status, err.value.retryable) == (200, False)
    assert f"did not apply assignment_group={CARD_PAYMENTS!r}" in err.value.reason


def test_already_written_reads_the_incidents_work_notes(sn) -> None:
    w = writer(sn)
    assert w.already_written(INC1, "[cca:k1]") is False
    w.write(routing())
    w.write(routing(INC2, key="k2"))
    assert w.already_written(INC1, "[cca:k1]") is True
    assert w.already_written(INC1, "[cca:k2]") is False  # that note is on another incident
    assert w.already_written(INC2, "[cca:k2]") is True

    gets = [r for r in sn.requests if r.method == "GET"]
    assert {(r.path, r.header("authorization")) for r in gets} == {
        ("/api/now/table/sys_journal_field", basic(sn.user, sn.password))}
    assert gets[1].query == {
        "sysparm_query": f"element_id={INC1}^element=work_notes^valueLIKE[cca:k1]",
        "sysparm_fields": "sys_id", "sysparm_limit": "1"}
    assert sn.violations == []


def test_already_written_with_bad_credentials_is_write_failed(sn) -> None:
    with pytest.raises(WriteFailed) as err:
        writer(sn, password="wrong").already_written(INC1, "[cca:k1]")
    assert (err.value.status, err.value.retryable) == (401, False)
    with pytest.raises(WriteFailed, match="encoded query"):
        writer(sn).already_written(INC1, "[cca:a^b]")


def test_own_actor_is_the_integration_user_without_a_request(sn) -> None:
    assert writer(sn).own_actor() == "cca.integration"
    assert sn.requests == []


def test_own_write_comes_back_as_an_update_by_own_actor(sn) -> None:
    from pipelines.integrations.servicenow import parse_webhook

    w = writer(sn)
    w.write(routing())
    [event] = parse_webhook(*sn.webhook_for_last_write(INC1), sn.secret)
    assert (event.kind, event.actor) == ("updated", w.own_actor())
    assert event.changes == {"group": CARD_PAYMENTS, "priority": "normal"}
    [agent] = parse_webhook(*sn.agent_change(INC1, "beth.anglin", assignment_group=REVIEW),
                            sn.secret)
    assert (agent.kind, agent.actor, agent.changes) == ("updated", "beth.anglin",
                                                        {"group": REVIEW})
