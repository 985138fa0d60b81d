"""Train on the small service-desk fixture, then exercise every stage, the audit and feedback."""

import json

import pytest
import sqlalchemy as sa

from cascade.cascade import Cascade
from cca.departments import load_department_map
from cca.embeddings import get_deep_embedder, get_embedder
from cca.errors import InputError
from cca.store.audit import append_decisions
from cca.store.tickets_repo import upsert_tickets
from cca.store.vectors import seed_track_record, track_records
from cca.tickets import Ticket
from pipelines.feedback import apply_feedback
from pipelines.import_tickets import import_parsed
from pipelines.lifecycle import prepare
from pipelines.read_tickets import Columns, read_ticket_file
from tests.conftest import FIXTURES
from training.train_classifier import train_from_store

COLS = Columns(text="message", label="intent", id="ticket_id", subject="subject",
               priority="priority")


@pytest.fixture(scope="module")
def trained(settings, db):
    with db.begin() as conn:
        conn.execute(sa.text(
            "TRUNCATE tickets, ticket_labels, ticket_embeddings, cache_track_record CASCADE"))
    depts = load_department_map(settings.department_map)
    import_parsed(db, read_ticket_file(FIXTURES / "service_desk.csv", COLS), depts)
    prepare(settings, db)
    embedder, deep = get_embedder(settings), get_deep_embedder(settings)
    bundle, report = train_from_store(settings, db, embedder, depts.mapping, deep_embedder=deep)
    return bundle, report


def test_training_saves_a_complete_bundle(settings, trained):
    bundle, report = trained
    info = json.loads((settings.models_dir / bundle.info.version / "bundle.json").read_text())
    assert (settings.models_dir / "CURRENT").read_text() == bundle.info.version
    assert info["labels"] == ["billing_question", "cancel_subscription", "delivery_delay",
                              "password_reset"]
    assert info["departments"]["delivery_delay"] == "Logistics"
    assert info["embedding_model_id"] == "minilm-l6-static-v2"
    assert info["deep_embedding_model_id"] == "all-MiniLM-L6-v2-onnx-dq8-v1"
    assert len(info["data_hash"]) == 64 and info["rules_version"]
    assert 0 < info["classifier_threshold"] <= 1 and 0 <= info["fast_threshold"] <= 1
    assert report.n_train + report.n_holdout == 48


def test_every_decision_says_who_answered_and_why(settings, db, trained):
    cascade = Cascade.load(settings, db)
    tickets = [
        Ticket(id="q1", body="I forgot my password again"),               # rule
        Ticket(id="q2", body="The parcel with my order is late, where is it?"),
        Ticket(id="q3", body="zxqv blorp", priority="high"),
    ]
    rule, clf, nonsense = cascade.classify_batch(tickets)
    assert (rule.stage, rule.label, rule.rule_id) == ("rules", "password_reset",
                                                      "forgot-password")
    assert rule.department == "Accounts"
    assert clf.stage in ("cache", "classifier") and clf.label == "delivery_delay"
    assert clf.urgency == "high" and clf.neighbours and clf.department == "Logistics"
    assert {"rules", "embed", "cache"} <= set(clf.timings_ms)
    assert nonsense.stage == "review" and nonsense.label is None
    assert nonsense.top_classes and "no stage confident enough" in nonsense.reason
    for d in (rule, clf, nonsense):
        assert d.model_version.startswith(trained[0].info.version)
        assert d.cost_usd == 0.0


def test_classes_without_evidence_for_their_bound_go_to_review(settings, db, trained):
    """48 tickets cannot support any class's precision bound: with per-class thresholds on,
    the classifier answers nothing and says why, where the common threshold answered."""
    bundle, _ = trained
    points = bundle.info.operating_points
    assert points["classes"].keys() == set(bundle.info.labels)
    assert all(p["status"] == "review" and p["threshold"] is None
               for p in points["classes"].values())
    tickets = [Ticket(id=f"q9-{i}", body=text) for i, text in enumerate((
        "The parcel with my order is late, where is it?",
        "My delivery still has not arrived after two weeks",
        "Why was I charged twice on my last invoice?",
        "Please cancel my subscription at the end of the month"))]
    common = Cascade.load(settings, db).classify_batch(tickets)
    guarded = Cascade.load(settings.model_copy(update={"per_class_thresholds": True}),
                           db).classify_batch(tickets)
    answered = [i for i, d in enumerate(common) if d.stage == "classifier"]
    assert answered, [(d.stage, d.reason) for d in common]
    assert all(d.stage != "classifier" for d in guarded)
    for i in answered:
        assert guarded[i].label is None and guarded[i].top_classes[0][0] == common[i].label
        assert "has not earned automatic answers" in guarded[i].reason


def test_cache_answers_once_a_label_has_a_track_record_and_feedback_moves_it(
    settings, db, trained
):
    cascade = Cascade.load(settings, db)
    model_id = cascade.embedder.model_id
    twin = Ticket(id="twin-1", body="Where is my package? Tracking has not moved for a week")
    with db.begin() as conn:
        seed_track_record(conn, model_id, {"delivery_delay": (0, 0)})
    cascade.refresh_track_records()
    assert cascade.classify(twin).stage != "cache"  # no evidence yet: lower bound 0 < 0.90

    with db.begin() as conn:
        seed_track_record(conn, model_id, {"delivery_delay": (200, 200)})
    cascade.refresh_track_records()
    decision = cascade.classify(twin)
    assert decision.stage == "cache" and decision.label == "delivery_delay"
    assert decision.neighbours[0].ticket_id == "SD-027"
    with db.begin() as conn:
        upsert_tickets(conn, [twin])
        append_decisions(conn, [(twin, decision)])

    # A person corrects the cache: the record drops and the label stops being reused.
    message = apply_feedback(settings, db, "twin-1", "billing_question")
    assert "cache answer corrected" in message
    assert "indexed after the next `cca prepare`" in message  # not redacted/validated yet
    prepare(settings, db)
    with db.begin() as conn:
        assert track_records(conn, model_id)["delivery_delay"] == (201, 200)
        stored = conn.execute(sa.text(
            "SELECT model_id, label, validated FROM ticket_embeddings "
            "WHERE ticket_id = 'twin-1' ORDER BY model_id")).all()
    # Both the cache's vector and the deep model's (kept for the next training) are stored.
    assert [tuple(r) for r in stored] == [
        ("all-MiniLM-L6-v2-onnx-dq8-v1", "billing_question", True),
        ("minilm-l6-static-v2", "billing_question", True),
    ]


def test_feedback_rejects_unknown_label_and_ticket(settings, db, trained):
    with pytest.raises(InputError, match="unknown label 'refunds'"):
        apply_feedback(settings, db, "SD-001", "refunds")
    with pytest.raises(InputError, match="no ticket 'nope'"):
        apply_feedback(settings, db, "nope", "password_reset")
