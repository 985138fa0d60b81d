"""How ``Engine.handle`` picks each ticket's answer (``serving.batch``): a decision not yet
fsync'ed wins over the idempotency store, a stored one is replayed, the rest are classified
once each, and a repeat within the batch replays its first occurrence."""

from __future__ import annotations

from concurrent.futures import Future

from cascade.cascade import Work
from cca.tickets import Decision, Ticket
from serving.batch import InBatch, Job, Pending, Served, answer_repeats, replay_known, to_classify


def _ticket(tid: str, request_hash: str = "h") -> InBatch:
    return InBatch(Job(Ticket(id=tid, body="printer on fire"), "tester", "req-1", "classify"),
                   request_hash)


def _decision(tid: str, label: str) -> Decision:
    return Decision(ticket_id=tid, label=label, department=None, confidence=0.9,
                    stage="classifier", model_version="m1")


def test_known_tickets_are_not_classified_and_repeats_are_marked():
    a, b, b_again, c, a_new = (_ticket("a"), _ticket("b"), _ticket("b"), _ticket("c"),
                               _ticket("a", "other content"))
    c.unsynced = Served(_decision("c", "hardware"), False)
    stored = [None, None, None, None, None]
    stored[0] = _decision("a", "billing").model_dump(mode="json")
    batch = [a, b, b_again, c, a_new]

    todo = to_classify(batch, stored)

    # Same id with new content is a new ticket; the second "b" replays the first.
    assert todo == [b, a_new]
    assert b_again.repeat_of is b
    assert a.repeat_of is None and c.repeat_of is None


def test_without_the_lookup_answer_every_unknown_ticket_is_classified_once():
    a, a_again = _ticket("a"), _ticket("a")
    assert to_classify([a, a_again], None) == [a]
    assert a_again.repeat_of is a


def test_not_yet_durable_decisions_win_over_the_store_and_wait_for_their_fsync():
    fsync: Future[None] = Future()
    a, b, c = _ticket("a"), _ticket("b"), _ticket("c")
    a.unsynced = Served(_decision("a", "fresh"), False, fsync)
    stored = [_decision("a", "old").model_dump(mode="json"),
              _decision("b", "billing").model_dump(mode="json"), None]

    replay_known([a, b, c], stored)

    assert a.answer == Served(_decision("a", "fresh"), True, fsync)
    assert b.answer == Served(_decision("b", "billing"), True)
    assert c.answer is None


def test_a_repeat_replays_its_first_occurrence_decided_or_pending():
    fsync: Future[None] = Future()
    llm: Future[list[Served]] = Future()
    a, a_again, b, b_again = _ticket("a"), _ticket("a"), _ticket("b"), _ticket("b")
    a.answer = Served(_decision("a", "hardware"), False, fsync)
    b.answer = Pending(llm, 3)
    a_again.repeat_of, b_again.repeat_of = a, b

    answer_repeats([a, a_again, b, b_again])

    assert a_again.answer == Served(_decision("a", "hardware"), True, fsync)
    assert b_again.answer == Pending(llm, 3, True)
    assert a.answer.replayed is False


def test_the_audit_record_holds_what_the_caller_gave_and_the_decision():
    t = _ticket("a")
    t.work = Work(ticket=t.job.ticket, timings={}, decision=_decision("a", "hardware"))
    record = t.audit_record("2024-01-01T00:00:00+00:00")
    assert record["kind"] == "decision" and record["request_hash"] == "h"
    assert record["ticket"] == {"id": "a", "body": "printer on fire"}
    assert record["decision"]["label"] == "hardware"
    assert (record["caller"], record["request_id"], record["endpoint"]) == (
        "tester", "req-1", "classify")
