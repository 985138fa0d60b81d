"""Retraining end to end on real MLflow (SQLite under the test home) and the embedded PostgreSQL.

Each module gets its own CCA_HOME (models, CURRENT, MLflow store) and registered-model name
on the session's PostgreSQL, so the gate's decisions here never touch another module's model.
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
from mlflow import MlflowClient

from cca.bundle import current_version, load_track_record_seeds
from cca.departments import load_department_map
from cca.embeddings import get_deep_embedder, get_embedder
from cca.errors import StateError
from cca.settings import Settings
from cca.store import Database
from pipelines.import_tickets import import_parsed
from pipelines.index_tickets import index_labelled_tickets
from pipelines.read_tickets import Columns, read_ticket_file
from tests.conftest import FIXTURES
from training import registry, steps
from training.holdout import in_holdout
from training.results import Candidate, Registration
from training.train_classifier import TrainOptions, train_from_store

COLS = Columns(text="message", label="intent", id="ticket_id", subject="subject",
               priority="priority")


def module_settings(base: Settings, db: Database, home: Path, **overrides: object) -> Settings:
    """A fresh CCA_HOME on the session's PostgreSQL, sharing the distilled embedding table."""
    get_embedder(base)  # distil once per session, under the session home
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "embeddings").exists():
        (home / "embeddings").symlink_to(base.home / "embeddings")
    values = {"home": home, "database_url": db.url.render_as_string(hide_password=False),
              "rules_path": base.rules_path, "department_map": base.department_map,
              "train_holdout_fraction": 0.3, "promotion_min_macro_f1": 0.6, **overrides}
    return Settings(**values)  # type: ignore[arg-type]


def sanitize_as_is(db: Database) -> None:
    """Stand-in for sanitize + validate: redacted text = raw text (the fixture has no PII)."""
    with db.begin() as conn:
        conn.execute(sa.text(
            "UPDATE tickets SET clean_subject = subject, clean_body = body, "
            "clean_hash = content_hash, sanitized_for = content_hash, "
            "checked_for = content_hash"))


def load_fixture(settings: Settings, db: Database) -> None:
    with db.begin() as conn:
        conn.execute(sa.text(
            "TRUNCATE tickets, ticket_labels, ticket_embeddings, cache_track_record CASCADE"))
    depts = load_department_map(settings.department_map)
    import_parsed(db, read_ticket_file(FIXTURES / "service_desk.csv", COLS), depts)
    sanitize_as_is(db)
    index_labelled_tickets(db, get_embedder(settings))
    index_labelled_tickets(db, get_deep_embedder(settings), hnsw=False)


def serving_seeds(db: Database, model_id: str) -> dict[str, tuple[int, int]]:
    """The serving cache's training-time track record (feedback counts left out)."""
    with db.begin() as conn:
        rows = conn.execute(sa.text(
            "SELECT label, seed_reuses, seed_confirmed FROM cache_track_record "
            "WHERE model_id = :m"), {"m": model_id}).all()
    return {label: (int(r), int(c)) for label, r, c in rows if (r, c) != (0, 0)}


def plant_sentinel_seed(db: Database, model_id: str) -> None:
    """A track record no training computes: it survives only if nothing re-seeds the cache."""
    with db.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO cache_track_record (model_id, label, seed_reuses, seed_confirmed) "
            "VALUES (:m, 'sentinel', 7, 3) ON CONFLICT (model_id, label) DO UPDATE SET "
            "seed_reuses = 7, seed_confirmed = 3"), {"m": model_id})


def bundle_seeds(s: Settings, bundle_version: str) -> tuple[str, dict[str, tuple[int, int]]]:
    found = load_track_record_seeds(s.models_dir, bundle_version)
    assert found is not None, f"{bundle_version} saved no track-record seeds"
    return found


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s(settings, db, tmp_path_factory) -> Settings:
    return module_settings(settings, db, tmp_path_factory.mktemp("retrain"),
                           registered_model="cca-test-retrain")


@pytest.fixture(scope="module")
def first(s, db) -> dict:
    load_fixture(s, db)
    t0 = time.perf_counter()
    result = steps.retrain(s, db)
    result["_seconds"] = time.perf_counter() - t0
    return result


def champion_of(s: Settings) -> str | None:
    mv = registry.champion(MlflowClient(s.tracking_uri, s.tracking_uri), s.registered_model)
    return registry.number(mv) if mv else None


def test_first_candidate_is_promoted_served_and_fully_logged(s, db, first):
    print(f"first retrain (incl. MLflow DB init) {first['_seconds']:.1f}s, "
          f"MLflow logging {first['mlflow_seconds']}s, pyfunc {first['pyfunc_log_seconds']}s")
    json.dumps({k: v for k, v in first.items() if k != "_seconds"})  # XCom-safe
    # the flat dict reads back as the registration it came from (what the DAG passes on)
    promotion_only = {"promoted", "reasons", "serving", "already_decided", "retrain_seconds",
                      "_seconds"}
    assert Registration.from_dict(first).to_dict() == {
        k: v for k, v in first.items() if k not in promotion_only}
    assert first["promoted"] is True and first["reasons"] == []
    assert first["champion"] is None and first["model_version"] == "1"
    assert current_version(s.models_dir) == first["bundle_version"]
    assert champion_of(s) == "1"
    client = MlflowClient(s.tracking_uri, s.tracking_uri)
    run = client.get_run(first["run_id"])
    assert run.data.params["embedding_model_id"] == "minilm-l6-static-v2"
    assert run.data.params["rules_version"] and len(run.data.params["data_hash"]) == 64
    assert {"holdout_macro_f1", "holdout_accuracy", "holdout_cascade_coverage",
            "holdout_classifier_share"} <= set(run.data.metrics)
    inputs = {next(t.value for t in d.tags if t.key == "mlflow.data.context"): d.dataset
              for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"training", "evaluation"}
    assert json.loads(inputs["training"].profile)["num_rows"] == first["n_fit"]
    assert json.loads(inputs["evaluation"].profile)["num_rows"] == first["n_holdout"]
    files = {f.path for f in client.list_artifacts(first["run_id"], "evaluation")}
    assert {"evaluation/confusion_matrix.png", "evaluation/per_class_report.json",
            "evaluation/per_class.png", "evaluation/summary.csv",
            "evaluation/operating_points.json"} <= files
    card = client.download_artifacts(first["run_id"], "model_card.md")
    assert "How to roll back" in Path(card).read_text()
    mv = client.get_model_version(s.registered_model, "1")
    assert mv.tags["bundle_version"] == first["bundle_version"]
    assert_reads_in_mlflow(s, client, first)
    with db.begin() as conn:
        actions = conn.execute(sa.text(
            "SELECT action FROM model_events WHERE model = :m ORDER BY id"),
            {"m": s.registered_model}).scalars().all()
    assert actions == ["register", "promote"]
    model_id, seeds = bundle_seeds(s, first["bundle_version"])
    assert serving_seeds(db, model_id) == {k: v for k, v in seeds.items() if v != (0, 0)}


def assert_reads_in_mlflow(s: Settings, client: MlflowClient, first: dict) -> None:
    """What a data scientist opening the UI needs (issue #21): class names in the per-class
    report, the gate's decision on run and version, metrics linked to the model and the
    holdout dataset, descriptions everywhere, and both aliases after a promotion."""
    run = client.get_run(first["run_id"])
    table = pd.read_csv(client.download_artifacts(first["run_id"],
                                                  "evaluation/per_class_report.csv"))
    assert list(table.columns[:5]) == ["class", "precision", "recall", "f1", "support"]
    assert {"precision_bound", "threshold", "status"} <= set(table.columns)
    assert sorted(table["class"]) == sorted(set(first["holdout_labels"]))  # no summary rows
    summary = pd.read_csv(client.download_artifacts(first["run_id"], "evaluation/summary.csv"))
    assert summary.set_index("metric").loc["accuracy", "value"] == pytest.approx(
        run.data.metrics["holdout_accuracy"], abs=1e-6)
    for tags in (run.data.tags, client.get_model_version(s.registered_model, "1").tags):
        assert tags["gate.decision"] == "passed" and tags["gate.champion_version"] == "-"
        assert float(tags["gate.min_macro_f1"]) == s.promotion_min_macro_f1
    assert run.data.metrics["gate_passed"] == 1.0
    assert run.data.tags["mlflow.note.content"].startswith("Promotion gate: passed")
    assert "# Model card" in run.data.tags["mlflow.note.content"]
    model = client.get_logged_model(first["model_id"])
    linked = {m.key: m for m in model.metrics}
    holdout = {k: m for k, m in linked.items() if k.startswith("holdout_")}
    assert "holdout_macro_f1" in holdout
    assert all(m.dataset_name.startswith("tickets-holdout-") for m in holdout.values())
    assert linked["holdout_macro_f1"].model_id == first["model_id"]
    assert linked["fit_seconds"].dataset_name is None  # not a holdout measurement
    registered = client.get_registered_model(s.registered_model)
    assert "@challenger" in registered.description
    assert {k: str(v) for k, v in registered.aliases.items()} == {"champion": "1",
                                                                  "challenger": "1"}
    assert "Promotion gate: passed" in client.get_model_version(
        s.registered_model, "1").description
    experiment = client.get_experiment(run.info.experiment_id)
    assert "one run per candidate" in experiment.tags["mlflow.note.content"]


def test_holdout_is_stable_and_never_fitted(s, db, first):
    model_id, _ = bundle_seeds(s, first["bundle_version"])
    plant_sentinel_seed(db, model_id)
    candidate = steps.train_candidate(s, db)
    # training a candidate leaves the serving cache's track record alone ...
    assert serving_seeds(db, model_id)["sentinel"] == (7, 3)
    assert bundle_seeds(s, candidate.bundle_version)[0] == model_id  # ... and saves its own
    registry.apply_track_record_seeds(s, db, first["bundle_version"])  # the champion's again
    assert "sentinel" not in serving_seeds(db, model_id)
    assert candidate.n_holdout == first["n_holdout"] > 0
    assert candidate.holdout_ids == first["holdout_ids"]
    assert candidate.n_fit + candidate.n_holdout == 48
    # the same holdout, so the same candidate scores on it as the first model's
    evaluation = steps.evaluate_candidate(candidate, s, db)
    assert evaluation.champion is not None and evaluation.champion.version == "1"
    assert evaluation.holdout_n == first["holdout_n"]
    assert current_version(s.models_dir) == first["bundle_version"]  # training alone serves nothing
    # what was fitted: no holdout ticket, and only ids outside the hash holdout (bar classes
    # kept whole in fit)
    _, report = train_from_store(s, db, get_embedder(s), {}, get_deep_embedder(s),
                                 options=TrainOptions(make_current=False))
    fitted = dict(zip(report.fit_ids, report.fit_labels, strict=True))
    assert set(report.holdout_ids) == set(first["holdout_ids"])
    assert not set(fitted) & set(report.holdout_ids)
    assert all(not in_holdout(tid, s.train_holdout_fraction) or label in report.kept_in_fit
               for tid, label in fitted.items())
    assert current_version(s.models_dir) == first["bundle_version"]


def test_evaluation_scores_exactly_the_candidates_holdout(s, db, first):
    ids, labels = first["holdout_ids"][:5], first["holdout_labels"][:5]
    candidate = replace(Candidate.from_dict(first), holdout_ids=ids, holdout_labels=labels)
    evaluation = steps.evaluate_candidate(candidate, s, db)
    assert evaluation.holdout_n == 5 and evaluation.notes == []
    assert set(evaluation.candidate_scores["per_class_f1"]) == set(labels)
    assert evaluation.champion is not None and evaluation.champion.scores is not None
    assert (evaluation.champion.scores["per_class_f1"]
            == evaluation.candidate_scores["per_class_f1"])  # v1 is this very bundle


def test_deciding_again_is_idempotent(s, db, first):
    again = steps.promote_if_better(Registration.from_dict(first), s, db)
    assert again.already_decided and again.promoted
    assert len(registry.events(db, s.registered_model, ("promote",))) == 1


def test_candidate_below_the_floor_is_refused_and_champion_keeps_serving(s, db, first):
    strict = s.model_copy(update={"promotion_min_macro_f1": 1.01})
    result = steps.retrain(strict, db)
    assert result["promoted"] is False
    assert any("< required 1.0100" in r for r in result["reasons"])
    assert "champion v1" in result["serving"]
    assert champion_of(s) == "1" and current_version(s.models_dir) == first["bundle_version"]
    client = MlflowClient(s.tracking_uri, s.tracking_uri)
    challenger = client.get_model_version_by_alias(s.registered_model, "challenger")
    assert registry.number(challenger) == result["model_version"] != "1"
    refused = registry.events(db, s.registered_model, ("gate-refused",))
    assert refused[-1].version == result["model_version"]
    assert "required" in refused[-1].reason
    # the decision, the comparison with the champion and the per-class change, in MLflow
    run = client.get_run(result["run_id"])
    for tags in (run.data.tags, challenger.tags):
        assert tags["gate.decision"] == "refused" and "< required 1.0100" in tags["gate.reasons"]
        assert tags["gate.champion_version"] == "1" and tags["gate.worst_class"] != "-"
        assert float(tags["gate.min_macro_f1"]) == 1.01
    metrics = run.data.metrics
    assert metrics["gate_passed"] == 0.0
    assert metrics["gate_delta_macro_f1"] == pytest.approx(
        metrics["gate_candidate_macro_f1"] - metrics["gate_champion_macro_f1"], abs=1e-6)
    assert run.data.tags["mlflow.note.content"].startswith("Promotion gate: refused")
    gate_files = {f.path for f in client.list_artifacts(result["run_id"], "gate")}
    assert gate_files == {"gate/per_class_f1_delta.png", "gate/per_class_f1_delta.csv"}
    delta = pd.read_csv(client.download_artifacts(result["run_id"],
                                                  "gate/per_class_f1_delta.csv"))
    assert list(delta.columns) == ["class", "champion_f1", "candidate_f1", "delta"]
    assert delta["delta"].is_monotonic_increasing  # largest fall first


def test_candidate_trained_on_shuffled_labels_is_refused(s, db, first):
    import random

    with db.begin() as conn:
        rows = conn.execute(sa.text("SELECT ticket_id, label FROM ticket_labels")).all()
        fit = [(tid, label) for tid, label in rows if not in_holdout(tid, s.train_holdout_fraction)]
        shuffled = [label for _, label in fit]
        random.Random(7).shuffle(shuffled)
        conn.execute(sa.text("UPDATE ticket_labels SET label = :l WHERE ticket_id = :t"),
                     [{"t": tid, "l": lab} for (tid, _), lab in zip(fit, shuffled, strict=True)])
    try:
        lenient = s.model_copy(update={"promotion_min_macro_f1": 0.0})
        result = steps.retrain(lenient, db)
    finally:
        load_fixture(s, db)
    assert result["promoted"] is False
    assert any("champion's" in r or "drop more than" in r for r in result["reasons"]), result
    assert result["candidate_scores"]["macro_f1"] < result["champion"]["scores"]["macro_f1"]
    assert champion_of(s) == "1" and current_version(s.models_dir) == first["bundle_version"]


def test_mlflow_unreachable_fails_in_one_line_and_changes_nothing(s, db, first):
    down = s.model_copy(update={"mlflow_tracking_uri": f"http://127.0.0.1:{closed_port()}"})
    t0 = time.perf_counter()
    with pytest.raises(StateError) as err:
        steps.train_candidate(down, db)
    message = str(err.value)
    assert time.perf_counter() - t0 < 15
    assert "\n" not in message and "is unreachable" in message
    assert message.endswith(f"champion v1 ({first['bundle_version']}) keeps serving")
    with pytest.raises(StateError, match="unreachable"):
        steps.promote_if_better(replace(Registration.from_dict(first), model_version="99"),
                                down, db)
    assert champion_of(s) == "1" and current_version(s.models_dir) == first["bundle_version"]


def test_registered_pyfunc_loads_and_predicts_with_its_signature(s, first, monkeypatch):
    import mlflow.pyfunc
    import pandas as pd

    monkeypatch.setenv("CCA_HOME", str(s.home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", s.tracking_uri)
    t0 = time.perf_counter()
    model = mlflow.pyfunc.load_model(f"models:/{s.registered_model}@champion")
    print(f"pyfunc load {time.perf_counter() - t0:.1f}s")
    assert model.metadata.get_input_schema().input_names() == ["subject", "body"]
    out = model.predict(pd.DataFrame({
        "subject": ["Password", "", ""],
        "body": ["I forgot my password again", "The parcel with my order is late, where is it?",
                 "zxqv blorp"]}))
    assert list(out.columns) == ["label", "department", "confidence", "needs_review", "stage"]
    assert out.loc[0, "label"] == "password_reset" and out.loc[0, "stage"] == "rules"
    assert out.loc[1, "label"] == "delivery_delay" and out.loc[1, "department"] == "Logistics"
    assert out["confidence"].between(0, 1).all()
    with pytest.raises(Exception, match="body"):
        model.predict(pd.DataFrame({"subject": ["only a subject"]}))


def test_an_interrupted_promotion_is_completed_not_refused(s, db, first):
    """The alias moved but CURRENT, the seeds and the event did not: a retry finishes it."""
    registered = steps.register_candidate(
        steps.evaluate_candidate(steps.train_candidate(s, db), s, db), s, db)
    version = registered.model_version
    bundle_version = registered.evaluation.candidate.bundle_version
    model_id, seeds = bundle_seeds(s, bundle_version)
    plant_sentinel_seed(db, model_id)
    client = MlflowClient(s.tracking_uri, s.tracking_uri)
    client.set_registered_model_alias(s.registered_model, "champion", version)  # then a crash
    result = steps.promote_if_better(registered, s, db)
    assert result.promoted is True and result.reasons == [], result
    assert champion_of(s) == version
    # @challenger (the latest candidate) is not taken away by the promotion
    assert registry.number(client.get_model_version_by_alias(
        s.registered_model, "challenger")) == version
    assert current_version(s.models_dir) == bundle_version
    assert serving_seeds(db, model_id) == {k: v for k, v in seeds.items() if v != (0, 0)}
    assert not registry.events(db, s.registered_model, ("gate-refused",), version)
    event = registry.events(db, s.registered_model, ("promote",), version)[-1]
    assert event.actor == steps.GATE_ACTOR and event.details["from"] == "1"
    assert registry.champion_history(db, s.registered_model)[-1].version == version
    again = steps.promote_if_better(registered, s, db)
    assert again.promoted and again.already_decided
    assert len(registry.events(db, s.registered_model, ("promote",), version)) == 1
