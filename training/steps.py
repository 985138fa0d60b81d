"""Retraining as four plain steps: train → evaluate → register → gated promotion.

The Airflow DAG ``weekly_retrain`` runs them as four tasks (each result is a small JSON dict
passed as the next task's XCom); ``cca train`` and the main job call ``retrain``. Each step
takes no Airflow context and opens what it needs from settings; ``settings``/``db`` can be
passed in (tests, or one process running all four). Nothing a step does can change what
serves except ``promote_if_better`` on a passed gate: a validation failure, an MLflow outage
or a refused promotion leaves the champion and ``CURRENT`` as they were, and says why.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import sqlalchemy as sa

from cca.bundle import ModelBundle, load_bundle
from cca.errors import StateError
from cca.settings import Settings
from cca.store import Database, exclusive, use_database
from cca.store.tickets_repo import labelled_tickets
from training import registry, tracking
from training.gate import GatePolicy, Scores, gate_decision
from training.holdout import holdout_f1
from training.train_classifier import Validator, embeddings_for, train_from_store

GATE_ACTOR = "promotion-gate"


def _departments(settings: Settings, db: Database) -> tuple[dict[str, str], list[str]]:
    """Label -> department, and the labels the training data may use (the map's, if any)."""
    from cca.departments import load_department_map

    with db.begin() as conn:
        stored = dict(conn.execute(sa.text(
            "SELECT DISTINCT label, department FROM ticket_labels WHERE validated")).all())
    mapping = load_department_map(settings.department_map).mapping
    return {**stored, **mapping}, sorted(mapping or stored)


def _validator(settings: Settings, serving: str, known: list[str]) -> Validator:
    """The training-set suite (Great Expectations), with what keeps serving if it fails.

    ``known`` is the label set the data must stay within: the department map's labels when
    there is a map (a typo'd label fails), otherwise whatever the store holds.
    """
    from pipelines.validate import ValidationFailed, validate_training_set

    def check(fit: Any, holdout: Any) -> None:
        try:
            validate_training_set(fit, holdout, known, settings)
        except ValidationFailed as exc:
            raise StateError(f"training set refused: {exc}; {serving}") from exc

    return check


def train_candidate(settings: Settings | None = None, db: Database | None = None,
                    progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Validated window → fit → bundle (not served) → one MLflow run with everything logged."""
    from cca.embeddings import get_deep_embedder, get_embedder
    from training.run_log import log_training_run

    with use_database(settings, db) as (s, database):
        serving = registry.serving_note(s, database)
        tracking.check_reachable(s, serving)  # before the fit: an outage should fail fast
        since = datetime.now(UTC) - timedelta(days=s.train_window_days)
        departments, known = _departments(s, database)
        bundle, report = train_from_store(
            s, database, get_embedder(s), departments,
            deep_embedder=get_deep_embedder(s), progress=progress, since=since,
            make_current=False, validate=_validator(s, serving, known))
        window = f"last {s.train_window_days} days (since {since:%Y-%m-%d})"
        with tracking.mlflow_session(s, serving):
            logged = log_training_run(s, bundle, report, s.models_dir / bundle.info.version,
                                      window, tracking.experiment_id(s))
    return {
        "bundle_version": bundle.info.version, "since": since.isoformat(),
        "metrics": {k: float(v) for k, v in bundle.info.metrics.items()},
        "n_fit": report.n_train,
        "n_holdout": report.n_holdout, "labels": report.labels,
        "kept_in_fit": report.kept_in_fit, "fit_seconds": report.fit_seconds,
        # the candidate's own holdout, so evaluation scores exactly these tickets and labels
        "holdout_ids": report.holdout_ids, "holdout_labels": report.holdout_true,
        **logged,
    }


def _score(bundle: ModelBundle, texts: list[str], vectors: np.ndarray,
           deep: np.ndarray | None, y_true: list[str]) -> Scores:
    proba, _ = bundle.classifier.predict_proba(
        texts, vectors, None if deep is None else (lambda rows: deep[rows]))
    pred = [bundle.classifier.labels[i] for i in proba.argmax(axis=1)]
    macro, per_class = holdout_f1(y_true, pred)
    return {"macro_f1": macro, "per_class_f1": per_class}


def evaluate_candidate(candidate: dict[str, Any], settings: Settings | None = None,
                       db: Database | None = None) -> dict[str, Any]:
    """Candidate and champion on the candidate's own holdout (ids and labels from training).

    Holdout tickets no longer in the store (label withdrawn, duplicate) are left out of both
    scores and counted in the notes.
    """
    from cca.embeddings import get_deep_embedder, get_embedder

    with use_database(settings, db) as (s, database):
        serving = registry.serving_note(s, database)
        wanted = dict(zip(candidate["holdout_ids"], candidate["holdout_labels"], strict=True))
        with database.begin() as conn:
            found = {t.id: t for t, _ in labelled_tickets(conn) if t.id in wanted}
        tickets = [found[i] for i in wanted if i in found]
        if not tickets:
            raise StateError(f"no holdout tickets to evaluate on: {serving}")
        texts, y_true = [t.text for t in tickets], [wanted[t.id] for t in tickets]
        embedder, deep_embedder = get_embedder(s), get_deep_embedder(s)
        args = ([t.id for t in tickets], texts, [t.content_hash() for t in tickets])
        vectors = embeddings_for(database, embedder, *args)
        deep = embeddings_for(database, deep_embedder, *args) if deep_embedder else None
        configured = (embedder.model_id, getattr(deep_embedder, "model_id", None))
        cand = load_bundle(s.models_dir, candidate["bundle_version"])
        gone = len(wanted) - len(tickets)
        result = {**candidate, "holdout_n": len(tickets),
                  "notes": [f"{gone} holdout ticket(s) gone since training"] if gone else [],
                  "candidate_scores": _score(cand, texts, vectors, deep, y_true),
                  "champion": None}
        with tracking.mlflow_session(s, serving) as client:
            mv = registry.champion(client, s.registered_model)
            if mv is not None:
                number = registry.number(mv)
                champ = load_bundle(s.models_dir, registry.ensure_local_bundle(s, mv))
                trained = (champ.info.embedding_model_id, champ.info.deep_embedding_model_id)
                scores = (_score(champ, texts, vectors, deep, y_true)
                          if trained == configured else None)
                if scores is None:
                    result["notes"].append(f"champion v{number} uses embeddings {trained}, "
                                           f"not the configured {configured}: not compared")
                result["champion"] = {"version": number, "bundle_version": champ.info.version,
                                      "scores": scores, "kept_in_fit": champ.info.kept_in_fit,
                                      "embeddings": list(trained),
                                      "configured": list(configured)}
    return result


def register_candidate(evaluation: dict[str, Any], settings: Settings | None = None,
                       db: Database | None = None) -> dict[str, Any]:
    """A new version of the registered model, tagged and aliased ``@challenger``; idempotent."""
    import mlflow

    with use_database(settings, db) as (s, database):
        name = s.registered_model
        with tracking.mlflow_session(s, registry.serving_note(s, database)) as client:
            found = client.search_model_versions(
                f"name = '{name}' and run_id = '{evaluation['run_id']}'")
            if found:
                version = registry.number(found[0])
            else:
                champ = evaluation.get("champion") or {}
                tags = {"bundle_version": evaluation["bundle_version"],
                        "run_id": evaluation["run_id"], "data_since": evaluation["since"],
                        "holdout_macro_f1": evaluation["candidate_scores"]["macro_f1"],
                        "holdout_accuracy": evaluation["metrics"]["holdout_accuracy"],
                        "holdout_n": evaluation["holdout_n"],
                        "compared_with": champ.get("version") or "-"}
                mv = mlflow.register_model(evaluation["model_uri"], name,
                                           tags={k: str(v) for k, v in tags.items()})
                version = registry.number(mv)
                client.update_model_version(
                    name, version, description=f"cca bundle {evaluation['bundle_version']}: "
                    f"holdout macro-F1 {evaluation['candidate_scores']['macro_f1']:.4f}")
                registry.record_event(database, "register", name, version, GATE_ACTOR,
                                      "retrained", {"bundle_version": evaluation["bundle_version"],
                                                    "run_id": evaluation["run_id"]})
            client.set_registered_model_alias(name, registry.CHALLENGER, version)
    return {**evaluation, "model_version": str(version)}


def promote_if_better(registered: dict[str, Any], settings: Settings | None = None,
                      db: Database | None = None) -> dict[str, Any]:
    """The gate decides once per version; a refusal is a result, not an exception."""
    version = registered["model_version"]
    with use_database(settings, db) as (s, database), exclusive(database, "registry"):
        name = s.registered_model
        past = registry.events(database, name, ("promote", "gate-refused"), version)
        past = [e for e in past if e["actor"] == GATE_ACTOR]
        if past:
            details = past[-1]["details"]
            return {**registered, "promoted": past[-1]["action"] == "promote",
                    "reasons": details.get("reasons", []), "already_decided": True}
        serving = registry.serving_note(s, database)
        with tracking.mlflow_session(s, serving) as client:
            now = registry.champion(client, name)
            current = registry.number(now) if now else None
            if current == version:
                return _already_champion(registered, s, database, client, now)
            gate = gate_decision(registered, current, GatePolicy.from_settings(s))
            details = {"reasons": gate.reasons, "notes": gate.notes, "source": "gate",
                       "candidate_macro_f1": registered["candidate_scores"]["macro_f1"]}
            if gate.passed:
                mv = registry.model_version(client, name, version)
                registry.switch_champion(s, database, client, mv, "promote", GATE_ACTOR,
                                         "passed the promotion gate", details)
            else:
                client.set_model_version_tag(name, version, "gate_refused",
                                             "; ".join(gate.reasons)[:500])
                registry.record_event(database, "gate-refused", name, version, GATE_ACTOR,
                                      "; ".join(gate.reasons), details)
    return {**registered, "promoted": gate.passed, "reasons": gate.reasons,
            "notes": gate.notes, "serving": None if gate.passed else serving}


def _already_champion(registered: dict[str, Any], s: Settings, database: Database,
                      client: Any, mv: Any) -> dict[str, Any]:
    """This version is ``@champion`` already: an interrupted promotion (alias moved, event
    not written) is completed, never refused; a recorded one (e.g. by hand) is reported."""
    version = registered["model_version"]
    history = registry.champion_history(database, s.registered_model)
    if history and history[-1]["version"] == version:
        by = history[-1]["actor"]
        return {**registered, "promoted": True, "reasons": [], "already_decided": True,
                "notes": [f"v{version} is already champion ({history[-1]['action']} by {by})"]}
    evaluated = (registered.get("champion") or {}).get("version")
    details = {"reasons": [], "source": "gate", "resumed": True, "from": evaluated,
               "candidate_macro_f1": registered["candidate_scores"]["macro_f1"]}
    registry.switch_champion(s, database, client, mv, "promote", GATE_ACTOR,
                             "completing an interrupted promotion: already @champion", details)
    return {**registered, "promoted": True, "reasons": [], "serving": None,
            "notes": [f"v{version} was @champion without a recorded promotion: completed"]}


def retrain(settings: Settings | None = None, db: Database | None = None,
            progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """All four steps in one process (``cca train``, the main job)."""
    t0 = time.perf_counter()
    with use_database(settings, db) as (s, database):
        candidate = train_candidate(s, database, progress)
        evaluation = evaluate_candidate(candidate, s, database)
        registered = register_candidate(evaluation, s, database)
        result = promote_if_better(registered, s, database)
    return {**result, "retrain_seconds": round(time.perf_counter() - t0, 1)}
