"""Retraining as four plain steps: train → evaluate → register → gated promotion.

Each step returns a typed result (``training.results``) that carries the one before it; the
Airflow DAG ``weekly_retrain`` runs the steps as four tasks and passes each result on as a
JSON dict (``to_dict`` / ``from_dict``); ``cca train`` and the main job call ``retrain``. Each
step takes no Airflow context and opens what it needs from settings; ``settings``/``db`` can be
passed in (tests, or one process running all four). Nothing a step does can change what
serves except ``promote_if_better`` on a passed gate: a validation failure, an MLflow outage
or a refused promotion leaves the champion and ``CURRENT`` as they were, and says why.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from cca.bundle import ModelBundle, load_bundle
from cca.departments import load_department_map
from cca.embeddings import get_deep_embedder, get_embedder
from cca.errors import StateError
from cca.model_registry import CHALLENGER
from cca.settings import Settings
from cca.store import Database, exclusive, use_database
from cca.store.models_repo import NewModelEvent, label_departments
from cca.store.tickets_repo import labelled_tickets
from training import registry, tracking
from training.gate import GatePolicy, GateResult, gate_decision, guarantee_summary
from training.holdout import holdout_f1
from training.labelled_set import embeddings_for
from training.registry import Move
from training.results import (
    Candidate,
    ChampionScores,
    Evaluation,
    Promotion,
    Registration,
    Scores,
)
from training.train_classifier import TrainOptions, Validator, train_from_store

GATE_ACTOR = "promotion-gate"


def _departments(settings: Settings, db: Database) -> tuple[dict[str, str], list[str]]:
    """Label -> department, and the labels the training data may use (the map's, if any)."""
    with db.begin() as conn:
        stored = label_departments(conn)
    mapping = load_department_map(settings.department_map).mapping
    return {**stored, **mapping}, sorted(mapping or stored)


def _validator(settings: Settings, serving: str, known: list[str]) -> Validator:
    """The training-set suite (Great Expectations), with what keeps serving if it fails.

    ``known`` is the label set the data must stay within: the department map's labels when
    there is a map (a typo'd label fails), otherwise whatever the store holds.
    """
    # deferred: the suites load great_expectations, a heavy import only training needs
    from pipelines.validate import ValidationFailed, validate_training_set

    def check(fit: pd.DataFrame, holdout: pd.DataFrame) -> None:
        try:
            validate_training_set(fit, holdout, known, settings)
        except ValidationFailed as exc:
            raise StateError(f"training set refused: {exc}; {serving}") from exc

    return check


def train_candidate(settings: Settings | None = None, db: Database | None = None,
                    progress: Callable[[str], None] | None = None) -> Candidate:
    """Validated window → fit → bundle (not served) → one MLflow run with everything logged."""
    # deferred: run_log loads mlflow (the pyfunc model), a heavy import
    from training.run_log import log_training_run

    with use_database(settings, db) as (s, database):
        serving = registry.serving_note(s, database)
        tracking.check_reachable(s, serving)  # before the fit: an outage should fail fast
        since = datetime.now(UTC) - timedelta(days=s.train_window_days)
        departments, known = _departments(s, database)
        embedder, deep_embedder = get_embedder(s), get_deep_embedder(s)
        options = TrainOptions(progress=progress, since=since, make_current=False,
                               validate=_validator(s, serving, known))
        bundle, report = train_from_store(s, database, embedder, departments, deep_embedder,
                                          options=options)
        window = f"last {s.train_window_days} days (since {since:%Y-%m-%d})"
        with tracking.mlflow_session(s, serving):
            logged = log_training_run(s, bundle, report, window, tracking.experiment_id(s))
    return Candidate(
        bundle_version=bundle.info.version, since=since.isoformat(),
        metrics={k: float(v) for k, v in bundle.info.metrics.items()},
        n_fit=report.n_train, n_holdout=report.n_holdout, labels=report.labels,
        kept_in_fit=report.kept_in_fit, fit_seconds=report.fit_seconds,
        holdout_ids=report.holdout_ids, holdout_labels=report.holdout_true, run=logged,
        guarantee=guarantee_summary(bundle.info.operating_points))


@dataclass(frozen=True)
class _HoldoutSet:
    """The candidate's holdout tickets still in the store, embedded as configured now."""

    texts: list[str]
    truth: list[str]
    vectors: np.ndarray
    deep: np.ndarray | None
    configured: tuple[str, str | None]  # the (fast, deep) embedding model ids
    gone: int  # holdout tickets no longer in the store (label withdrawn, duplicate)

    def score(self, bundle: ModelBundle) -> Scores:
        deep = self.deep
        proba, _ = bundle.classifier.predict_proba(
            self.texts, self.vectors, None if deep is None else (lambda rows: deep[rows]))
        pred = [bundle.classifier.labels[i] for i in proba.argmax(axis=1)]
        macro, per_class = holdout_f1(self.truth, pred)
        return {"macro_f1": macro, "per_class_f1": per_class}


def _holdout_set(s: Settings, database: Database, candidate: Candidate,
                 serving: str) -> _HoldoutSet:
    wanted = dict(zip(candidate.holdout_ids, candidate.holdout_labels, strict=True))
    with database.begin() as conn:
        found = {t.id: t for t, _ in labelled_tickets(conn) if t.id in wanted}
    tickets = [found[i] for i in wanted if i in found]
    if not tickets:
        raise StateError(f"no holdout tickets to evaluate on: {serving}")
    texts = [t.text for t in tickets]
    embedder, deep_embedder = get_embedder(s), get_deep_embedder(s)
    args = ([t.id for t in tickets], texts, [t.content_hash() for t in tickets])
    vectors = embeddings_for(database, embedder, *args)
    deep = embeddings_for(database, deep_embedder, *args) if deep_embedder else None
    return _HoldoutSet(texts=texts, truth=[wanted[t.id] for t in tickets], vectors=vectors,
                       deep=deep,
                       configured=(embedder.model_id, getattr(deep_embedder, "model_id", None)),
                       gone=len(wanted) - len(tickets))


def evaluate_candidate(candidate: Candidate, settings: Settings | None = None,
                       db: Database | None = None) -> Evaluation:
    """Candidate and champion on the candidate's own holdout (ids and labels from training).

    Holdout tickets no longer in the store (label withdrawn, duplicate) are left out of both
    scores and counted in the notes.
    """
    with use_database(settings, db) as (s, database):
        serving = registry.serving_note(s, database)
        holdout = _holdout_set(s, database, candidate, serving)
        cand = load_bundle(s.models_dir, candidate.bundle_version)
        notes = [f"{holdout.gone} holdout ticket(s) gone since training"] if holdout.gone else []
        candidate_scores = holdout.score(cand)
        with tracking.mlflow_session(s, serving) as client:
            champion = _champion_scores(s, client, holdout)
    if champion is not None and champion.scores is None:
        notes.append(f"champion v{champion.version} uses embeddings "
                     f"{tuple(champion.embeddings)}, not the configured "
                     f"{tuple(champion.configured)}: not compared")
    return Evaluation(candidate=candidate, holdout_n=len(holdout.texts), notes=notes,
                      candidate_scores=candidate_scores, champion=champion)


def _champion_scores(s: Settings, client: Any, holdout: _HoldoutSet) -> ChampionScores | None:
    """The champion on the same holdout; not scored if it was trained with other embeddings."""
    mv = registry.champion(client, s.registered_model)
    if mv is None:
        return None
    champ = load_bundle(s.models_dir, registry.ensure_local_bundle(s, mv))
    trained = (champ.info.embedding_model_id, champ.info.deep_embedding_model_id)
    return ChampionScores(
        version=registry.number(mv), bundle_version=champ.info.version,
        scores=holdout.score(champ) if trained == holdout.configured else None,
        kept_in_fit=champ.info.kept_in_fit, embeddings=list(trained),
        configured=list(holdout.configured),
        guarantee=guarantee_summary(champ.info.operating_points))


def register_candidate(evaluation: Evaluation, settings: Settings | None = None,
                       db: Database | None = None) -> Registration:
    """A new version of the registered model, tagged and aliased ``@challenger``; idempotent."""
    run_id = evaluation.candidate.run.run_id
    with use_database(settings, db) as (s, database):
        name = s.registered_model
        with tracking.mlflow_session(s, registry.serving_note(s, database)) as client:
            found = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
            if found:
                version = registry.number(found[0])
            else:
                version = registry.register_version(s, database, client, evaluation,
                                                    GATE_ACTOR)
            client.set_registered_model_alias(name, CHALLENGER, version)
    return Registration(evaluation=evaluation, model_version=str(version))


def promote_if_better(registered: Registration, settings: Settings | None = None,
                      db: Database | None = None) -> Promotion:
    """The gate decides once per version; a refusal is a result, not an exception."""
    version = registered.model_version
    with use_database(settings, db) as (s, database), exclusive(database, "registry"):
        name = s.registered_model
        past = registry.events(database, name, ("promote", "gate-refused"), version)
        past = [e for e in past if e.actor == GATE_ACTOR]
        if past:
            return Promotion(registered, promoted=past[-1].action == "promote",
                             reasons=past[-1].details.get("reasons", []),
                             notes=registered.evaluation.notes, already_decided=True)
        serving = registry.serving_note(s, database)
        with tracking.mlflow_session(s, serving) as client:
            now = registry.champion(client, name)
            current = registry.number(now) if now else None
            if current == version:
                return _already_champion(registered, s, database, client, now)
            policy = GatePolicy.from_settings(s)
            gate = gate_decision(registered, current, policy)
            _record_decision(s, database, client, registered, gate, policy)
    return Promotion(registered, promoted=gate.passed, reasons=gate.reasons, notes=gate.notes,
                     serving=None if gate.passed else serving)


def _record_decision(s: Settings, database: Database, client: Any, registered: Registration,
                     gate: GateResult, policy: GatePolicy) -> None:
    """Passed: the version becomes champion. Refused: tagged and recorded, nothing moves.

    The decision is written to MLflow (run and version) first and the move follows, so the
    event row stays the last act: a failure in between leaves no event, and the retry
    decides (and writes) again."""
    # deferred: gate_log loads mlflow and matplotlib, heavy imports (mlflow is loaded by now)
    from training.gate_log import log_gate_decision

    name, version = s.registered_model, registered.model_version
    log_gate_decision(s, client, registered, gate, policy)
    details = {"reasons": gate.reasons, "notes": gate.notes, "source": "gate",
               "candidate_macro_f1": registered.evaluation.candidate_scores["macro_f1"]}
    if gate.passed:
        mv = registry.model_version(client, name, version)
        registry.switch_champion(s, database, client, mv, Move(
            "promote", GATE_ACTOR, "passed the promotion gate", details))
    else:
        client.set_model_version_tag(name, version, "gate_refused",
                                     "; ".join(gate.reasons)[:500])
        registry.record_event(database, NewModelEvent(
            "gate-refused", name, version, GATE_ACTOR, "; ".join(gate.reasons), details))


def _already_champion(registered: Registration, s: Settings, database: Database,
                      client: Any, mv: Any) -> Promotion:
    """This version is ``@champion`` already: an interrupted promotion (alias moved, event
    not written) is completed, never refused; a recorded one (e.g. by hand) is reported."""
    version = registered.model_version
    history = registry.champion_history(database, s.registered_model)
    if history and history[-1].version == version:
        last = history[-1]
        return Promotion(registered, promoted=True, reasons=[], already_decided=True,
                         notes=[f"v{version} is already champion ({last.action} by "
                                f"{last.actor})"])
    champion = registered.evaluation.champion
    details = {"reasons": [], "source": "gate", "resumed": True,
               "from": champion.version if champion else None,
               "candidate_macro_f1": registered.evaluation.candidate_scores["macro_f1"]}
    registry.switch_champion(s, database, client, mv, Move(
        "promote", GATE_ACTOR, "completing an interrupted promotion: already @champion",
        details))
    return Promotion(registered, promoted=True, reasons=[], serving=None,
                     notes=[f"v{version} was @champion without a recorded promotion: completed"])


def retrain(settings: Settings | None = None, db: Database | None = None,
            progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """All four steps in one process (``cca train``, the main job).

    Returns the promotion's flat dict (what ``cca run`` reports) and the time it all took.
    """
    t0 = time.perf_counter()
    with use_database(settings, db) as (s, database):
        candidate = train_candidate(s, database, progress)
        evaluation = evaluate_candidate(candidate, s, database)
        registered = register_candidate(evaluation, s, database)
        result = promote_if_better(registered, s, database)
    return {**result.to_dict(), "retrain_seconds": round(time.perf_counter() - t0, 1)}
