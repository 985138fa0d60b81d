"""JiraWriter against the Jira stand-in over real sockets: the exact requests, the state they
leave, and how refusals and throttling come back."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest

from pipelines.integrations.jira_writer import JiraWriter
from pipelines.integrations.writeback import Routing, WriteFailed
from tests.standins.base import Reply
from tests.standins.jira import ACCOUNT_ID, JiraStandIn

AUTH = "Basic " + base64.b64encode(b"bot@acme.example:atl-token").decode()
RT_FIELD = "customfield_10010"
MARK = "[cca:dec-1]"


@pytest.fixture
def jira() -> Iterator[JiraStandIn]:
    with JiraStandIn() as standin:
        yield standin


def writer(standin: JiraStandIn, sleeps: list[float], *, token: str = "atl-token",
           group_field: str | None = RT_FIELD) -> JiraWriter:
    return JiraWriter(standin.url, "bot@acme.example", token, group_field,
                      sleep=sleeps.append, timeout_s=5.0)


def routing(ref: str = "HELP-1", group: str | None = "12", priority: str | None = "High",
            tags: tuple[str, ...] = ("cca_routed",), review: bool = False) -> Routing:
    return Routing(ref, group, priority, tags, f"Routed by Call Centre Agent. {MARK}", MARK,
                   review)


def test_write_edits_the_issue_then_adds_an_internal_comment(jira: JiraStandIn) -> None:
    jira.issues["HELP-1"]["labels"] = ["vip"]
    sleeps: list[float] = []
    writer(jira, sleeps).write(routing())

    edit, comment = jira.requests
    assert (edit.method, edit.path) == ("PUT", "/rest/api/3/issue/HELP-1")
    assert edit.json() == {"fields": {RT_FIELD: "12", "priority": {"name": "High"}},
                           "update": {"labels": [{"add": "cca_routed"}]}}
    assert (comment.method, comment.path) == ("POST",
                                              "/rest/servicedeskapi/request/HELP-1/comment")
    assert comment.json() == {"body": f"Routed by Call Centre Agent. {MARK}", "public": False}
    assert edit.header("authorization") == comment.header("authorization") == AUTH
    assert edit.header("content-type") == "application/json"

    issue = jira.issues["HELP-1"]
    assert issue["labels"] == ["vip", "cca_routed"]          # added, the agent's label kept
    assert (jira.group_of("HELP-1"), issue["priority"]["name"]) == ("12", "High")
    assert [(c["body"], c["public"]) for c in jira.comments["HELP-1"]] == [
        (f"Routed by Call Centre Agent. {MARK}", False)]
    assert jira.violations == [] and sleeps == []


def test_review_routing_writes_the_triage_group_and_review_tag(jira: JiraStandIn) -> None:
    writer(jira, []).write(routing(group="10", priority=None,
                                   tags=("cca_routed", "cca_needs_review"), review=True))
    assert jira.requests[0].json() == {
        "fields": {RT_FIELD: "10"},
        "update": {"labels": [{"add": "cca_routed"}, {"add": "cca_needs_review"}]}}
    assert jira.issues["HELP-1"]["labels"] == ["cca_routed", "cca_needs_review"]
    assert jira.group_of("HELP-1") == "10" and jira.violations == []


def test_select_list_group_field_is_written_as_an_option_id() -> None:
    with JiraStandIn(group_field="customfield_10050") as jira:
        writer(jira, [], group_field="customfield_10050").write(routing(priority=None, tags=()))
        assert jira.requests[0].json() == {"fields": {"customfield_10050": {"id": "12"}}}
        assert jira.group_of("HELP-1") == "12" and jira.violations == []


def test_nothing_to_set_sends_only_the_comment(jira: JiraStandIn) -> None:
    writer(jira, []).write(routing(group=None, priority=None, tags=()))
    assert [(r.method, r.path) for r in jira.requests] == [
        ("POST", "/rest/servicedeskapi/request/HELP-1/comment")]


def test_group_without_a_group_field_fails_before_any_request(jira: JiraStandIn) -> None:
    with pytest.raises(WriteFailed, match="group_field") as err:
        writer(jira, [], group_field=None).write(routing())
    assert err.value.retryable is False and jira.requests == []


def test_429_with_retry_after_is_waited_then_applied_once(jira: JiraStandIn) -> None:
    jira.fail_next(1, Reply(429, {"errorMessages": ["Rate limit exceeded"]},
                            {"Retry-After": "2"}), r"/rest/api/3/issue/")
    sleeps: list[float] = []
    writer(jira, sleeps).write(routing())
    assert sleeps == [2.0]
    assert [r.method for r in jira.requests] == ["PUT", "PUT", "POST"]
    assert jira.issues["HELP-1"]["labels"] == ["cca_routed"] and len(jira.comments["HELP-1"]) == 1


def test_503_on_the_comment_is_retryable_but_not_resent_in_the_call(
        jira: JiraStandIn) -> None:
    """A 503 may have been applied: the worker retries later, asking for the note first."""
    jira.fail_next(1, Reply(503, {"errorMessages": ["Service unavailable"]}), r"/comment$")
    sleeps: list[float] = []
    w = writer(jira, sleeps)
    with pytest.raises(WriteFailed) as err:
        w.write(routing())
    assert (err.value.status, err.value.retryable) == (503, True)
    assert sleeps == [] and [r.method for r in jira.requests] == ["PUT", "POST"]
    w.write(routing())  # the fields again (idempotent), then the note once
    assert len(jira.comments["HELP-1"]) == 1


def test_throttled_past_the_attempts_is_retryable_with_the_hint(jira: JiraStandIn) -> None:
    jira.fail_next(5, Reply(429, {"errorMessages": ["Rate limit exceeded"]},
                            {"Retry-After": "30"}))
    sleeps: list[float] = []
    with pytest.raises(WriteFailed) as err:
        writer(jira, sleeps).write(routing())
    assert (err.value.retryable, err.value.status, err.value.retry_after) == (True, 429, 30.0)
    assert sleeps == [5.0, 5.0] and len(jira.requests) == 3     # capped in the call


def test_unreachable_jira_is_retryable(jira: JiraStandIn) -> None:
    jira.stop()
    with pytest.raises(WriteFailed, match="cannot reach") as err:
        writer(jira, []).write(routing())
    assert err.value.retryable is True


@pytest.mark.parametrize(("make", "status", "words"), [
    (lambda: routing(), 401, "check the credentials"),
    (lambda: routing(ref="HELP-404"), 404, "Issue does not exist"),
    (lambda: routing(group="99"), 400, RT_FIELD),
    (lambda: routing(priority="Urgent"), 400, "priority"),
    (lambda: routing(tags=("needs review",)), 400, "labels"),
])
def test_refusals_are_not_retried_and_say_why(jira: JiraStandIn, make, status, words) -> None:
    sleeps: list[float] = []
    w = writer(jira, sleeps, token="wrong" if status == 401 else "atl-token")
    with pytest.raises(WriteFailed) as err:
        w.write(make())
    assert (err.value.status, err.value.retryable) == (status, False)
    assert words in err.value.reason and "atl-token" not in err.value.reason
    assert sleeps == [] and len(jira.requests) == 1 and len(jira.violations) == 1
    assert jira.issues["HELP-1"]["labels"] == [] and jira.comments["HELP-1"] == []


def test_already_written_reads_every_internal_comment_page() -> None:
    with JiraStandIn(comment_page=2) as jira:
        w = writer(jira, [])
        for n in range(4):
            jira.comments["HELP-2"].append({"id": str(n), "body": f"note {n}", "public": False})
        jira.comments["HELP-2"].append({"id": "p", "body": f"quoted {MARK}", "public": True})
        assert w.already_written("HELP-2", MARK) is False   # only a public comment has it
        reads = [r.query for r in jira.requests]
        assert [q["start"] for q in reads] == ["0", "2"]
        assert all((q["public"], q["internal"]) == ("false", "true") for q in reads)
        assert all(r.header("authorization") == AUTH for r in jira.requests)

        w.write(routing(ref="HELP-2"))
        assert w.already_written("HELP-2", MARK) is True
        assert [q["start"] for q in (r.query for r in jira.requests[-3:])] == ["0", "2", "4"]
        assert w.already_written("HELP-2", "[cca:other]") is False
        assert jira.violations == []


def test_already_written_on_an_unknown_issue_is_a_failure(jira: JiraStandIn) -> None:
    with pytest.raises(WriteFailed) as err:
        writer(jira, []).already_written("HELP-404", MARK)
    assert (err.value.status, err.value.retryable) == (404, False)


def test_own_actor_is_the_integration_users_account_id_asked_once(jira: JiraStandIn) -> None:
    w = writer(jira, [])
    assert w.own_actor() == w.own_actor() == ACCOUNT_ID
    assert [(r.method, r.path) for r in jira.requests] == [("GET", "/rest/api/3/myself")]
    assert jira.requests[0].header("authorization") == AUTH
